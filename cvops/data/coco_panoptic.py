"""COCO panoptic data: a dataset reading the real COCO panoptic format, a writer of a small
synthetic dataset in that format (built on :func:`make_synthetic_coco`, so panoptic training runs
offline through the same loader as real COCO panoptic), and a flip that moves every target.

The COCO panoptic format: ``panoptic_*.json`` with ``images``, ``categories`` (each with
``isthing``) and ``annotations``, one per image: ``{"image_id", "file_name", "segments_info"}``,
``file_name`` a PNG in the panoptic folder whose pixel ``(R, G, B)`` encodes the segment id
``R + 256 G + 256^2 B`` (0: unlabeled), ``segments_info`` a list of ``{"id", "category_id",
"area", "bbox", "iscrowd"}``.

Each item of :class:`CocoPanoptic` is ``(image, target)``: ``image`` float32 ``[3, H, W]`` in
``[0, 1]``; ``target`` Mask R-CNN's (``boxes``, ``labels`` = thing labels ``1..T``, ``masks``,
``iscrowd``, ``area``, ``image_id``, things only) plus

- ``sem_seg``: int64 ``[H, W]``, the semantic head's labels: 0 every thing pixel, ``1..S`` the
  stuff classes (in category id order), 255 unlabeled;
- ``panoptic``: int64 ``[H, W]`` segment ids (0 unlabeled), and ``segments_info`` as in the
  JSON (real category ids): the ground truth for :class:`cvops.metrics.PanopticEvaluator`.
"""

import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .coco import _class_colors, load_coco, make_synthetic_coco
from .segmentation import read_image

__all__ = [
    "STUFF_NAMES",
    "CocoPanoptic",
    "PanopticFlip",
    "id_to_rgb",
    "make_synthetic_coco_panoptic",
    "read_panoptic_png",
    "rgb_to_id",
]

IGNORE_INDEX = 255
STUFF_NAMES = ("sky", "ground", "wall", "water", "grass", "road")


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids (int64 ``[...]``) of COCO panoptic colours ``[..., 3]``: ``R + 256 G +
    256^2 B``."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_id`: uint8 ``[..., 3]`` for ids in ``[0, 2^24)``."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("segment ids must be in [0, 2^24), got [%d, %d]" % (ids.min(), ids.max()))
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], -1).astype(np.uint8)


def read_panoptic_png(path: str) -> np.ndarray:
    """The int64 ``[H, W]`` segment ids of a COCO panoptic PNG."""
    from PIL import Image

    with Image.open(path) as im:
        return rgb_to_id(np.asarray(im.convert("RGB")))


# ------------------------------------------------------------------------------------ dataset


class CocoPanoptic(Dataset):
    """Images and panoptic annotations in the COCO panoptic format (real COCO or
    :func:`make_synthetic_coco_panoptic`'s), as ``(image, target)`` pairs (module docstring).

    Args:
        root: folder of the images (``images[i]["file_name"]`` in the JSON is relative to it).
        ann_file: the ``panoptic_*.json``.
        panoptic_root: folder of the panoptic PNGs.
        transforms: ``transforms(image, target) -> (image, target)``, e.g. :class:`PanopticFlip`.
        drop_crowd: leave ``iscrowd=1`` things out of the instance targets (they stay in
            ``sem_seg``, ``panoptic`` and ``segments_info``).

    Labels: things get ``1..T`` and stuff ``1..S`` in increasing category id order;
    :attr:`thing_ids` / :attr:`stuff_ids` give the category id of each, and
    :attr:`contiguous_id` maps a category id to its unified label (things ``1..T``, stuff
    ``T + 1..T + S``, the convention of :func:`cvops.models.detection.merge_panoptic`),
    :attr:`coco_id` back.
    """

    def __init__(
        self,
        root: str,
        ann_file: str,
        panoptic_root: str,
        transforms: Optional[Callable] = None,
        drop_crowd: bool = False,
    ):
        self.root, self.panoptic_root, self.transforms = root, panoptic_root, transforms
        self.drop_crowd = drop_crowd
        with open(ann_file) as f:
            data = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError("%s is not a COCO panoptic file: no %r" % (ann_file, key))
        self.categories = {int(c["id"]): c for c in data["categories"]}
        self.thing_ids = sorted(c for c, v in self.categories.items() if v.get("isthing", 1))
        self.stuff_ids = sorted(c for c, v in self.categories.items() if not v.get("isthing", 1))
        self.contiguous_id = {c: i + 1 for i, c in enumerate(self.thing_ids + self.stuff_ids)}
        self.coco_id = {i: c for c, i in self.contiguous_id.items()}
        self.classes = ["__background__"] + [self.categories[c]["name"] for c in self.thing_ids]
        self.stuff_classes = ["things"] + [self.categories[c]["name"] for c in self.stuff_ids]
        self.images = {int(im["id"]): im for im in data["images"]}
        self.annotations = {int(a["image_id"]): a for a in data["annotations"]}
        self.ids = sorted(i for i in self.images if i in self.annotations)

    @property
    def num_things(self) -> int:
        return len(self.thing_ids)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff_ids)

    @property
    def num_classes(self) -> int:
        """The detector's classes: things + background."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def load_target(self, image_id: int) -> Dict[str, object]:
        """The target of ``image_id`` before the transforms."""
        ann = self.annotations[image_id]
        ids = torch.from_numpy(
            read_panoptic_png(os.path.join(self.panoptic_root, ann["file_name"]))
        )
        info = self.images[image_id]
        if tuple(ids.shape) != (info["height"], info["width"]):
            raise ValueError(
                "panoptic PNG %s is %s but the image is %s"
                % (ann["file_name"], tuple(ids.shape), (info["height"], info["width"]))
            )
        sem = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.int64)
        stuff_label = {c: j + 1 for j, c in enumerate(self.stuff_ids)}
        boxes, labels, masks, crowd, area = [], [], [], [], []
        for seg in ann["segments_info"]:
            cat = int(seg["category_id"])
            if cat not in self.categories:
                raise ValueError("image %d: unknown category id %d" % (image_id, cat))
            mask = ids == int(seg["id"])
            if cat in stuff_label:
                sem[mask] = stuff_label[cat]
                continue
            sem[mask] = 0
            iscrowd = int(seg.get("iscrowd", 0))
            x, y, w, h = (float(v) for v in seg["bbox"])
            if (iscrowd and self.drop_crowd) or w <= 0 or h <= 0:
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(self.contiguous_id[cat])
            masks.append(mask)
            crowd.append(iscrowd)
            area.append(float(seg.get("area", int(mask.sum()))))
        h, w = ids.shape
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.stack(masks).to(torch.uint8)
            if masks
            else torch.zeros((0, h, w), dtype=torch.uint8),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
            "area": torch.tensor(area, dtype=torch.float32),
            "image_id": int(image_id),
            "sem_seg": sem,
            "panoptic": ids,
            "segments_info": [dict(s) for s in ann["segments_info"]],
        }

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, object]]:
        image_id = self.ids[index]
        image = read_image(os.path.join(self.root, self.images[image_id]["file_name"]))
        target = self.load_target(image_id)
        if tuple(image.shape[1:]) != tuple(target["panoptic"].shape):
            raise ValueError(
                "image %d is %s but its panoptic PNG %s"
                % (image_id, tuple(image.shape[1:]), tuple(target["panoptic"].shape))
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class PanopticFlip:
    """Horizontal flip with probability ``p`` of the image and every spatial target (boxes,
    masks, ``sem_seg``, ``panoptic``); one ``torch.rand`` draw, so
    :class:`cvops.data.SeededTransform` makes it reproducible."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be in [0, 1], got %s" % p)
        self.p = p

    def __call__(self, image: Tensor, target: dict) -> Tuple[Tensor, dict]:
        if not bool(torch.rand(()) < self.p):
            return image, target
        target = dict(target)
        width = image.shape[-1]
        if "boxes" in target:
            x1, y1, x2, y2 = target["boxes"].unbind(-1)
            target["boxes"] = torch.stack((width - x2, y1, width - x1, y2), -1)
        for key in ("masks", "sem_seg", "panoptic"):
            if key in target:
                target[key] = target[key].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return "PanopticFlip(p=%s)" % self.p


# ------------------------------------------------------------------------- synthetic dataset


# Dull colours for the stuff classes (STUFF_NAMES order); the thing classes have saturated ones.
STUFF_COLORS = (
    (0.62, 0.66, 0.76),
    (0.52, 0.40, 0.30),
    (0.56, 0.56, 0.50),
    (0.25, 0.40, 0.46),
    (0.44, 0.50, 0.30),
    (0.30, 0.30, 0.32),
)


def _stuff_colors(num_stuff: int) -> np.ndarray:
    return np.asarray(STUFF_COLORS[:num_stuff], dtype=np.float32)


class _StuffPainter:
    """``make_synthetic_coco``'s ``background``: splits each image into 1-3 horizontal bands
    along wavy boundaries, each band a different stuff class with its own tint and stripe
    texture, and remembers the label map (-1 on the 1-pixel boundary lines: unlabeled)."""

    def __init__(self, num_stuff: int, seed: int):
        self.num_stuff, self.seed = num_stuff, seed
        self.colors = _stuff_colors(num_stuff)
        self.labels: Dict[int, np.ndarray] = {}

    def __call__(self, index: int, h: int, w: int) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed), index, 7])
        bands = int(rng.integers(1, min(self.num_stuff, 3) + 1))
        classes = rng.choice(self.num_stuff, bands, replace=False)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        band = np.zeros((h, w), dtype=np.int64)
        boundary = np.zeros((h, w), dtype=bool)
        for y0 in np.sort(rng.uniform(0.25 * h, 0.75 * h, bands - 1)):
            edge = y0 + 0.08 * h * np.sin(xx * rng.uniform(0.05, 0.15) + rng.uniform(0, 6.3))
            band += yy > edge
            boundary |= np.abs(yy - edge) < 0.5
        labels = classes[band]
        image = self.colors[labels]
        for j in range(self.num_stuff):  # class j: stripes at angle j*pi/S
            angle = np.pi * j / self.num_stuff
            stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (0.5 + 0.25 * j))
            image += ((labels == j) * stripes * 0.07)[..., None]
        self.labels[index] = np.where(boundary, -1, labels)
        return np.clip(image, 0, 1)


def make_synthetic_coco_panoptic(
    out_dir: str,
    n_images: int,
    image_size=(80, 96),
    num_things: int = 3,
    num_stuff: int = 2,
    seed: int = 0,
    max_objects: int = 4,
    num_empty: int = 1,
    crowd: bool = True,
    image_format: str = "jpg",
    category_id_step: int = 2,
) -> Tuple[str, str, str]:
    """Write a small COCO panoptic dataset under ``out_dir``: :func:`make_synthetic_coco`'s
    ``images/`` and ``instances.json`` (the things, ``num_things`` categories), the stuff
    regions painted as their background, ``panoptic/*.png`` (RGB-encoded segment ids) and
    ``panoptic.json``. Returns ``(images_dir, panoptic_json, panoptic_dir)``, the arguments of
    :class:`CocoPanoptic`.

    Stuff: 1 to 3 horizontal bands per image of ``num_stuff`` (<= 6) classes (``STUFF_NAMES``:
    sky, ground, ...), category ids ``100 + 1 .. 100 + S``; the 1-pixel lines between bands are
    unlabeled. Things overwrite the stuff; the crowd group (``crowd``) is a thing segment with
    ``iscrowd=1``. Segment ids are distinct random ids in ``[1, 2^24)`` (so all three colour
    channels are used, as in real COCO). A function of the arguments only.
    """
    from PIL import Image

    if not 1 <= num_stuff <= len(STUFF_NAMES):
        raise ValueError("num_stuff must be in [1, %d], got %d" % (len(STUFF_NAMES), num_stuff))
    painter = _StuffPainter(num_stuff, seed)
    image_dir, instances = make_synthetic_coco(
        out_dir,
        n_images,
        image_size,
        num_things,
        seed,
        max_objects=max_objects,
        num_empty=num_empty,
        crowd=crowd,
        image_format=image_format,
        category_id_step=category_id_step,
        background=painter,
    )
    coco = load_coco(instances)
    stuff_ids = [100 + j + 1 for j in range(num_stuff)]
    categories = [dict(c, isthing=1) for c in coco.dataset["categories"]]
    categories += [
        {"id": c, "name": STUFF_NAMES[j], "supercategory": "background", "isthing": 0}
        for j, c in enumerate(stuff_ids)
    ]
    colors = np.concatenate([_class_colors(num_things), _stuff_colors(num_stuff)])
    for c, rgb in zip(categories, colors):
        c["color"] = [int(v) for v in (rgb * 255).round()]
    panoptic_dir = os.path.join(out_dir, "panoptic")
    os.makedirs(panoptic_dir, exist_ok=True)
    annotations = []
    for index, info in enumerate(coco.dataset["images"]):
        rng = np.random.default_rng([int(seed), index, 11])
        stuff = painter.labels[index]
        anns = coco.imgToAnns.get(info["id"], [])
        # one id per stuff class and per thing, distinct, all colour channels in use
        seg_ids = (rng.choice(256**3 - 1, num_stuff + len(anns), replace=False) + 1).tolist()
        ids = np.zeros(stuff.shape, dtype=np.int64)
        segments = []
        for j in range(num_stuff):
            ids[stuff == j] = seg_ids[j]
        for a, seg_id in zip(anns, seg_ids[num_stuff:]):
            ids[coco.annToMask(a).astype(bool)] = seg_id
        for j in range(num_stuff):
            segments.append(_segment_info(ids, seg_ids[j], stuff_ids[j], 0))
        for a, seg_id in zip(anns, seg_ids[num_stuff:]):
            segments.append(_segment_info(ids, seg_id, a["category_id"], a["iscrowd"]))
        png = "%012d.png" % info["id"]
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(panoptic_dir, png))
        annotations.append(
            {
                "image_id": info["id"],
                "file_name": png,
                "segments_info": [s for s in segments if s["area"] > 0],
            }
        )
    dataset = {
        "info": {"description": "cvops synthetic panoptic (seed %d)" % seed, "version": "1.0"},
        "licenses": [],
        "images": coco.dataset["images"],
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = os.path.join(out_dir, "panoptic.json")
    with open(ann_file, "w") as f:
        json.dump(dataset, f)
    return image_dir, ann_file, panoptic_dir


def _segment_info(ids: np.ndarray, seg_id: int, category_id: int, iscrowd: int) -> dict:
    """COCO's ``segments_info`` entry of segment ``seg_id`` in the id map (bbox ``[x, y, w, h]``
    of its pixels)."""
    ys, xs = np.nonzero(ids == seg_id)
    bbox: Sequence[float] = [0.0, 0.0, 0.0, 0.0]
    if len(xs):
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
    return {
        "id": int(seg_id),
        "category_id": int(category_id),
        "area": int(len(xs)),
        "bbox": [float(v) for v in bbox],
        "iscrowd": int(iscrowd),
    }
