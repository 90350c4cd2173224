"""Rotated boxes in plain PyTorch: format conversions and pairwise IoU.

The formats are torchvision 0.29's:

* ``"cxcywhr"``: centre, width, height, angle ``r`` in degrees (counter-clockwise in the image
  plane, about the centre);
* ``"xywhr"``: the same box given by its first corner (the top-left one before rotation);
* ``"xyxyxyxy"``: the four corners, top-left, top-right, bottom-right, bottom-left before
  rotation.

Conversions compute in floating point; integer boxes are rounded back to their dtype after
each step, as torchvision does. Everything here is scriptable.
"""

import math

import torch
from torch import Tensor

ROTATED_FORMATS = ("xywhr", "cxcywhr", "xyxyxyxy")


def _radians(r: Tensor):
    angle = r * math.pi / 180.0
    return torch.cos(angle), torch.sin(angle)


def _like_input(boxes: Tensor, like: Tensor) -> Tensor:
    # Integer boxes: round the float result back to the input dtype.
    if like.is_floating_point():
        return boxes
    return boxes.round().to(like.dtype)


def cxcywhr_to_xywhr(boxes: Tensor) -> Tensor:
    cx, cy, w, h, r = boxes.unbind(-1)
    cos, sin = _radians(r)
    x1 = cx - w / 2 * cos - h / 2 * sin
    y1 = cy - h / 2 * cos + w / 2 * sin
    return _like_input(torch.stack((x1, y1, w, h, r), dim=-1), boxes)


def xywhr_to_cxcywhr(boxes: Tensor) -> Tensor:
    x1, y1, w, h, r = boxes.unbind(-1)
    cos, sin = _radians(r)
    cx = x1 + w / 2 * cos + h / 2 * sin
    cy = y1 - w / 2 * sin + h / 2 * cos
    return _like_input(torch.stack((cx, cy, w, h, r), dim=-1), boxes)


def xywhr_to_xyxyxyxy(boxes: Tensor) -> Tensor:
    x1, y1, w, h, r = boxes.unbind(-1)
    cos, sin = _radians(r)
    # Walk the edges from the first corner: along the width, then down the height.
    x2 = x1 + w * cos
    y2 = y1 - w * sin
    x3 = x2 + h * sin
    y3 = y2 + h * cos
    x4 = x1 + h * sin
    y4 = y1 + h * cos
    return _like_input(torch.stack((x1, y1, x2, y2, x3, y3, x4, y4), dim=-1), boxes)


def xyxyxyxy_to_xywhr(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2, x3, y3, x4, y4 = boxes.unbind(-1)
    r = torch.atan2(y1 - y2, x2 - x1) * 180 / math.pi
    w = ((x2 - x1) ** 2 + (y1 - y2) ** 2).sqrt()
    h = ((x3 - x2) ** 2 + (y3 - y2) ** 2).sqrt()
    return _like_input(torch.stack((x1, y1, w, h, r), dim=-1), boxes)


def convert_rotated(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Between two different rotated formats, through ``"xywhr"``."""
    if in_fmt == "cxcywhr":
        boxes = cxcywhr_to_xywhr(boxes)
    elif in_fmt == "xyxyxyxy":
        boxes = xyxyxyxy_to_xywhr(boxes)
    if out_fmt == "cxcywhr":
        boxes = xywhr_to_cxcywhr(boxes)
    elif out_fmt == "xyxyxyxy":
        boxes = xywhr_to_xyxyxyxy(boxes)
    return boxes


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _corner_offsets(boxes: Tensor) -> Tensor:
    """[..., 5] cxcywhr -> [..., 4, 2] corners relative to the centre (small numbers, so
    that far-away boxes keep their precision)."""
    centred = torch.cat((torch.zeros_like(boxes[..., :2]), boxes[..., 2:]), dim=-1)
    corners = xywhr_to_xyxyxyxy(cxcywhr_to_xywhr(centred))
    return corners.unflatten(-1, (4, 2))


def _inside(points: Tensor, rect: Tensor) -> Tensor:
    """[..., K] whether each of [..., K, 2] points lies in the rectangle [..., 4, 2]
    (boundary included, up to rounding)."""
    origin = rect[..., 0:1, :]
    e1 = rect[..., 1:2, :] - origin
    e2 = rect[..., 3:4, :] - origin
    v = points - origin
    a, b = (v * e1).sum(-1), (v * e2).sum(-1)
    n1, n2 = (e1 * e1).sum(-1), (e2 * e2).sum(-1)
    tol1, tol2 = n1 * 1e-5, n2 * 1e-5
    return (a >= -tol1) & (a <= n1 + tol1) & (b >= -tol2) & (b <= n2 + tol2)


def _edge_crossings(pa: Tensor, pb: Tensor):
    """Crossing points [..., 16, 2] of the 4 edges of each polygon pair, and which exist."""
    ea = torch.roll(pa, -1, dims=-2) - pa
    eb = torch.roll(pb, -1, dims=-2) - pb
    p, r = pa.unsqueeze(-2), ea.unsqueeze(-2)  # [..., 4, 1, 2]
    q, s = pb.unsqueeze(-3), eb.unsqueeze(-3)  # [..., 1, 4, 2]
    denom = _cross(r, s)  # [..., 4, 4]
    parallel = denom.abs() <= 1e-12 * (r * r).sum(-1) * (s * s).sum(-1)
    denom = torch.where(parallel, torch.ones_like(denom), denom)
    qp = q - p
    t = _cross(qp, s) / denom
    u = _cross(qp, r) / denom
    eps = 1e-6
    ok = ~parallel & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    points = p + t.unsqueeze(-1) * r
    return points.flatten(-3, -2), ok.flatten(-2)


def _intersection_area(pa: Tensor, pb: Tensor) -> Tensor:
    """Area of the intersection of the convex quadrilaterals [..., 4, 2] pa and pb.

    The intersection polygon's vertices are the corners of each quadrilateral inside the
    other and the crossings of their edges; sorted by angle around their mean, the shoelace
    formula gives the area. Missing candidates repeat the first vertex (zero-area terms)."""
    crossings, crossing_ok = _edge_crossings(pa, pb)
    points = torch.cat((pa, pb, crossings), dim=-2)  # [..., 24, 2]
    valid = torch.cat((_inside(pa, pb), _inside(pb, pa), crossing_ok), dim=-1)
    points = torch.where(valid.unsqueeze(-1), points, torch.zeros_like(points))
    count = valid.sum(-1, keepdim=True).clamp(min=1).to(points.dtype)
    centre = points.sum(-2) / count  # [..., 2]
    rel = points - centre.unsqueeze(-2)
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid ones last
    order = angle.argsort(dim=-1)
    rel = rel.gather(-2, order.unsqueeze(-1).expand_as(rel))
    valid = valid.gather(-1, order)
    rel = torch.where(valid.unsqueeze(-1), rel, rel[..., :1, :])
    area = 0.5 * _cross(rel, torch.roll(rel, -1, dims=-2)).sum(-1)
    return area.abs()


def rotated_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU [..., N, M] of rotated boxes [..., N, 5] and [..., M, 5] in ``"cxcywhr"``.

    Pure PyTorch (memory ~50 values per pair). Half and integer boxes are computed in
    float32. A box with no area has IoU 0 with everything, as in torchvision."""
    if not boxes1.is_floating_point() or boxes1.element_size() < 4:
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point() or boxes2.element_size() < 4:
        boxes2 = boxes2.float()
    off1 = _corner_offsets(boxes1)  # [..., N, 4, 2]
    off2 = _corner_offsets(boxes2)  # [..., M, 4, 2]
    shift = boxes2[..., None, :, :2] - boxes1[..., :, None, :2]  # [..., N, M, 2]
    pb = off2.unsqueeze(-4) + shift.unsqueeze(-2)  # [..., N, M, 4, 2]
    pa = off1.unsqueeze(-3).expand_as(pb)
    inter = _intersection_area(pa, pb)
    area1 = boxes1[..., 2] * boxes1[..., 3]
    area2 = boxes2[..., 2] * boxes2[..., 3]
    union = area1.unsqueeze(-1) + area2.unsqueeze(-2) - inter
    empty = (area1.unsqueeze(-1) < 1e-14) | (area2.unsqueeze(-2) < 1e-14)
    iou = inter / torch.where(empty, torch.ones_like(union), union)
    return torch.where(empty, torch.zeros_like(iou), iou)
