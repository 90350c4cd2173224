"""Train and evaluate a detector (Faster R-CNN, Mask R-CNN, RetinaNet): ``python -m
cvops.train.detection``, and predict one image with a trained checkpoint.

    python -m cvops.train.detection --model maskrcnn_resnet50_fpn --backbone resnet18 \\
        --data synthetic --epochs 10 --out runs/det
    torchrun --nproc_per_node=2 -m cvops.train.detection ...            # DDP (gloo on CPU)
    python -m cvops.train.detection --data coco --data-root coco/train2017 \\
        --ann-file coco/annotations/instances_train2017.json \\
        --val-data-root coco/val2017 --val-ann-file coco/annotations/instances_val2017.json
    python -m cvops.train.detection predict --checkpoint runs/det/checkpoint_last.pt \\
        --image a.png --out a_pred.png

The model computes its own losses in training mode; the training loss is their sum. After each
epoch the validation set is scored with pycocotools' ``COCOeval`` (:class:`CocoEvaluator`,
gathered over the processes): ``bbox_AP``, ``bbox_AP50``, ... (and ``segm_*`` for Mask R-CNN)
in ``metrics.json``. Writes into ``--out``: ``checkpoint_last.pt`` (+
``checkpoint_epochNNN.pt`` with ``--save-every``), ``metrics.json``, ``curves.png`` and
``predictions.png`` (ground truth | prediction, one row per validation image). See
docs/detection_data.md, "Training a detector".
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..data.coco import (
    CocoDetection,
    collate_detection,
    detection_transforms,
    make_synthetic_coco,
)
from ..data.transforms import SeededTransform
from ..metrics.coco import COCO_STAT_NAMES, CocoEvaluator
from ..models.detection.proposals import proposals_of
from .engine import (
    Engine,
    Task,
    add_engine_args,
    all_reduce_sum,
    config_from_args,
    load_checkpoint,
    model_builder,
    parse_key_values,
    resolve_device,
)
from .paper_detector_hooks import (
    PAPER_FAMILIES,
    build_paper_detector,
    with_proposals,
)
from .yolo_hooks import (
    YOLO_FAMILIES,
    add_yolo_args,
    build_yolo_detector,
    yolo_build_options,
    yolo_train_transform,
)

FAMILIES = ("fasterrcnn", "maskrcnn", "retinanet") + PAPER_FAMILIES + YOLO_FAMILIES
STATE_PREFIX = "detector."  # the engine's checkpoints hold DetectorAdapter's state_dict
DRAWN = ("boxes", "labels", "scores", "masks")  # the target keys draw_detections reads


# ------------------------------------------------------------------------------------ model


def family_of(name: str) -> str:
    """``"fasterrcnn"``, ``"maskrcnn"`` or ``"retinanet"`` for a model name."""
    base = name.rsplit(":", 1)[-1]
    for family in FAMILIES:
        if base.startswith(family):
            return family
    raise ValueError(
        "%r is not a detector builder: its name must start with one of %s"
        % (name, ", ".join(FAMILIES))
    )


def anchor_generator(family: str, sizes: Sequence[int]):
    """One anchor size per FPN level (RetinaNet: 3 octave scales per level), ratios 0.5/1/2."""
    from ..models.detection import AnchorGenerator

    if family == "retinanet":
        per_level = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
    else:
        per_level = tuple((int(s),) for s in sizes)
    return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * len(per_level))


def build_detector(
    model: str,
    num_classes: int,
    backbone: Optional[str] = None,
    norm: str = "bn",
    trainable_layers: Optional[int] = None,
    anchor_sizes: Optional[Sequence[int]] = None,
    **kwargs,
) -> nn.Module:
    """A detector with ``num_classes`` classes (background included).

    ``model``: a registered builder (``fasterrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn``,
    ``retinanet_resnet50_fpn``) or ``"module:function"``. ``backbone`` (e.g. ``"resnet18"``)
    swaps the ResNet of the registered builders' FPN backbone, for light configurations.
    ``norm``: ``"bn"`` (``nn.BatchNorm2d``, training from scratch) or ``"frozen"``
    (``FrozenBatchNorm2d``). ``anchor_sizes``: one size per FPN level (default the model's,
    32..512). Other keywords go to the model class (``min_size``, ``max_size``, ...)."""
    from ..models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from ..models.segmentation.fpn import FrozenBatchNorm2d, LastLevelP6P7, resnet_fpn_backbone

    family = family_of(model)
    if family in YOLO_FAMILIES:  # letterbox size and thresholds only (kwargs)
        return build_yolo_detector(model, num_classes, **kwargs)
    if family in PAPER_FAMILIES:  # VGG16, no norm layers, no anchors
        return build_paper_detector(
            model, num_classes, backbone, trainable_layers, anchor_sizes, **kwargs
        )
    norm_layer = {"bn": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d}[norm]
    if anchor_sizes:
        key = "anchor_generator" if family == "retinanet" else "rpn_anchor_generator"
        kwargs[key] = anchor_generator(family, anchor_sizes)
    if ":" in model or backbone is None or backbone in model:
        return model_builder(model)(
            num_classes=num_classes,
            norm_layer=norm_layer,
            trainable_backbone_layers=trainable_layers,
            **kwargs,
        )
    if trainable_layers is None:
        trainable_layers = 3 if norm == "frozen" else 5
    retina = family == "retinanet"
    body = resnet_fpn_backbone(
        backbone_name=backbone,
        norm_layer=norm_layer,
        trainable_layers=trainable_layers,
        returned_layers=[2, 3, 4] if retina else None,
        extra_blocks=LastLevelP6P7(256, 256) if retina else None,
    )
    cls = {"fasterrcnn": FasterRCNN, "maskrcnn": MaskRCNN, "retinanet": RetinaNet}[family]
    return cls(body, num_classes, **kwargs)


class DetectorAdapter(nn.Module):
    """The engine calls ``model(inputs)``; a detector wants ``model(images, targets)`` in
    training. ``inputs`` is ``(images, targets)`` (:func:`collate`): training returns the
    detector's loss dict, evaluation its detections (always in float32, autocast off).
    State-dict keys get ``detector.``."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, inputs):
        images, targets = inputs
        if self.training:
            return self.detector(images, targets)
        # detections in float32 under --amp too: bfloat16 boxes are off by up to 4 px at 800 px
        with torch.autocast(images[0].device.type, enabled=False):
            if getattr(self.detector, "takes_proposals", False):  # R-CNN, Fast R-CNN
                return self.detector(images, proposals=proposals_of(targets))
            return self.detector(images)


def collate(batch) -> Tuple[Tuple[List[Tensor], List[dict]], List[dict]]:
    """``((images, targets), targets)``: the inputs carry the targets the detector needs in
    training; the engine hands the second ``targets`` to the loss and the evaluator."""
    images, targets = collate_detection(batch)
    return (images, targets), targets


def total_loss(outputs) -> Optional[Tensor]:
    """The sum of a detector's loss dict (training). Detections (evaluation) carry no loss:
    None, so the engine records no ``val_loss``."""
    if isinstance(outputs, dict):
        return sum(outputs.values())
    return None


# ---------------------------------------------------------------------------------- drawing


def _to_uint8(image: Tensor) -> Tensor:
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def draw_detections(
    image: Tensor,
    detections: Dict[str, Tensor],
    classes: Optional[Sequence[str]] = None,
    score_thresh: float = 0.5,
    alpha: float = 0.5,
    scale: int = 1,
    mask_thresh: float = 0.5,
) -> Tensor:
    """uint8 ``[3, H*scale, W*scale]``: ``image`` (float ``[3, H, W]`` in [0, 1]) with the
    boxes (``draw_bounding_boxes``, "class score" labels) and masks
    (``draw_segmentation_masks``) of ``detections`` (a model output or a target dict) whose
    score is at least ``score_thresh``; one colour per class. ``scale`` enlarges the picture
    first (nearest), so labels stay readable on small images."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from ..data import class_colors

    img = _to_uint8(image)
    boxes = detections["boxes"].detach().float().cpu().reshape(-1, 4)
    labels = detections["labels"].detach().cpu().reshape(-1)
    scores = detections.get("scores")
    keep = torch.ones(len(labels), dtype=torch.bool)
    if scores is not None:
        scores = scores.detach().float().cpu()
        keep = scores >= score_thresh
    masks = detections.get("masks")
    if scale > 1:
        img = img.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        boxes = boxes * scale
    boxes, labels = boxes[keep], labels[keep]
    if not len(labels):
        return img
    palette = class_colors(int(labels.max()) + 1)  # the VOC colours; 0 (black) is unused
    colors = [palette[int(k)] for k in labels]
    if masks is not None:
        masks = masks.detach().cpu()[keep]
        if masks.dim() == 4:
            masks = masks[:, 0]
        masks = masks > mask_thresh if masks.is_floating_point() else masks.bool()
        if scale > 1:
            masks = masks.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        img = draw_segmentation_masks(img, masks, alpha=alpha, colors=colors)
    names = [
        classes[int(k)] if classes is not None and int(k) < len(classes) else str(int(k))
        for k in labels
    ]
    if scores is not None:
        names = ["%s %.2f" % (n, s) for n, s in zip(names, scores[keep].tolist())]
    return draw_bounding_boxes(img, boxes, labels=names, colors=colors, width=max(1, scale))


@torch.no_grad()
def detect(model: nn.Module, image: Tensor, device=None, proposals=None) -> Dict[str, Tensor]:
    """The detections of a detector (or a :class:`DetectorAdapter`) for one image
    (float ``[3, H, W]`` in [0, 1]), on the CPU; ``proposals`` (``Tensor[N, 4]``) for the
    paper detectors."""
    if isinstance(model, DetectorAdapter):
        model = model.detector
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    if proposals is not None:
        out = model([image.to(device)], proposals=[proposals.to(device)])[0]
    else:
        out = model([image.to(device)])[0]
    return {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}


def predict_image(
    model: nn.Module,
    image: Tensor,
    classes: Optional[Sequence[str]] = None,
    score_thresh: float = 0.5,
    alpha: float = 0.5,
    scale: int = 1,
) -> Tensor:
    """Run ``model`` on ``image`` (float ``[3, H, W]`` in [0, 1]) and return the overlay:
    uint8 ``[3, H, W]`` with the detections above ``score_thresh`` drawn
    (:func:`draw_detections`)."""
    dets = detect(model, image)
    return draw_detections(image, dets, classes, score_thresh, alpha, scale)


def load_detector(path: str, device="cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """``(detector in eval mode, meta)`` from a checkpoint of this command."""
    ck = load_checkpoint(path)
    meta = ck.get("meta") or {}
    if meta.get("task") != "detection":
        raise ValueError("%s is not a checkpoint of cvops.train.detection" % path)
    model = build_detector(meta["model"], meta["num_classes"], **meta["build"])
    state = {
        k[len(STATE_PREFIX) :] if k.startswith(STATE_PREFIX) else k: v
        for k, v in ck["model"].items()
    }
    model.load_state_dict(state)
    return model.to(device).eval(), meta


# ------------------------------------------------------------------------------------- task


class _CocoMetrics:
    """The engine's evaluator interface on :class:`CocoEvaluator`: ``compute`` returns the
    12 COCO numbers per IoU type as flat keys (``bbox_AP``, ``segm_AP50``, ...) and
    ``num_images``, the images scored over all processes."""

    def __init__(self, dataset, iou_types):
        self.evaluator = CocoEvaluator(dataset, iou_types)

    def update(self, outputs, targets) -> None:
        self.evaluator.update(outputs, targets)

    def compute(self, device=None) -> Dict[str, float]:
        (n,) = all_reduce_sum([float(len(self.evaluator.results))], device or "cpu")
        stats = self.evaluator.evaluate()
        flat = {"num_images": int(n)}
        for iou_type, numbers in stats.items():
            for name in COCO_STAT_NAMES:
                flat["%s_%s" % (iou_type, name)] = numbers[name]
        return flat


class DetectionTask(Task):
    primary_metric = "bbox_AP"
    collate_fn = staticmethod(collate)

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.family = family_of(args.model)
        self.masks = self.family == "maskrcnn"
        self.classes: Optional[List[str]] = None
        self._data = None
        self.model: Optional[nn.Module] = None

    # -- data
    def _synthetic(self, split: str, n: int, seed: int) -> Tuple[str, str]:
        a = self.args
        root = a.data_root or os.path.join(a.out, "synthetic")
        size = a.image_size
        folder = os.path.join(root, "%s_n%d_%dpx_c%d_s%d" % (split, n, size, a.num_classes, seed))
        images, ann = os.path.join(folder, "images"), os.path.join(folder, "instances.json")
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0 and not os.path.isfile(ann):
            # written once per setting (the output is a function of the arguments)
            make_synthetic_coco(folder, n, size, a.num_classes, seed, max_objects=a.max_objects)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return images, ann

    def datasets(self):
        """``(train, val)``, built once (the engine asks for the model, which needs the
        classes, before the data)."""
        if self._data is None:
            self._data = self._build_datasets()
        return self._data

    def _build_datasets(self):
        a = self.args
        if a.data == "synthetic":
            train_files = self._synthetic("train", a.train_size, a.data_seed)
            val_files = self._synthetic("val", a.val_size, a.data_seed + 1)
        else:
            if not (a.data_root and a.ann_file):
                raise ValueError("--data coco needs --data-root and --ann-file")
            train_files = (a.data_root, a.ann_file)
            val_files = (a.val_data_root or a.data_root, a.val_ann_file or a.ann_file)
        train = CocoDetection(
            *train_files,
            remove_images_without_annotations=True,
            drop_crowd=True,
            return_masks=self.masks,
        )
        val = CocoDetection(*val_files, return_masks=self.masks)
        if train.classes != val.classes:
            raise ValueError("training and validation sets have different categories")
        self.classes = list(train.classes)
        if self.family in PAPER_FAMILIES:  # their targets carry the proposals
            if not a.proposals:
                raise ValueError(
                    "%s needs --proposals (selective_search, jitter or FILE.json)" % a.model
                )
            return with_proposals(train, val, a.proposals, a.hflip if a.augment else 0.0, a.seed)
        if a.proposals:
            raise ValueError("--proposals is for fast_rcnn_vgg16 and rcnn, not %s" % a.model)
        if a.augment:
            if self.family in YOLO_FAMILIES:  # + HSV and scale jitter
                transform = yolo_train_transform(a)
            else:
                transform = detection_transforms(train=True, hflip=a.hflip)
            train = SeededTransform(train, transform, a.seed)
        return train, val

    # -- model
    def build_options(self) -> Dict[str, Any]:
        """The :func:`build_detector` keywords of this run (saved in the checkpoints)."""
        a = self.args
        if self.family in YOLO_FAMILIES:
            return yolo_build_options(a)
        kwargs = {}
        # synthetic data: the detector keeps the images' size unless told otherwise
        min_size = a.min_size or (a.image_size if a.data == "synthetic" else None)
        max_size = a.max_size or min_size
        for key, value in (("min_size", min_size), ("max_size", max_size)):
            if value:
                kwargs[key] = value
        kwargs.update(parse_key_values(a.model_arg))
        return {
            "backbone": a.backbone,
            "norm": a.norm,
            "trainable_layers": a.trainable_layers,
            "anchor_sizes": list(a.anchor_sizes) if a.anchor_sizes else None,
            **kwargs,
        }

    @property
    def num_classes(self) -> int:
        """Classes including the background."""
        return len(self.datasets()[0].classes)

    def build_model(self) -> nn.Module:
        self.model = DetectorAdapter(
            build_detector(self.args.model, self.num_classes, **self.build_options())
        )
        return self.model

    # -- loss, evaluation, pictures
    def loss(self, outputs, targets) -> Tensor:
        return total_loss(outputs)

    def evaluator(self):
        # (The engine has given every rank rank 0's BatchNorm statistics: broadcast_buffers.)
        return _CocoMetrics(self.datasets()[1], ("bbox", "segm") if self.masks else ("bbox",))

    @torch.no_grad()
    def save_predictions(self, model, dataset, path, device) -> None:
        from PIL import Image
        from torchvision.utils import make_grid

        n = min(self.args.vis_samples, len(dataset))
        if n == 0:
            return
        tiles = []
        scale = max(1, -(-256 // max(dataset[0][0].shape[-2:])))
        for i in range(n):
            image, target = dataset[i]
            dets = detect(model, image, device, target.get("proposals"))
            crowd = target.get("iscrowd", torch.zeros(0)).bool()
            if crowd.any():  # crowd regions are not objects to find: not drawn
                target = {k: v[~crowd] for k, v in target.items() if k in DRAWN}
            tiles.append(draw_detections(image, target, self.classes, scale=scale))
            tiles.append(
                draw_detections(image, dets, self.classes, self.args.score_thresh, scale=scale)
            )
        h = max(t.shape[-2] for t in tiles)
        w = max(t.shape[-1] for t in tiles)
        padded = [
            torch.nn.functional.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]), value=255)
            for t in tiles
        ]
        grid = make_grid(torch.stack(padded), nrow=2, padding=2, pad_value=255)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)

    def meta(self) -> Dict[str, Any]:
        return {
            "task": "detection",
            "model": self.args.model,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "build": self.build_options(),
        }


# -------------------------------------------------------------------------------- commands


def _sizes(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cvops.train.detection",
        description="Train and evaluate a detector (DDP under torchrun); "
        "'python -m cvops.train.detection predict --help' for prediction.",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="maskrcnn_resnet50_fpn",
        help="fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn, retinanet_resnet50_fpn, "
        "fast_rcnn_vgg16, rcnn (with --proposals), yolov5n..x, yolov7, yolov7_tiny, "
        "yolov8n..x, or module:function (default: %(default)s)",
    )
    g.add_argument(
        "--backbone",
        default=None,
        help="ResNet of the FPN backbone: resnet18/34/50/101/152 (default: the model's)",
    )
    g.add_argument(
        "--norm",
        choices=("bn", "frozen"),
        default="bn",
        help="backbone normalisation: BatchNorm2d (from scratch) or FrozenBatchNorm2d",
    )
    g.add_argument("--trainable-layers", type=int, default=None, help="trainable ResNet stages 0-5")
    g.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="the detector's resize of the shorter side (default: --image-size for "
        "synthetic data, else the model's 800)",
    )
    g.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="longer side at most (default: the min size, or 1333)",
    )
    g.add_argument(
        "--anchor-sizes",
        type=_sizes,
        default=None,
        help="comma-separated anchor size per FPN level (default: 32,64,128,256,512)",
    )
    g.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="extra model keyword (VALUE a Python literal), e.g. box_batch_size_per_image=128",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("synthetic", "coco"), default="synthetic")
    g.add_argument(
        "--data-root",
        default=None,
        help="coco: training image folder; synthetic: where to write it (default: OUT/synthetic)",
    )
    g.add_argument("--ann-file", default=None, help="coco: training instances JSON")
    g.add_argument("--val-data-root", default=None, help="coco: validation images (default: train)")
    g.add_argument("--val-ann-file", default=None, help="coco: validation JSON (default: train)")
    g.add_argument("--num-classes", type=int, default=3, help="synthetic object categories")
    g.add_argument("--image-size", type=int, default=96, help="synthetic image size")
    g.add_argument("--train-size", type=int, default=256, help="synthetic training images")
    g.add_argument("--val-size", type=int, default=32, help="synthetic validation images")
    g.add_argument("--max-objects", type=int, default=4, help="synthetic objects per image")
    g.add_argument("--data-seed", type=int, default=0, help="synthetic data seed (val: +1)")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no flips")
    g.add_argument(
        "--proposals",
        default=None,
        help="fast_rcnn_vgg16/rcnn: selective_search (needs opencv-contrib-python-headless), "
        "FILE.json ({image_id: [[x1, y1, x2, y2], ...]}) or jitter (jittered ground truth + "
        "random boxes: an offline test aid, see docs/paper_detectors.md)",
    )
    add_yolo_args(p)
    g = p.add_argument_group("output")
    g.add_argument("--vis-samples", type=int, default=4, help="rows in predictions.png")
    g.add_argument("--score-thresh", type=float, default=0.5, help="drawn detections' score")
    # from scratch (no pretrained weights offline) the mask and box losses can blow up in the
    # first steps without gradient clipping
    add_engine_args(p, out="runs/detection", batch_size=4, lr=0.02, warmup_iters=50, clip_grad=1.0)
    return p


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cvops.train.detection predict",
        description="Detect objects in one image with a checkpoint of cvops.train.detection "
        "and write the overlay.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="overlay PNG to write")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity")
    p.add_argument("--device", default="cpu")
    return p


def predict_file(
    checkpoint: str,
    image: str,
    out: str,
    score_thresh: float = 0.5,
    alpha: float = 0.5,
    device: str = "cpu",
) -> Dict[str, Tensor]:
    """Detect objects in the image file ``image`` with ``checkpoint`` and write the overlay PNG
    ``out``; returns the detections (all of them, ``score_thresh`` only limits the drawing)."""
    from PIL import Image

    from ..data import read_image

    model, meta = load_detector(checkpoint, resolve_device(device))
    pixels = read_image(image)
    dets = detect(model, pixels)
    picture = draw_detections(pixels, dets, meta.get("classes"), score_thresh, alpha)
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(out)
    kept = int((dets["scores"] >= score_thresh).sum())
    print("wrote %s (%d detections with score >= %g)" % (out, kept, score_thresh))
    return dets


def predict_main(argv: Optional[List[str]] = None) -> Dict[str, Tensor]:
    """The ``predict`` command; returns the detections."""
    a = predict_parser().parse_args(argv)
    return predict_file(a.checkpoint, a.image, a.out, a.score_thresh, a.alpha, a.device)


def main(argv: Optional[List[str]] = None):
    """Train (returns the history), or ``predict ...`` (returns the detections)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predict":
        return predict_main(argv[1:])
    args = parser().parse_args(argv)
    return Engine(DetectionTask(args), config_from_args(args)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
