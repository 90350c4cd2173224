"""Predict one image with a trained checkpoint and write the overlay:

    python -m cvops.predict --checkpoint runs/segmentation/checkpoint_last.pt \\
        --image a.png --out a_pred.png

The model name, its keywords and the number of classes come from the checkpoint (written by
``python -m cvops.train.segmentation``); ``--model`` only has to be given to override the name.
A checkpoint of ``python -m cvops.train.detection`` gets its boxes (and masks) drawn instead,
those scoring at least ``--score-thresh``. With ``--labels "cat,dog"`` a CLIP model
(``--model clip_vit_b_32``, optional ``--checkpoint``) prints zero-shot probabilities instead.
``--model blip_captioning_base --checkpoint DIR`` prints a BLIP caption (a Hugging Face
``BlipForConditionalGeneration`` folder, or a file with ``--tokenizer``).
"""

import argparse
import sys
from typing import List, Optional

import torch
import torch.nn.functional as F

from .data import read_image
from .metrics import logits_to_labels
from .train.engine import load_checkpoint, resolve_device
from .train.segmentation import build_model, logits_of, overlay


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cvops.predict", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's)")
    p.add_argument("--checkpoint", default=None, help="required except for CLIP (--labels)")
    p.add_argument("--image", required=True)
    p.add_argument("--out", default=None, help="overlay PNG to write (required but for CLIP)")
    p.add_argument(
        "--labels",
        default=None,
        help='CLIP zero-shot: comma-separated class names ("cat,dog"); prints probabilities',
    )
    p.add_argument("--tokenizer", default=None, help="BLIP: tokenizer folder or BERT vocab.txt")
    p.add_argument("--num-beams", type=int, default=3, help="BLIP: beam size (1: greedy)")
    p.add_argument("--max-length", type=int, default=20, help="BLIP: caption tokens at most")
    p.add_argument("--min-length", type=int, default=5, help="BLIP: caption tokens at least")
    p.add_argument("--mask-out", default=None, help="also write the label mask (palette PNG)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize the input to this square size first (default: keep its size)",
    )
    p.add_argument(
        "--pad-multiple",
        type=int,
        default=32,
        help="pad the input to a multiple of this (edge values), crop the output",
    )
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument(
        "--score-thresh", type=float, default=0.5, help="detectors: lowest score of a box drawn"
    )
    p.add_argument("--device", default="cpu")
    return p


@torch.no_grad()
def predict(model, image: torch.Tensor, binary: bool = False, pad_multiple: int = 32):
    """Labels ``[H, W]`` for ``image`` ``[3, H, W]`` (padded to a multiple, then cropped)."""
    h, w = image.shape[1:]
    m = max(1, pad_multiple)
    ph, pw = (-h) % m, (-w) % m
    x = F.pad(image[None], (0, pw, 0, ph), mode="replicate") if ph or pw else image[None]
    logits = logits_of(model(x)).float()[..., :h, :w]
    return logits_to_labels(logits, binary)[0]


def main(argv: Optional[List[str]] = None) -> None:
    from PIL import Image

    args = parser().parse_args(argv)
    if args.labels is not None:  # CLIP zero-shot classification
        from .models.vision_language.clip_predict import main as clip_main

        return clip_main(args)
    if args.model is not None and args.model.startswith("blip_captioning"):  # BLIP caption
        from .models.vision_language.blip_predict import main as blip_main

        return blip_main(args)
    if args.checkpoint is None or args.out is None:
        parser().error("--checkpoint and --out are required (except with --labels)")
    device = resolve_device(args.device)
    ck = load_checkpoint(args.checkpoint)
    meta = ck.get("meta") or {}
    if meta.get("task") == "detection":  # boxes (and masks) drawn by the detection task
        from .train.detection import predict_file

        predict_file(
            args.checkpoint, args.image, args.out, args.score_thresh, args.alpha, args.device
        )
        return
    if meta.get("task") != "segmentation":
        raise SystemExit(
            "%s is not a checkpoint of cvops.train.segmentation or cvops.train.detection"
            % args.checkpoint
        )
    model = build_model(args.model or meta["model"], meta["out_channels"], **meta["model_kwargs"])
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    image = read_image(args.image)
    if args.image_size:
        image = F.interpolate(
            image[None],
            size=(args.image_size,) * 2,
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].clamp(0, 1)
    labels = predict(model, image.to(device), meta["binary"], args.pad_multiple).cpu()
    picture = overlay(image, labels, meta["num_classes"], alpha=args.alpha)
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(args.out)
    if args.mask_out:
        from .data import voc_palette

        mask = Image.fromarray(labels.to(torch.uint8).numpy(), mode="P")
        mask.putpalette(voc_palette())
        mask.save(args.mask_out)
    print(
        "wrote %s (%s)"
        % (
            args.out,
            ", ".join(
                "class %d: %d px" % (c, int((labels == c).sum())) for c in labels.unique().tolist()
            ),
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
