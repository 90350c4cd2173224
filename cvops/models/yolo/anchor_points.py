"""Anchor points of the anchor-free heads (YOLOv8): cell centres, and boxes as distances from
them."""

from typing import Sequence

import torch

__all__ = ["boxes_to_distances", "distances_to_boxes", "make_anchor_points"]


def make_anchor_points(
    shapes: Sequence[Sequence[int]], strides: Sequence[float], device=None, dtype=None
):
    """Cell centres ``(N, 2)`` (in their level's grid units) and their strides ``(N, 1)`` of
    feature maps of ``shapes`` ``[(h, w), ...]``, level after level, row-major."""
    points, stride_list = [], []
    for (h, w), s in zip(shapes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) + 0.5
        xs = torch.arange(w, device=device, dtype=dtype) + 0.5
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xv, yv), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_list)


def distances_to_boxes(distance: torch.Tensor, points: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``(left, top, right, bottom)`` distances from ``points`` to ``x1y1x2y2`` boxes."""
    lt, rb = distance.chunk(2, dim)
    return torch.cat((points - lt, points + rb), dim)


def boxes_to_distances(points: torch.Tensor, boxes: torch.Tensor, max_dist: float) -> torch.Tensor:
    """Inverse of :func:`distances_to_boxes`, clamped to ``[0, max_dist]`` (the last DFL bin
    has to stay reachable by interpolation)."""
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat((points - x1y1, x2y2 - points), -1).clamp(0, max_dist)
