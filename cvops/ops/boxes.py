"""Box utilities for detectors, vectorised in torch, with torchvision.ops' semantics.

Boxes are ``(x1, y1, x2, y2)`` unless a ``fmt`` says otherwise; every function accepts
leading batch dimensions (``[..., N, 4]``). Areas and intersections are computed like
torchvision's (float16/bfloat16 upcast to float32, small integer types to int32), so results
match ``torchvision.ops`` to the last bit on the same inputs. ``box_convert`` and ``box_iou``
also take torchvision 0.29's rotated formats (see :mod:`cvops.ops.rotated_boxes`).

Every function is scriptable and registered with ``torch.fx.wrap`` (a leaf of fx graphs);
the argument checks that TorchScript does itself (types) run in eager mode only.
"""

import math
from typing import List, Tuple

import torch
from torch import Tensor

from ._errors import UnsupportedConversion
from .rotated_boxes import convert_rotated, rotated_box_iou

__all__ = [
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
    "remove_small_boxes",
]


def _upcast(t: Tensor) -> Tensor:
    """Half precision to float32 and small integers to int32, so products cannot overflow."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _check_boxes(boxes: Tensor, name: str = "boxes", size: int = 4) -> None:
    if not torch.jit.is_scripting():
        if not isinstance(boxes, Tensor):
            raise TypeError("%s must be a Tensor, got %s" % (name, type(boxes).__name__))
    if boxes.dim() < 1 or boxes.size(-1) != size:
        raise ValueError("%s must have shape [..., %d], got %s" % (name, size, list(boxes.shape)))


def _check_fmt(fmt: str, allowed: List[str], name: str = "fmt") -> None:
    if fmt not in allowed:
        raise ValueError("%s must be one of %s, got '%s'" % (name, allowed, fmt))


def _format_size(fmt: str) -> int:
    """Number of coordinates of a box in format ``fmt``."""
    if fmt == "xyxyxyxy":
        return 8
    return 5 if fmt in ("xywhr", "cxcywhr") else 4


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + c, b + d), dim=-1)
    # cxcywh
    return torch.stack((a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d), dim=-1)


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


@torch.fx.wrap
def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``[..., K]`` boxes between ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` (K = 4) or
    between the rotated ``"xywhr"``, ``"cxcywhr"`` (K = 5) and ``"xyxyxyxy"`` (K = 8).

    Conversions go through ``"xyxy"`` (``"xywhr"`` for rotated boxes), as torchvision's do,
    and give its results. Converting between an axis-aligned and a rotated format raises
    :class:`~cvops.ops._errors.UnsupportedConversion` (a ``ValueError`` and a
    ``NotImplementedError``, torchvision's type), an unknown format ``ValueError``.
    """
    formats = ["xyxy", "xywh", "cxcywh", "xywhr", "cxcywhr", "xyxyxyxy"]
    _check_fmt(in_fmt, formats, "in_fmt")
    _check_fmt(out_fmt, formats, "out_fmt")
    _check_boxes(boxes, "boxes", _format_size(in_fmt))
    if in_fmt == out_fmt:
        return boxes.clone()
    in_rotated, out_rotated = _format_size(in_fmt) != 4, _format_size(out_fmt) != 4
    if in_rotated != out_rotated:
        raise UnsupportedConversion(
            "box_convert cannot convert between the axis-aligned and the rotated formats "
            "(in_fmt '%s', out_fmt '%s')" % (in_fmt, out_fmt)
        )
    if in_rotated:
        return convert_rotated(boxes, in_fmt, out_fmt)
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


@torch.fx.wrap
def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Areas ``[...]`` of ``[..., 4]`` boxes (float16/bfloat16 computed in float32)."""
    _check_boxes(boxes)
    _check_fmt(fmt, ["xyxy", "xywh", "cxcywh"])
    return _areas(boxes, fmt)


def _areas(boxes: Tensor, fmt: str) -> Tensor:
    boxes = _upcast(boxes)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def _inter_union(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tuple[Tensor, Tensor]:
    area1 = _areas(boxes1, fmt)
    area2 = _areas(boxes2, fmt)
    if fmt == "cxcywh":
        lo1, hi1 = boxes1[..., :2] - boxes1[..., 2:] / 2, boxes1[..., :2] + boxes1[..., 2:] / 2
        lo2, hi2 = boxes2[..., :2] - boxes2[..., 2:] / 2, boxes2[..., :2] + boxes2[..., 2:] / 2
    elif fmt == "xywh":
        lo1, hi1 = boxes1[..., :2], boxes1[..., :2] + boxes1[..., 2:]
        lo2, hi2 = boxes2[..., :2], boxes2[..., :2] + boxes2[..., 2:]
    else:
        lo1, hi1 = boxes1[..., :2], boxes1[..., 2:]
        lo2, hi2 = boxes2[..., :2], boxes2[..., 2:]
    lt = torch.maximum(lo1[..., :, None, :], lo2[..., None, :, :])
    rb = torch.minimum(hi1[..., :, None, :], hi2[..., None, :, :])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


@torch.fx.wrap
def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise IoU ``[..., N, M]`` of ``[..., N, K]`` and ``[..., M, K]`` boxes.

    ``fmt``: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` (K = 4), or, as in torchvision 0.29, the
    rotated ``"cxcywhr"``, ``"xywhr"`` (K = 5) and ``"xyxyxyxy"`` (K = 8), whose IoU is the
    area of the polygon intersection over the union (plain PyTorch, see
    :func:`cvops.ops.rotated_boxes.rotated_box_iou`).
    """
    _check_fmt(fmt, ["xyxy", "xywh", "cxcywh", "xywhr", "cxcywhr", "xyxyxyxy"])
    size = _format_size(fmt)
    _check_boxes(boxes1, "boxes1", size)
    _check_boxes(boxes2, "boxes2", size)
    if size != 4:
        if fmt != "cxcywhr":
            boxes1 = convert_rotated(boxes1, fmt, "cxcywhr")
            boxes2 = convert_rotated(boxes2, fmt, "cxcywhr")
        return rotated_box_iou(boxes1, boxes2)
    inter, union = _inter_union(boxes1, boxes2, fmt)
    return inter / union


@torch.fx.wrap
def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al.): IoU - (hull - union) / hull."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    hull_lo = torch.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    hull_hi = torch.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    hull_wh = _upcast(hull_hi - hull_lo).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - (hull - union) / hull


def _diou_and_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    hull_lo = torch.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    hull_hi = torch.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    hull_wh = _upcast(hull_hi - hull_lo).clamp(min=0)
    diagonal_sq = (hull_wh[..., 0] ** 2) + (hull_wh[..., 1] ** 2) + eps
    cx1 = (boxes1[..., 0] + boxes1[..., 2]) / 2
    cy1 = (boxes1[..., 1] + boxes1[..., 3]) / 2
    cx2 = (boxes2[..., 0] + boxes2[..., 2]) / 2
    cy2 = (boxes2[..., 1] + boxes2[..., 3]) / 2
    centers_sq = (_upcast(cx1[..., :, None] - cx2[..., None, :]) ** 2) + (
        _upcast(cy1[..., :, None] - cy2[..., None, :]) ** 2
    )
    return iou - centers_sq / diagonal_sq, iou


@torch.fx.wrap
def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU (Zheng et al.): IoU - center_distance^2 / hull_diagonal^2."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    diou, _ = _diou_and_iou(_upcast(boxes1), _upcast(boxes2), eps)
    return diou


@torch.fx.wrap
def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU (CIoU, used by YOLO): DIoU - alpha * v with the aspect-ratio term
    v = 4/pi^2 (atan(w1/h1) - atan(w2/h2))^2 and alpha = v / (1 - IoU + v + eps), alpha
    treated as a constant for gradients (as torchvision does)."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    diou, iou = _diou_and_iou(boxes1, boxes2, eps)
    w1 = boxes1[..., :, None, 2] - boxes1[..., :, None, 0]
    h1 = boxes1[..., :, None, 3] - boxes1[..., :, None, 1]
    w2 = boxes2[..., None, :, 2] - boxes2[..., None, :, 0]
    h2 = boxes2[..., None, :, 3] - boxes2[..., None, :, 1]
    v = (4 / (math.pi**2)) * torch.pow(torch.atan(w1 / h1) - torch.atan(w2 / h2), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


@torch.fx.wrap
def clip_boxes_to_image(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Clamp x to ``[0, width]`` and y to ``[0, height]``; ``size`` is ``(height, width)``."""
    _check_boxes(boxes)
    if not torch.jit.is_scripting():
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise ValueError("size must be (height, width), got %r" % (size,))
    height, width = size[0], size[1]
    xs = boxes[..., 0::2].clamp(min=0, max=width)
    ys = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((xs, ys), dim=-1).reshape(boxes.shape)


@torch.fx.wrap
def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both ``>= min_size``."""
    _check_boxes(boxes)
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]
