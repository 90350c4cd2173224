"""Train and evaluate a semantic segmentation model: ``python -m cvops.train.segmentation``.

    python -m cvops.train.segmentation --model unet --data synthetic --epochs 10 --out runs/seg
    torchrun --nproc_per_node=2 -m cvops.train.segmentation --model unet ...   # DDP

Writes into ``--out``: ``checkpoint_last.pt`` (+ ``checkpoint_epochNNN.pt`` with
``--save-every``), ``metrics.json``, ``curves.png`` and ``predictions.png`` (input, ground truth
and prediction overlaid, one row per validation sample). See docs/segmentation.md.
"""

import argparse
import sys
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..data import (
    IGNORE_INDEX,
    SegmentationTransform,
    SyntheticSegmentation,
    class_colors,
    folder_dataset,
    seeded,
    voc_dataset,
)
from ..metrics import ConfusionMatrix, logits_to_labels
from .engine import (
    Engine,
    Task,
    add_engine_args,
    config_from_args,
    model_builder,
    parse_key_values,
)
from .seg_losses import LOSSES, build_loss

# Keyword arguments some models need beyond num_classes (the command's defaults for them).
MODEL_DEFAULTS = {
    "unet": {"in_channels": 3, "padding": True, "batch_norm": True, "depth": 4, "base_width": 32},
}


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """A registered model or, for ``"module:function"``, the builder ``function`` of an
    importable module (:func:`engine.model_builder`), called with the same keywords."""
    return model_builder(name)(num_classes=num_classes, **kwargs)


def model_kwargs(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The builder's keywords: the model's defaults, ``--depth``/``--base-width`` when given,
    then each ``--model-arg KEY=VALUE`` (VALUE a Python literal)."""
    kwargs = dict(MODEL_DEFAULTS.get(name, {}))
    for key in ("depth", "base_width"):
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    kwargs.update(parse_key_values(getattr(args, "model_arg", None)))
    return kwargs


def logits_of(outputs) -> Tensor:
    """The logits of a model output: ``outputs["out"]`` for torchvision-style dicts."""
    return outputs["out"] if isinstance(outputs, dict) else outputs


def overlay(
    image: Tensor,
    labels: Tensor,
    num_classes: int,
    alpha: float = 0.5,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> Tensor:
    """uint8 ``[3, H, W]``: ``image`` (float in [0, 1]) with each non-background class of
    ``labels`` ``[H, W]`` drawn in its VOC colour (``draw_segmentation_masks``); ignored pixels
    in the VOC 'void' colour."""
    from torchvision.utils import draw_segmentation_masks

    img = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    labels = labels.cpu()
    classes = list(range(1, num_classes))
    colors = class_colors(max(num_classes, 2))
    masks = [labels == c for c in classes]
    cols = [colors[c] for c in classes]
    if ignore_index is not None:
        masks.append(labels == ignore_index)
        cols.append((224, 224, 192))
    if not masks:
        return img
    return draw_segmentation_masks(img, torch.stack(masks), alpha=alpha, colors=cols)


class SegmentationTask(Task):
    primary_metric = "miou"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.binary = bool(args.binary)
        # Classes in the masks (background included) and channels out of the model.
        self.num_classes = 2 if self.binary else args.num_classes
        self.out_channels = 1 if self.binary else self.num_classes
        self.kwargs = model_kwargs(args.model, args)
        self.loss_fn = build_loss(args.loss, binary=self.binary, ignore_index=IGNORE_INDEX)

    def build_model(self) -> nn.Module:
        return build_model(self.args.model, self.out_channels, **self.kwargs)

    def datasets(self):
        a = self.args
        size = a.image_size
        if a.data == "synthetic":
            common = dict(
                image_size=size,
                num_classes=a.num_classes,
                ignore_border=a.ignore_border,
                binary=self.binary,
            )
            train = SyntheticSegmentation(a.train_size, seed=a.data_seed, **common)
            val = SyntheticSegmentation(a.val_size, seed=a.data_seed + 1, **common)
            val_tf = None
        else:
            if not a.data_root:
                raise ValueError("--data %s needs --data-root" % a.data)
            make = folder_dataset if a.data == "folder" else voc_dataset
            train = make(a.data_root, a.train_split, a.num_classes, binary=self.binary)
            val = make(a.data_root, a.val_split, a.num_classes, binary=self.binary)
            val_tf = SegmentationTransform((size, size), train=False)
        train_tf = (
            SegmentationTransform(size, train=True, scale=(a.min_scale, 1.0))
            if a.augment
            else SegmentationTransform((size, size))
        )
        if a.data == "synthetic" and not a.augment:
            train_tf = None
        return seeded(train, train_tf, a.seed), seeded(val, val_tf, a.seed)

    def loss(self, outputs, targets) -> Tensor:
        return self.loss_fn(logits_of(outputs), targets)

    def evaluator(self):
        return _Evaluator(ConfusionMatrix(self.num_classes, IGNORE_INDEX, binary=self.binary))

    @torch.no_grad()
    def save_predictions(self, model, dataset, path, device) -> None:
        from PIL import Image
        from torchvision.utils import make_grid

        n = min(self.args.vis_samples, len(dataset))
        if n == 0:
            return
        model.eval()
        tiles = []
        for i in range(n):
            image, target = dataset[i]
            logits = logits_of(model(image[None].to(device))).float()
            pred = logits_to_labels(logits, self.binary)[0]
            tiles += [
                (image.clamp(0, 1) * 255).round().to(torch.uint8),
                overlay(image, target, self.num_classes),
                overlay(image, pred, self.num_classes),
            ]
        grid = torch.stack(tiles)
        scale = -(-128 // max(grid.shape[-2:]))  # small images: enlarge (nearest) to ~128 px
        if scale > 1:
            grid = grid.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        grid = make_grid(grid, nrow=3, padding=2, pad_value=255)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)

    def meta(self) -> Dict[str, Any]:
        a = self.args
        return {
            "task": "segmentation",
            "model": a.model,
            "model_kwargs": self.kwargs,
            "num_classes": self.num_classes,
            "out_channels": self.out_channels,
            "binary": self.binary,
            "image_size": a.image_size,
            "ignore_index": IGNORE_INDEX,
        }


class _Evaluator:
    def __init__(self, matrix: ConfusionMatrix):
        self.matrix = matrix

    def update(self, outputs, targets) -> None:
        self.matrix.update(logits_of(outputs).float(), targets)

    def compute(self, device=None):
        return self.matrix.compute(device)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cvops.train.segmentation",
        description="Train and evaluate a semantic segmentation model (DDP under torchrun).",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="unet",
        help="registered model name, or module:function (default: %(default)s)",
    )
    g.add_argument("--depth", type=int, default=None, help="U-Net depth")
    g.add_argument("--base-width", type=int, default=None, help="U-Net width of the first level")
    g.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="extra builder keyword (VALUE a Python literal), repeatable",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("synthetic", "folder", "voc"), default="synthetic")
    g.add_argument("--data-root", default=None, help="dataset folder for --data folder|voc")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes incl. background (default: 4 synthetic, 21 voc)",
    )
    g.add_argument(
        "--binary",
        action="store_true",
        help="foreground/background: 1 output channel, BCE-family losses",
    )
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--train-size", type=int, default=512, help="synthetic training samples")
    g.add_argument("--val-size", type=int, default=64, help="synthetic validation samples")
    g.add_argument("--data-seed", type=int, default=0, help="synthetic data seed (val: +1)")
    g.add_argument(
        "--ignore-border",
        type=int,
        default=0,
        help="synthetic: mark pixels this close to object outlines as ignore (255)",
    )
    g.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no random resized crop / flip on the training set",
    )
    g.add_argument("--min-scale", type=float, default=0.5, help="random resized crop scale")
    g = p.add_argument_group("loss and output")
    g.add_argument("--loss", choices=LOSSES, default="ce")
    g.add_argument("--vis-samples", type=int, default=4, help="rows in predictions.png")
    add_engine_args(p, out="runs/segmentation", lr=0.05)
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.num_classes is None:
        if args.data == "folder" and not args.binary:
            raise SystemExit("--data folder needs --num-classes")
        args.num_classes = 21 if args.data == "voc" else 4
    return args


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    return Engine(SegmentationTask(args), config_from_args(args)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
