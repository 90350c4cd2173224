"""Train and evaluate a Panoptic FPN: ``python -m cvops.train.panoptic``.

    python -m cvops.train.panoptic --data synthetic --backbone resnet18 --epochs 10 \\
        --out runs/panoptic
    torchrun --nproc_per_node=2 -m cvops.train.panoptic ...               # DDP (gloo on CPU)
    python -m cvops.train.panoptic --data coco --data-root coco/train2017 \\
        --ann-file coco/annotations/panoptic_train2017.json \\
        --panoptic-root coco/annotations/panoptic_train2017 --val-data-root coco/val2017 \\
        --val-ann-file coco/annotations/panoptic_val2017.json \\
        --val-panoptic-root coco/annotations/panoptic_val2017

The detection command's pieces, reused: its flags (model size, anchors, data sizes, engine), the
adapter that feeds the targets to the model in training, the summed loss dict, the synthetic
data folders. The data are COCO panoptic (:class:`cvops.data.CocoPanoptic`; synthetic by
default, :func:`make_synthetic_coco_panoptic`), the loss Mask R-CNN's plus the weighted
semantic cross-entropy, and after each epoch the validation set is scored with PQ/SQ/RQ
(:class:`cvops.metrics.PanopticEvaluator`, torchmetrics' ``PanopticQuality``) on the merged
panoptic maps. Writes ``checkpoint_last.pt``, ``metrics.json``, ``curves.png`` and
``predictions.png`` (image | ground truth | prediction, one row per validation image) into
``--out``. See docs/panoptic.md.
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..data.coco_panoptic import CocoPanoptic, PanopticFlip, make_synthetic_coco_panoptic
from ..data.transforms import SeededTransform
from ..metrics.panoptic import PanopticEvaluator, relabel_segments
from .detection import DetectionTask, DetectorAdapter, anchor_generator
from .detection import parser as detection_parser
from .engine import Engine, config_from_args, model_builder

MODEL = "panoptic_fpn_resnet50"


def build_panoptic(
    model: str,
    num_things: int,
    num_stuff: int,
    backbone: Optional[str] = None,
    norm: str = "bn",
    trainable_layers: Optional[int] = None,
    anchor_sizes: Optional[Sequence[int]] = None,
    **kwargs,
) -> nn.Module:
    """A Panoptic FPN with ``num_things`` thing and ``num_stuff`` stuff classes. ``model``:
    ``panoptic_fpn_resnet50`` or ``"module:function"``; ``backbone`` (e.g. ``"resnet18"``)
    swaps the ResNet of the FPN backbone; ``norm``, ``trainable_layers``, ``anchor_sizes`` as
    :func:`cvops.train.detection.build_detector`. Other keywords go to :class:`PanopticFPN`."""
    from ..models.detection import PanopticFPN
    from ..models.segmentation.fpn import FrozenBatchNorm2d, resnet_fpn_backbone

    norm_layer = {"bn": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d}[norm]
    if anchor_sizes:
        kwargs["rpn_anchor_generator"] = anchor_generator("maskrcnn", anchor_sizes)
    if ":" in model or backbone is None or backbone == "resnet50":
        return model_builder(model)(
            num_things=num_things,
            num_stuff=num_stuff,
            norm_layer=norm_layer,
            trainable_backbone_layers=trainable_layers,
            **kwargs,
        )
    if model != MODEL:
        raise ValueError("--model must be %s or module:function, got %r" % (MODEL, model))
    if trainable_layers is None:
        trainable_layers = 3 if norm == "frozen" else 5
    body = resnet_fpn_backbone(
        backbone_name=backbone, norm_layer=norm_layer, trainable_layers=trainable_layers
    )
    return PanopticFPN(body, num_things, num_stuff, **kwargs)


# ---------------------------------------------------------------------------------- drawing


def draw_panoptic(
    image: Tensor,
    ids: Tensor,
    segments_info: Sequence[dict],
    color_of: Dict[int, Sequence[int]],
    alpha: float = 0.6,
    scale: int = 1,
) -> Tensor:
    """uint8 ``[3, H*scale, W*scale]``: ``image`` (float ``[3, H, W]`` in [0, 1]) with each
    segment of the id map ``ids`` drawn (``draw_segmentation_masks``) in the colour
    ``color_of[category_id]``; unlabeled pixels stay as they are."""
    from torchvision.utils import draw_segmentation_masks

    img = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    ids = ids.cpu()
    if scale > 1:
        img = img.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        ids = ids.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    if not segments_info:
        return img
    masks = torch.stack([ids == int(s["id"]) for s in segments_info])
    colors = [tuple(color_of[int(s["category_id"])]) for s in segments_info]
    return draw_segmentation_masks(img, masks, alpha=alpha, colors=colors)


# ------------------------------------------------------------------------------------- task


class _PanopticMetrics:
    """The engine's evaluator interface on :class:`PanopticEvaluator`: the model's segments
    (unified labels) mapped to the dataset's category ids first."""

    def __init__(self, dataset):
        self.coco_id = dict(dataset.coco_id)
        self.evaluator = PanopticEvaluator(dataset.thing_ids, dataset.stuff_ids)

    def update(self, outputs, targets) -> None:
        preds = [
            (out["panoptic_seg"], relabel_segments(out["segments_info"], self.coco_id))
            for out in outputs
        ]
        self.evaluator.update(preds, targets)

    def compute(self, device=None) -> Dict[str, Any]:
        return self.evaluator.compute(device)


class PanopticTask(DetectionTask):
    """:class:`DetectionTask` on COCO panoptic data with PQ as the metric."""

    primary_metric = "PQ"

    def __init__(self, args: argparse.Namespace):  # not DetectionTask's: no detector family
        self.args = args
        self.family, self.masks = "panoptic", True
        self.classes: Optional[List[str]] = None
        self._data = None
        self.model: Optional[nn.Module] = None

    # -- data
    def _synthetic(self, split: str, n: int, seed: int):
        a = self.args
        root = a.data_root or os.path.join(a.out, "synthetic")
        name = "%s_n%d_%dpx_t%d_s%d_seed%d" % (
            split,
            n,
            a.image_size,
            a.num_classes,
            a.num_stuff,
            seed,
        )
        folder = os.path.join(root, name)
        files = tuple(os.path.join(folder, p) for p in ("images", "panoptic.json", "panoptic"))
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0 and not os.path.isfile(files[1]):
            make_synthetic_coco_panoptic(
                folder,
                n,
                a.image_size,
                a.num_classes,
                a.num_stuff,
                seed,
                max_objects=a.max_objects,
            )
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return files

    def _build_datasets(self):
        a = self.args
        if a.data == "synthetic":
            train_files = self._synthetic("train", a.train_size, a.data_seed)
            val_files = self._synthetic("val", a.val_size, a.data_seed + 1)
        else:
            if not (a.data_root and a.ann_file and a.panoptic_root):
                raise ValueError("--data coco needs --data-root, --ann-file and --panoptic-root")
            train_files = (a.data_root, a.ann_file, a.panoptic_root)
            val_files = (
                a.val_data_root or a.data_root,
                a.val_ann_file or a.ann_file,
                a.val_panoptic_root or a.panoptic_root,
            )
        train = CocoPanoptic(*train_files, drop_crowd=True)
        val = CocoPanoptic(*val_files)
        if train.categories.keys() != val.categories.keys():
            raise ValueError("training and validation sets have different categories")
        self.classes = list(train.classes)
        self.stuff_classes = list(train.stuff_classes)
        if a.augment:
            train = SeededTransform(train, PanopticFlip(a.hflip), a.seed)
        return train, val

    # -- model
    def build_options(self) -> Dict[str, Any]:
        a = self.args
        options = super().build_options()
        size = options.get("min_size") or 800
        defaults = {
            "semantic_loss_weight": a.semantic_loss_weight,
            "panoptic_score_thresh": a.panoptic_score_thresh,
            "panoptic_overlap_thresh": a.overlap_thresh,
            # detectron2's 4096 px at 800 px, scaled with the image area
            "panoptic_stuff_area": a.stuff_area
            if a.stuff_area is not None
            else max(1, round(4096 * (size / 800) ** 2)),
        }
        return {**defaults, **options}

    def build_model(self) -> nn.Module:
        train = self.datasets()[0]
        self.model = DetectorAdapter(
            build_panoptic(
                self.args.model, train.num_things, train.num_stuff, **self.build_options()
            )
        )
        return self.model

    def evaluator(self):
        return _PanopticMetrics(self.datasets()[1])

    def _colors(self, dataset) -> Dict[int, Sequence[int]]:
        """A colour per category id: VOC colours by unified label (things, then stuff)."""
        from ..data import class_colors

        palette = class_colors(len(dataset.contiguous_id) + 1)
        return {c: palette[i] for c, i in dataset.contiguous_id.items()}

    @torch.no_grad()
    def save_predictions(self, model, dataset, path, device) -> None:
        from PIL import Image
        from torchvision.utils import make_grid

        n = min(self.args.vis_samples, len(dataset))
        if n == 0:
            return
        detector = model.detector if isinstance(model, DetectorAdapter) else model
        detector.eval()
        colors = self._colors(dataset)
        coco_id = dataset.coco_id
        tiles = []
        scale = max(1, -(-192 // max(dataset[0][0].shape[-2:])))
        for i in range(n):
            image, target = dataset[i]
            out = detector([image.to(device)])[0]
            segments = relabel_segments(out["segments_info"], coco_id)
            tiles += [
                draw_panoptic(image, torch.zeros_like(target["panoptic"]), [], colors, scale=scale),
                draw_panoptic(
                    image, target["panoptic"], target["segments_info"], colors, scale=scale
                ),
                draw_panoptic(image, out["panoptic_seg"], segments, colors, scale=scale),
            ]
            # an image of another size: padded (white) or cropped to the first one's size
            h, w = tiles[0].shape[-2:]
            tiles[-3:] = [
                torch.nn.functional.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]), value=255)
                for t in tiles[-3:]
            ]
        grid = make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=255)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)

    def meta(self) -> Dict[str, Any]:
        train = self.datasets()[0]
        return {
            "task": "panoptic",
            "model": self.args.model,
            "num_things": train.num_things,
            "num_stuff": train.num_stuff,
            "classes": list(self.classes),
            "stuff_classes": list(self.stuff_classes),
            "category_ids": {int(k): int(v) for k, v in train.coco_id.items()},
            "build": self.build_options(),
        }


# -------------------------------------------------------------------------------- command


def parser() -> argparse.ArgumentParser:
    """The detection command's flags (``--num-classes`` = thing classes), panoptic defaults
    and the panoptic options."""
    p = detection_parser()
    p.prog = "python -m cvops.train.panoptic"
    p.description = "Train and evaluate a Panoptic FPN (DDP under torchrun)."
    p.set_defaults(model=MODEL, out="runs/panoptic")
    g = p.add_argument_group("panoptic")
    g.add_argument("--num-stuff", type=int, default=2, help="synthetic stuff classes (1-6)")
    g.add_argument("--panoptic-root", default=None, help="coco: training panoptic PNG folder")
    g.add_argument("--val-panoptic-root", default=None, help="coco: validation PNG folder")
    g.add_argument(
        "--semantic-loss-weight",
        type=float,
        default=0.5,
        help="lambda of the semantic cross-entropy in the joint loss (default: %(default)s)",
    )
    g.add_argument(
        "--panoptic-score-thresh",
        type=float,
        default=0.5,
        help="merge: instances scoring below this are dropped (default: %(default)s)",
    )
    g.add_argument(
        "--overlap-thresh",
        type=float,
        default=0.5,
        help="merge: drop an instance when more than this fraction of it is already taken",
    )
    g.add_argument(
        "--stuff-area",
        type=int,
        default=None,
        help="merge: smallest stuff region in pixels (default: 4096 at 800 px, scaled by the "
        "image area)",
    )
    return p


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    args = parser().parse_args(argv)
    return Engine(PanopticTask(args), config_from_args(args)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
