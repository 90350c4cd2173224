"""YOLOv8 detection (n/s/m/l/x): C2f backbone and PAN neck, SPPF, anchor-free decoupled head
whose boxes are distributions over ``reg_max`` distances (DFL).

Layer ``model.{i}`` is ultralytics' ``yolov8.yaml`` layer ``i`` (keys as in its
``DetectionModel``), so ultralytics checkpoints load with ``strict=True``.
"""

import math
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from .._registry import register_model
from .anchor_points import distances_to_boxes, make_anchor_points
from .blocks import SPPF, C2f, make_divisible, scale_depth
from .common import Conv
from .detector import YOLO
from .loss_v8 import YOLOv8Loss

__all__ = ["DFL", "DFLDetect", "YOLOv8", "yolov8n", "yolov8s", "yolov8m", "yolov8l", "yolov8x"]

# (depth, width, max channels) of yolov8.yaml's scales
SCALES = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}


class DFL(nn.Module):
    """Expected value of each side's distance distribution: softmax over ``c1`` bins, then a
    fixed 1x1 conv with weights ``0..c1-1`` (a frozen parameter, as in the checkpoints)."""

    def __init__(self, c1: int = 16):
        super().__init__()
        self.c1 = c1
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float32).view(1, c1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(b, 4 * c1, a)`` -> ``(b, 4, a)`` distances in stride units."""
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class DFLDetect(nn.Module):
    """Decoupled anchor-free head: per level a box branch ``cv2`` (two 3x3 Conv, a 1x1 conv to
    ``4 * reg_max`` logits) and a class branch ``cv3`` (to ``nc`` logits).

    Training: ``{"boxes": (b, 4 * reg_max, N), "scores": (b, nc, N), "shapes": [(h, w)]}``
    over all ``N`` cells. Eval: ``(decoded (b, 4 + nc, N), raw)`` with decoded boxes
    ``cx, cy, w, h`` in pixels and sigmoid class scores."""

    def __init__(
        self,
        nc: int,
        ch: Sequence[int],
        reg_max: int = 16,
        strides: Sequence[float] = (8.0, 16.0, 32.0),
    ):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
        c2 = max(16, ch[0] // 4, reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
            for c in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch
        )
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()
        self.strides = tuple(float(s) for s in strides)

    def raw(self, xs: List[torch.Tensor]) -> Dict[str, object]:
        bs = xs[0].shape[0]
        boxes = torch.cat(
            [self.cv2[i](x).view(bs, 4 * self.reg_max, -1) for i, x in enumerate(xs)], -1
        )
        scores = torch.cat([self.cv3[i](x).view(bs, self.nc, -1) for i, x in enumerate(xs)], -1)
        return {"boxes": boxes, "scores": scores, "shapes": [tuple(x.shape[2:]) for x in xs]}

    def decode(self, raw: Dict[str, object]) -> torch.Tensor:
        """``(b, 4 + nc, N)``: ``cx, cy, w, h`` in pixels, then class probabilities."""
        boxes, scores = raw["boxes"], raw["scores"]
        points, strides = make_anchor_points(raw["shapes"], self.strides, boxes.device, boxes.dtype)
        xyxy = distances_to_boxes(self.dfl(boxes), points.t().unsqueeze(0), dim=1)
        cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
        return torch.cat((cxcywh * strides.t(), scores.sigmoid()), 1)

    def forward(self, xs: List[torch.Tensor]):
        raw = self.raw(xs)
        return raw if self.training else (self.decode(raw), raw)

    @torch.no_grad()
    def initialize_biases(self) -> None:
        """Box logits start flat (bias 2); class logits at a prior of ~5 objects per 640x640
        image spread over the classes (the reference's initialisation)."""
        for box, cls, s in zip(self.cv2, self.cv3, self.strides):
            box[-1].bias.fill_(2.0)
            cls[-1].bias.fill_(math.log(5 / self.nc / (640 / s) ** 2))


class YOLOv8(YOLO):
    """YOLOv8 at a ``depth``/``width`` multiplier with channels capped at ``max_channels``
    (before scaling), for ``num_classes`` classes."""

    def __init__(
        self,
        num_classes: int = 80,
        depth: float = 0.33,
        width: float = 0.25,
        max_channels: int = 1024,
        reg_max: int = 16,
        **detector_options,
    ):
        super().__init__(num_classes, **detector_options)

        def c(ch: int) -> int:
            return make_divisible(min(ch, max_channels) * width, 8)

        def n(k: int) -> int:
            return scale_depth(k, depth)

        g = self
        # backbone
        g.add(-1, Conv(3, c(64), 3, 2), c(64))  # 0  P1/2
        g.add(-1, Conv(c(64), c(128), 3, 2), c(128))  # 1  P2/4
        g.add(-1, C2f(c(128), c(128), n(3), True), c(128))  # 2
        g.add(-1, Conv(c(128), c(256), 3, 2), c(256))  # 3  P3/8
        g.add(-1, C2f(c(256), c(256), n(6), True), c(256))  # 4
        g.add(-1, Conv(c(256), c(512), 3, 2), c(512))  # 5  P4/16
        g.add(-1, C2f(c(512), c(512), n(6), True), c(512))  # 6
        g.add(-1, Conv(c(512), c(1024), 3, 2), c(1024))  # 7  P5/32
        g.add(-1, C2f(c(1024), c(1024), n(3), True), c(1024))  # 8
        g.add(-1, SPPF(c(1024), c(1024), 5), c(1024))  # 9
        # top-down neck
        g.upsample()  # 10
        g.concat([-1, 6])  # 11
        g.add(-1, C2f(g.ch(-1), c(512), n(3)), c(512))  # 12
        g.upsample()  # 13
        g.concat([-1, 4])  # 14
        p3 = g.add(-1, C2f(g.ch(-1), c(256), n(3)), c(256))  # 15  P3 out
        # bottom-up neck
        g.add(-1, Conv(c(256), c(256), 3, 2), c(256))  # 16
        g.concat([-1, 12])  # 17
        p4 = g.add(-1, C2f(g.ch(-1), c(512), n(3)), c(512))  # 18  P4 out
        g.add(-1, Conv(c(512), c(512), 3, 2), c(512))  # 19
        g.concat([-1, 9])  # 20
        p5 = g.add(-1, C2f(g.ch(-1), c(1024), n(3)), c(1024))  # 21  P5 out
        head = DFLDetect(num_classes, [g.ch(i) for i in (p3, p4, p5)], reg_max)
        g.add([p3, p4, p5], head, 0)  # 22
        head.initialize_biases()
        self.reg_max = reg_max
        # plain attribute: the loss holds no parameters or state
        self.criterion = YOLOv8Loss(num_classes, reg_max, head.strides, **self.loss_options)

    def loss(self, raw, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        return self.criterion(raw, targets)

    def boxes_and_scores(self, decoded: torch.Tensor):
        d = decoded.transpose(1, 2)  # (B, N, 4 + C)
        xy, wh = d[..., :2], d[..., 2:4]
        return torch.cat((xy - wh / 2, xy + wh / 2), -1), d[..., 4:]

    @property
    def head(self) -> DFLDetect:
        return self.model[-1]


def _yolov8(scale: str, num_classes: int, **kwargs) -> YOLOv8:
    depth, width, max_channels = SCALES[scale]
    return YOLOv8(num_classes, depth, width, max_channels, **kwargs)


@register_model
def yolov8n(num_classes: int = 80, **kwargs) -> YOLOv8:
    """YOLOv8n (3,157,200 parameters at 80 classes)."""
    return _yolov8("n", num_classes, **kwargs)


@register_model
def yolov8s(num_classes: int = 80, **kwargs) -> YOLOv8:
    """YOLOv8s (11,166,560 parameters at 80 classes)."""
    return _yolov8("s", num_classes, **kwargs)


@register_model
def yolov8m(num_classes: int = 80, **kwargs) -> YOLOv8:
    """YOLOv8m."""
    return _yolov8("m", num_classes, **kwargs)


@register_model
def yolov8l(num_classes: int = 80, **kwargs) -> YOLOv8:
    """YOLOv8l."""
    return _yolov8("l", num_classes, **kwargs)


@register_model
def yolov8x(num_classes: int = 80, **kwargs) -> YOLOv8:
    """YOLOv8x."""
    return _yolov8("x", num_classes, **kwargs)
