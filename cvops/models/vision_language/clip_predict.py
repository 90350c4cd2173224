"""``python -m cvops.predict --model clip_vit_b_32 --image a.png --labels "cat,dog"``: the
zero-shot class probabilities of one image, printed best first."""

import warnings
from typing import List, Optional, Sequence, Tuple

import torch

from .clip_checkpoint import load_clip
from .clip_tokenizer import get_tokenizer
from .zero_shot import DEFAULT_TEMPLATES, classify, preprocess


def parse_labels(labels: str) -> List[str]:
    names = [n.strip() for n in labels.split(",") if n.strip()]
    if len(names) < 2:
        raise ValueError("--labels needs at least two comma-separated names, got %r" % labels)
    return names


@torch.no_grad()
def predict_image(
    image_path: str,
    labels: Sequence[str],
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    device: str = "cpu",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> List[Tuple[str, float]]:
    """``[(label, probability)]`` best first."""
    from ...data import read_image

    model = load_clip(model_name, checkpoint).to(device).eval()
    image = preprocess(read_image(image_path), model.image_size)[None].to(device)
    probs = classify(model, get_tokenizer(), image, labels, templates)[0].cpu()
    order = probs.argsort(descending=True).tolist()
    return [(labels[i], float(probs[i])) for i in order]


def main(args) -> None:
    """The CLIP route of ``cvops.predict`` (``args``: its parsed arguments)."""
    if args.checkpoint is None:
        warnings.warn("no --checkpoint: the CLIP model has random weights", stacklevel=2)
    results = predict_image(
        args.image, parse_labels(args.labels), args.model, args.checkpoint, args.device
    )
    for label, p in results:
        print("%-30s %.4f" % (label, p))
