"""COCO-format instance detection/segmentation data: a dataset on pycocotools, box- and
mask-aware augmentation through torchvision.transforms.v2, a collate, and a writer of a small
synthetic dataset in the real COCO format (so every detection command runs offline through the
same loader as real COCO).

Each item of :class:`CocoDetection` is ``(image, target)`` as torchvision's detection models take
them: ``image`` float32 ``[3, H, W]`` in ``[0, 1]``; ``target`` a dict with

- ``boxes``: float32 ``[N, 4]``, ``(x1, y1, x2, y2)`` in pixels (COCO's ``[x, y, w, h]``
  converted, clipped to the image; boxes with no width or height are dropped);
- ``labels``: int64 ``[N]``, contiguous ids ``1..K`` (0 is the background), see
  :attr:`CocoDetection.contiguous_id` / :attr:`CocoDetection.coco_id`;
- ``masks``: uint8 ``[N, H, W]`` (pycocotools ``annToMask``; polygons and RLE alike);
- ``iscrowd``: int64 ``[N]``; ``area``: float32 ``[N]`` (the annotation's ``area``);
- ``image_id``: ``int``, the COCO image id.
"""

import contextlib
import io
import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .segmentation import read_image

__all__ = [
    "SYNTHETIC_SHAPES",
    "CocoDetection",
    "DetectionTransform",
    "category_maps",
    "collate_detection",
    "detection_transforms",
    "load_coco",
    "make_synthetic_coco",
]


def quiet_unless(verbose: bool):
    """A context that swallows stdout (pycocotools' prints) unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_coco(ann_file: str, verbose: bool = False):
    """A ``pycocotools.coco.COCO`` for ``ann_file``, without its prints unless ``verbose``."""
    from pycocotools.coco import COCO

    with quiet_unless(verbose):
        return COCO(ann_file)


def category_maps(coco) -> Tuple[Dict[int, int], Dict[int, int]]:
    """``(contiguous_id, coco_id)`` for a ``COCO`` object: the COCO category ids in increasing
    order get the contiguous labels ``1..K`` (0 is the background); ``contiguous_id`` maps a COCO
    id to its label, ``coco_id`` a label back to the COCO id."""
    ids = sorted(int(c) for c in coco.getCatIds())
    contiguous = {c: i + 1 for i, c in enumerate(ids)}
    return contiguous, {i: c for c, i in contiguous.items()}


class CocoDetection(Dataset):
    """Images and instance annotations of a COCO-format dataset (real COCO or
    :func:`make_synthetic_coco`'s), as ``(image, target)`` pairs; see the module docstring.

    Args:
        root: folder of the images (``file_name`` in the JSON is relative to it).
        ann_file: the ``instances_*.json``.
        transforms: called as ``transforms(image, target)`` and returns ``(image, target)``,
            e.g. :func:`detection_transforms`.
        remove_images_without_annotations: keep only images with at least one usable
            annotation (a box with positive width and height; not crowd if ``drop_crowd``):
            for training.
        drop_crowd: leave out ``iscrowd=1`` annotations (torchvision's references train without
            them; COCOeval reads crowd regions from the JSON either way).
        return_masks: ``False`` skips decoding the masks (box-only models).
        contiguous_ids: ``True``: labels ``1..K`` as above. ``False``: the labels are the COCO
            category ids themselves (the convention of torchvision's COCO checkpoints, 91
            classes for COCO); ``classes`` then has ``"N/A"`` in the gaps.
        verbose: let pycocotools print while loading.
    """

    def __init__(
        self,
        root: str,
        ann_file: str,
        transforms: Optional[Callable] = None,
        remove_images_without_annotations: bool = False,
        drop_crowd: bool = False,
        return_masks: bool = True,
        contiguous_ids: bool = True,
        verbose: bool = False,
    ):
        self.root, self.ann_file, self.transforms = root, ann_file, transforms
        self.drop_crowd, self.return_masks = drop_crowd, return_masks
        self.coco = load_coco(ann_file, verbose)
        self.contiguous_id, self.coco_id = category_maps(self.coco)
        if not contiguous_ids:
            self.contiguous_id = self.coco_id = {c: c for c in self.contiguous_id}
        cats = self.coco.cats
        top = max(self.coco_id, default=0)
        self.classes = ["__background__"] + [
            cats[self.coco_id[i]]["name"] if i in self.coco_id else "N/A" for i in range(1, top + 1)
        ]
        ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            ids = [i for i in ids if self._usable_annotations(i)]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        """Classes including the background (``K + 1``; the largest id + 1 without
        ``contiguous_ids``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def get_height_and_width(self, index: int) -> Tuple[int, int]:
        """``(H, W)`` of item ``index`` from the JSON, without reading the image."""
        info = self.coco.imgs[self.ids[index]]
        return int(info["height"]), int(info["width"])

    def _usable_annotations(self, image_id: int) -> List[dict]:
        anns = self.coco.imgToAnns.get(image_id, [])
        keep = []
        for a in anns:
            if self.drop_crowd and a.get("iscrowd", 0):
                continue
            x, y, w, h = a["bbox"]
            if w > 0 and h > 0:
                keep.append(a)
        return keep

    def load_image(self, image_id: int) -> Tensor:
        """The image as float32 ``[3, H, W]`` in ``[0, 1]``."""
        return read_image(os.path.join(self.root, self.coco.imgs[image_id]["file_name"]))

    def load_target(self, image_id: int) -> Dict[str, object]:
        """The target dict of ``image_id`` before the transforms."""
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        boxes, keep = [], []
        for a in self._usable_annotations(image_id):
            x, y, bw, bh = (float(v) for v in a["bbox"])
            x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            if x2 > x1 and y2 > y1:
                boxes.append((x1, y1, x2, y2))
                keep.append(a)
        target: Dict[str, object] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(
                [self.contiguous_id[a["category_id"]] for a in keep], dtype=torch.int64
            ),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in keep], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in keep], dtype=torch.float32),
            "image_id": int(image_id),
        }
        if self.return_masks:
            masks = np.zeros((len(keep), h, w), dtype=np.uint8)
            for i, a in enumerate(keep):
                masks[i] = self.coco.annToMask(a)
            target["masks"] = torch.from_numpy(masks)
        return target

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, object]]:
        image_id = self.ids[index]
        image, target = self.load_image(image_id), self.load_target(image_id)
        info = self.coco.imgs[image_id]
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            size = (info["height"], info["width"])
            raise ValueError(
                "image %d (%s) is %s but the annotations say %s"
                % (image_id, info["file_name"], tuple(image.shape[1:]), size)
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate_detection(batch: Sequence[Tuple[Tensor, dict]]) -> Tuple[List[Tensor], List[dict]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``: detection images differ
    in size, so they stay a list (torchvision's detection models batch them themselves)."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


# ----------------------------------------------------------------------------- augmentation


def _sanitized_fields(sample):
    # SanitizeBoundingBoxes drops these along with the boxes (masks, being tv_tensors.Mask
    # with one row per box, are dropped by the transform itself).
    target = sample[1]
    return tuple(target[k] for k in ("labels", "iscrowd", "area") if k in target)


class DetectionTransform:
    """Applies torchvision.transforms.v2 ``ops`` to ``(image, target)`` with the boxes as
    ``tv_tensors.BoundingBoxes`` (XYXY) and the masks as ``tv_tensors.Mask``, so geometric
    transforms move image, boxes and masks with the same parameters; boxes that end up
    smaller than ``min_size`` pixels are removed with their labels, masks, ``iscrowd`` and
    ``area``. Returns plain tensors again. ``area`` is the annotation's and is not rescaled."""

    def __init__(self, ops: Sequence[Callable] = (), min_size: float = 1.0):
        from torchvision.transforms import v2

        self.ops = list(ops)
        self.transform = v2.Compose(
            self.ops + [v2.SanitizeBoundingBoxes(min_size, labels_getter=_sanitized_fields)]
        )

    def __call__(self, image: Tensor, target: dict) -> Tuple[Tensor, dict]:
        from torchvision import tv_tensors

        if not self.ops:
            return image, target
        wrapped = dict(target)
        wrapped["boxes"] = tv_tensors.BoundingBoxes(
            target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:])
        )
        if "masks" in target:
            wrapped["masks"] = tv_tensors.Mask(target["masks"])
        image, out = self.transform(tv_tensors.Image(image), wrapped)
        for key in ("boxes", "masks"):
            if key in out:
                out[key] = out[key].as_subclass(Tensor)
        return image.as_subclass(Tensor), out

    def __repr__(self) -> str:
        return "DetectionTransform(%r)" % (self.ops,)


def detection_transforms(
    train: bool,
    hflip: float = 0.5,
    scale_range: Optional[Tuple[float, float]] = None,
    size: Optional[Tuple[int, int]] = None,
) -> DetectionTransform:
    """The detection augmentation. ``train=True``: a horizontal flip with probability ``hflip``
    and, when ``scale_range`` and ``size`` (``(H, W)``) are given, ``v2.ScaleJitter``: the image
    is scaled to fit ``size``, times a factor drawn from ``scale_range``. ``train=False``:
    nothing (the detectors resize and normalise inside). Wrap the dataset in
    :class:`cvops.data.SeededTransform` for augmentation that does not depend on the process or
    worker."""
    from torchvision.transforms import v2

    ops: List[Callable] = []
    if train:
        if scale_range is not None:
            if size is None:
                raise ValueError("scale jitter needs a target size (H, W)")
            h, w = size
            # ScaleJitter's target_size is (width, height) (its docs: target_size[0] / width)
            ops.append(v2.ScaleJitter((w, h), scale_range=tuple(scale_range), antialias=True))
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
    return DetectionTransform(ops)


# ------------------------------------------------------------------------ synthetic dataset

# Object category k (0-based) has the shape SYNTHETIC_SHAPES[k % 4]; polygonal shapes are
# written as polygons or as RLE (alternating), discs and rings always as RLE (a ring has a hole,
# which one COCO polygon cannot describe).
SYNTHETIC_SHAPES = ("rectangle", "triangle", "disc", "ring")


def _polygon(kind: str, rng: np.random.Generator, cy: float, cx: float, r: float) -> np.ndarray:
    """Vertices ``[n, 2]`` as (x, y) of a rotated rectangle or a triangle around (cx, cy)."""
    turn = rng.uniform(0, 2 * math.pi)
    if kind == "rectangle":
        half = math.atan(rng.uniform(0.5, 1.0))  # aspect ratio between 1:2 and 1:1
        angles = turn + np.array([half, math.pi - half, math.pi + half, -half])
    else:
        angles = turn + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)


def _object_mask(
    kind: str, rng: np.random.Generator, h: int, w: int, as_polygon: bool
) -> Tuple[np.ndarray, object]:
    """One object of ``kind`` inside an ``h x w`` image: ``(mask uint8 [h, w], segmentation)``
    where ``segmentation`` is a COCO polygon list or a compressed RLE with ``counts`` as str;
    ``mask`` is what pycocotools decodes from it."""
    from pycocotools import mask as mask_utils

    s = min(h, w)
    r = s * rng.uniform(0.12, 0.24)
    cy, cx = rng.uniform(r + 1, h - r - 1), rng.uniform(r + 1, w - r - 1)
    if kind in ("rectangle", "triangle") and as_polygon:
        poly = [[round(float(v), 2) for v in _polygon(kind, rng, cy, cx, r).reshape(-1)]]
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, h, w)))
        return mask, poly
    if kind in ("rectangle", "triangle"):
        xy = _polygon(kind, rng, cy, cx, r).reshape(1, -1).tolist()
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(xy, h, w)))
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        ry, rx = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.0)
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = ((d <= 1) & ((d >= 0.3) if kind == "ring" else True)).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(mask))
    return mask, {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (``counts`` a list of run lengths, column-major, starting with
    a run of zeros), as real COCO stores its crowd regions."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured float background ``[h, w, 3]`` in about ``[0.15, 0.85]``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.broadcast_to(rng.uniform(0.3, 0.7, 3).astype(np.float32), (h, w, 3)).copy()
    for _ in range(3):
        fy, fx = rng.uniform(-0.5, 0.5, 2)
        wave = np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * math.pi))
        image += wave[..., None] * rng.uniform(0, 0.1, 3).astype(np.float32)
    return image


def _class_colors(num_classes: int) -> np.ndarray:
    hues = (np.arange(num_classes) / max(num_classes, 1) + 0.05) % 1.0
    k = (np.array([0.0, 8.0, 4.0])[None] + hues[:, None] * 12) % 12
    rgb = 0.5 - 0.45 * np.clip(np.minimum(k - 3, 9 - k), -1, 1)  # HSL-like, full saturation
    return rgb.astype(np.float32)


def make_synthetic_coco(
    out_dir: str,
    n_images: int,
    image_size=(80, 96),
    num_classes: int = 3,
    seed: int = 0,
    max_objects: int = 4,
    num_empty: int = 1,
    crowd: bool = True,
    image_format: str = "jpg",
    category_id_step: int = 2,
    background: Optional[Callable[[int, int, int], np.ndarray]] = None,
) -> Tuple[str, str]:
    """Write a small COCO-format instance dataset under ``out_dir``: ``images/*.{jpg,png}`` and
    ``instances.json`` (``info``, ``images``, ``annotations``, ``categories``). Returns
    ``(images_dir, ann_file)``, the arguments of :class:`CocoDetection`.

    Images are ``image_size`` (``int`` or ``(H, W)``) with 1 to ``max_objects`` non-overlapping
    shapes on a textured background; object category ``k`` has the shape
    ``SYNTHETIC_SHAPES[k % 4]`` and a class colour. Instance masks are written as polygons for
    some rectangles/triangles and as compressed RLE (``counts`` a str) for the other objects; with
    ``crowd`` one image holds an ``iscrowd=1`` group of small discs as uncompressed RLE, as in real
    COCO. The last ``num_empty`` images have no objects. Category ids are ``1, 1 + step, ...``
    (not contiguous, like COCO's), image ids ``1..n_images``. The output is a function of the
    arguments (``seed`` included) only.
    ``background(index, h, w)``, when given, paints image ``index``'s background (float
    ``[h, w, 3]`` in [0, 1]) instead of the default texture (the panoptic writer's stuff regions).
    """
    from PIL import Image
    from pycocotools import mask as mask_utils

    if num_classes < 1:
        raise ValueError("num_classes (object categories) must be >= 1, got %d" % num_classes)
    if image_format not in ("jpg", "png"):
        raise ValueError("image_format must be 'jpg' or 'png', got %r" % (image_format,))
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    cat_ids = [1 + k * int(category_id_step) for k in range(num_classes)]
    names = [
        SYNTHETIC_SHAPES[k % 4] + ("" if k < 4 else "_%d" % (k // 4)) for k in range(num_classes)
    ]
    categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n in zip(cat_ids, names)]
    colors = _class_colors(num_classes)
    crowd_image = min(1, n_images - num_empty - 1) if crowd and n_images > num_empty else -1
    images, annotations = [], []
    shapes_written = 0  # alternates polygon / RLE for the polygonal shapes
    for i in range(n_images):
        rng = np.random.default_rng([int(seed), i])
        image_id = i + 1
        file_name = "%012d.%s" % (image_id, image_format)
        image = _background(rng, h, w) if background is None else background(i, h, w)
        occupied = np.zeros((h, w), dtype=bool)
        objects = []  # (category index, mask, segmentation, iscrowd)
        n = 0 if i >= n_images - num_empty else int(rng.integers(1, max_objects + 1))
        for _ in range(n):
            k = int(rng.integers(num_classes))
            kind = SYNTHETIC_SHAPES[k % 4]
            for _try in range(20):  # place it where it does not touch another object
                mask, segm = _object_mask(kind, rng, h, w, shapes_written % 2 == 0)
                if mask.any() and not (occupied & _dilate(mask)).any():
                    break
            else:
                continue
            occupied |= mask.astype(bool)
            objects.append((k, mask, segm, 0))
            shapes_written += 1
        if i == crowd_image:
            k = int(rng.integers(num_classes))
            mask = np.zeros((h, w), dtype=np.uint8)
            yy, xx = np.ogrid[0:h, 0:w]
            for _ in range(6):
                yx = rng.uniform([3, 3], [h - 3, w - 3])
                mask |= ((yy - yx[0]) ** 2 + (xx - yx[1]) ** 2 <= 4).astype(np.uint8)
            mask &= ~_dilate(occupied.astype(np.uint8)).astype(bool)
            if mask.any():
                occupied |= mask.astype(bool)
                objects.append((k, mask, _uncompressed_rle(mask), 1))
        for k, mask, segm, iscrowd in objects:
            shade = 1 + 0.12 * np.sin(np.arange(w, dtype=np.float32) / w * 6 + rng.uniform(0, 6))
            color = np.clip(colors[k] + rng.uniform(-0.08, 0.08, 3), 0, 1)
            paint = color[None, None, :] * shade[None, :, None]
            image = np.where(mask[..., None].astype(bool), paint, image)
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[k],
                    "segmentation": segm,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": iscrowd,
                }
            )
        image = np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1)
        pixels = (image * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
    dataset = {
        "info": {"description": "cvops synthetic shapes (seed %d)" % seed, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = os.path.join(out_dir, "instances.json")
    with open(ann_file, "w") as f:
        json.dump(dataset, f)
    return image_dir, ann_file


def _dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel (8-neighbourhood), as bool."""
    m = np.pad(mask.astype(bool), 1)
    out = np.zeros_like(m)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1)
    return out[1:-1, 1:-1]
