"""What ``python -m cvops.train.detection`` needs for the YOLO models (its hooks call these):
building a YOLO detector from the command's options, and the YOLO augmentation.

    python -m cvops.train.detection --model yolov8n --data synthetic --image-size 96 \\
        --optimizer adamw --lr 0.002 --ema 0.9999 --epochs 30 --out runs/yolo

The YOLO models take the command's labels ``1..K`` (0 the background) and ``num_classes``
with the background, like the R-CNN models; the network has ``K`` class outputs.
"""

import argparse
from typing import Any, Dict

from torch import nn

__all__ = [
    "YOLO_FAMILIES",
    "add_yolo_args",
    "build_yolo_detector",
    "yolo_build_options",
    "yolo_train_transform",
]

YOLO_FAMILIES = ("yolo",)  # model names starting with this are YOLO builders
PAD_FILL = 114 / 255  # the letterbox grey, also used for pixels affine transforms expose


def build_yolo_detector(model: str, num_classes: int, **kwargs) -> nn.Module:
    """The registered YOLO builder ``model`` (e.g. ``"yolov8n"``) for ``num_classes`` classes
    counting the background; ``kwargs`` go to the model (``image_size``, ``score_thresh``,
    ``nms_thresh``, ``detections_per_img``, ``loss_options``)."""
    from .engine import model_builder

    if num_classes < 2:
        raise ValueError("num_classes counts the background: >= 2 needed, got %d" % num_classes)
    return model_builder(model)(num_classes=num_classes - 1, label_offset=1, **kwargs)


def _multiple_of_32(size: int) -> int:
    return max(32, -(-int(size) // 32) * 32)


def yolo_build_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The model keywords of a run: the letterbox size (``--min-size``, else the synthetic
    ``--image-size``, else 640; rounded up to a multiple of 32) and ``--model-arg`` items."""
    from .engine import parse_key_values

    size = args.min_size or (args.image_size if args.data == "synthetic" else 640)
    return {"image_size": _multiple_of_32(size), **parse_key_values(args.model_arg)}


def yolo_train_transform(args: argparse.Namespace):
    """Box-aware augmentation (torchvision.transforms.v2, boxes moved with the pixels):
    colour jitter in HSV (``--hsv H,S,V``: hue, saturation and value ranges), a random
    scale and shift (``--scale``: factors ``1 +- scale``, shifts up to 10%), and the
    horizontal flip (``--hflip``). Boxes leaving the image are clipped, tiny ones dropped."""
    from torchvision.transforms import v2

    from ..data.coco import DetectionTransform

    hue, sat, val = args.hsv
    ops = []
    if hue or sat or val:
        ops.append(v2.ColorJitter(brightness=val, saturation=sat, hue=hue))
    if args.scale > 0:
        ops.append(
            v2.RandomAffine(
                degrees=0.0,
                translate=(0.1, 0.1),
                scale=(max(0.05, 1 - args.scale), 1 + args.scale),
                fill=PAD_FILL,
            )
        )
        ops.append(v2.ClampBoundingBoxes())
    if args.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(args.hflip))
    return DetectionTransform(ops, min_size=2.0)


def _floats3(text: str):
    values = [float(v) for v in text.split(",")]
    if len(values) != 3:
        raise argparse.ArgumentTypeError("expected H,S,V (three numbers), got %r" % text)
    return values


def add_yolo_args(parser: argparse.ArgumentParser) -> None:
    """The YOLO augmentation flags of the detection command."""
    g = parser.add_argument_group("YOLO augmentation (yolov5*, yolov8*)")
    g.add_argument(
        "--hsv",
        type=_floats3,
        default=[0.015, 0.7, 0.4],
        help="hue, saturation, value jitter (default: %(default)s)",
    )
    g.add_argument(
        "--scale", type=float, default=0.5, help="random scale range 1 +- SCALE (default: 0.5)"
    )
