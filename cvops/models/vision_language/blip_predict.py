"""``python -m cvops.predict --model blip_captioning_base --checkpoint DIR --image a.png``:
print a caption of one image.

``--checkpoint`` is a Hugging Face ``BlipForConditionalGeneration`` folder (``config.json``,
``model.safetensors`` or ``pytorch_model.bin``, and the tokenizer files, e.g. a download of
``Salesforce/blip-image-captioning-base``), a weights file with Hugging Face's names (base
sizes), or a file written by :func:`save_blip_captioning` (weights + sizes). The tokenizer is
read from ``--tokenizer`` (a folder, or a BERT ``vocab.txt``), else from the checkpoint folder;
it needs transformers.
"""

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .blip import BlipCaptioning, blip_captioning_base
from .blip_config import BlipConfig
from .clip import CLIP_MEAN, CLIP_STD  # BLIP's processor uses OpenAI CLIP's mean and std

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def preprocess(image: Tensor, size: int) -> Tensor:
    """BLIP's preprocessing of an RGB ``image [3, H, W]`` in [0, 1]: resize to ``size x size``
    (bicubic, no crop), normalise with OpenAI CLIP's mean/std."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("image must be RGB [3, H, W], got shape %s" % (tuple(image.shape),))
    x = F.interpolate(
        image[None].float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )[0].clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def save_blip_captioning(model: BlipCaptioning, path: str) -> None:
    """Weights (Hugging Face names) and sizes in one file that :func:`load_blip_captioning`
    reads back."""
    torch.save({"model": model.state_dict(), "blip_config": dataclasses.asdict(model.config)}, path)


def _read_weights(path: str) -> Dict[str, Any]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_blip_captioning(path: str) -> Tuple[BlipCaptioning, Optional[str]]:
    """``(model, folder holding tokenizer files or None)`` from a checkpoint (see the module
    docstring), loaded with ``strict=True``."""
    config: Optional[BlipConfig] = None
    folder = None
    if os.path.isdir(path):
        folder = path
        found = [
            os.path.join(path, f) for f in _WEIGHT_FILES if os.path.isfile(os.path.join(path, f))
        ]
        if not found:
            raise FileNotFoundError(
                "no %s in checkpoint folder %r" % (" or ".join(_WEIGHT_FILES), path)
            )
        if os.path.isfile(os.path.join(path, "config.json")):
            import transformers

            config = BlipConfig.from_hf(transformers.BlipConfig.from_pretrained(path))
        state = _read_weights(found[0])
    elif os.path.isfile(path):
        state = _read_weights(path)
        if "blip_config" in state:
            config = BlipConfig(**state["blip_config"])
            state = state["model"]
    else:
        raise FileNotFoundError("checkpoint %r does not exist" % path)
    model = blip_captioning_base(config)
    model.load_state_dict(state, strict=True)
    return model, folder


def load_tokenizer(path: str) -> Any:
    """A Hugging Face tokenizer from a folder, or a ``BertTokenizer`` from a ``vocab.txt``."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is a test dependency
        raise ImportError("BLIP captioning needs transformers for its tokenizer") from exc
    if os.path.isdir(path):
        return transformers.AutoTokenizer.from_pretrained(path)
    if os.path.isfile(path):
        return transformers.BertTokenizer(path)
    raise FileNotFoundError("tokenizer %r does not exist" % path)


@torch.no_grad()
def caption_file(
    image_path: str,
    checkpoint: str,
    tokenizer: Optional[str] = None,
    device: str = "cpu",
    **generate_kwargs,
) -> str:
    from ...data import read_image

    model, folder = load_blip_captioning(checkpoint)
    if tokenizer is None and folder is None:
        raise ValueError("--tokenizer is needed when --checkpoint is a file")
    tok = load_tokenizer(tokenizer or folder)
    model = model.to(device).eval()
    image = preprocess(read_image(image_path), model.config.image_size)[None].to(device)
    return model.caption(image, tok, **generate_kwargs)[0]


def main(args) -> None:
    """The BLIP route of ``cvops.predict`` (``args``: its parsed arguments)."""
    if args.checkpoint is None:
        raise SystemExit("BLIP captioning needs --checkpoint (weights and sizes)")
    if args.model not in (None, "blip_captioning_base"):
        raise SystemExit("the BLIP route captions with blip_captioning_base, got %r" % args.model)
    text = caption_file(
        args.image,
        args.checkpoint,
        args.tokenizer,
        args.device,
        num_beams=args.num_beams,
        max_length=args.max_length,
        min_length=args.min_length,
    )
    print(text)
