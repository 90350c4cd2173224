"""Element-wise IoU-based box regression losses with ``torchvision.ops`` semantics:
:func:`generalized_box_iou_loss`, :func:`distance_box_iou_loss` and
:func:`complete_box_iou_loss`.

Unlike the pairwise ``generalized_box_iou`` & co. in :mod:`cvops.ops.boxes`, these compare
``boxes1[i]`` with ``boxes2[i]`` (both ``[..., 4]`` in ``(x1, y1, x2, y2)``), which is what a
detector's box loss needs. ``reduction`` is ``"none"``, ``"mean"`` (0 for empty input, still
in the graph) or ``"sum"``; ``eps`` guards the divisions. The functions are TorchScript-
scriptable.
"""

import math
from typing import Tuple

import torch
from torch import Tensor

from .boxes import _upcast

__all__ = ["complete_box_iou_loss", "distance_box_iou_loss", "generalized_box_iou_loss"]


def _check_pair(boxes1: Tensor, boxes2: Tensor) -> None:
    if boxes1.dim() < 1 or boxes1.size(-1) != 4:
        raise ValueError("boxes1 must have shape [..., 4], got %s" % (list(boxes1.shape),))
    if boxes2.dim() < 1 or boxes2.size(-1) != 4:
        raise ValueError("boxes2 must have shape [..., 4], got %s" % (list(boxes2.shape),))


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        # an empty batch gives 0 that still depends on the inputs (no NaN, gradients flow)
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError("reduction must be 'none', 'mean' or 'sum', got '%s'" % reduction)


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    """Element-wise intersection and union areas."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    return inter, area1 + area2 - inter


def _hull(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Width and height ``[..., 2]`` of the smallest box enclosing both."""
    lo = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    hi = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    return hi - lo


def _diou_loss_and_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    hull = _hull(boxes1, boxes2)
    diagonal_sq = hull[..., 0] ** 2 + hull[..., 1] ** 2 + eps
    centre_gap = (boxes1[..., :2] + boxes1[..., 2:]) / 2 - (boxes2[..., :2] + boxes2[..., 2:]) / 2
    centres_sq = centre_gap[..., 0] ** 2 + centre_gap[..., 1] ** 2
    return 1 - iou + centres_sq / diagonal_sq, iou


def generalized_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - GIoU(boxes1[i], boxes2[i])`` (Rezatofighi et al., 2019): IoU minus the part of
    the enclosing box the union leaves empty; in [0, 2], informative for disjoint boxes."""
    _check_pair(boxes1, boxes2)
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    hull = _hull(boxes1, boxes2)
    hull_area = hull[..., 0] * hull[..., 1]
    loss = 1 - (iou - (hull_area - union) / (hull_area + eps))
    return _reduce(loss, reduction)


def distance_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """``1 - IoU + d^2 / c^2`` (Zheng et al., 2020): ``d`` the distance of the box centres,
    ``c`` the diagonal of the enclosing box."""
    _check_pair(boxes1, boxes2)
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    loss, _ = _diou_loss_and_iou(boxes1, boxes2, eps)
    return _reduce(loss, reduction)


def complete_box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """The DIoU loss plus ``alpha * v`` (Zheng et al., 2020): ``v = 4/pi^2 (atan(w2/h2) -
    atan(w1/h1))^2`` penalises differing aspect ratios, ``alpha = v / (1 - IoU + v + eps)``
    is a constant for the gradients (as in the paper and torchvision). ``boxes2`` is the
    target."""
    _check_pair(boxes1, boxes2)
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    diou_loss, iou = _diou_loss_and_iou(boxes1, boxes2, eps)
    w1 = boxes1[..., 2] - boxes1[..., 0]
    h1 = boxes1[..., 3] - boxes1[..., 1]
    w2 = boxes2[..., 2] - boxes2[..., 0]
    h2 = boxes2[..., 3] - boxes2[..., 1]
    v = (4 / (math.pi**2)) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(diou_loss + alpha * v, reduction)
