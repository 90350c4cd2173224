"""YOLOv5 detection (n/s/m/l/x, the v6.0+ architecture): 6x6 stride-2 stem, C3 blocks, SPPF,
PAN neck, anchor-based head with three anchors per level.

Layer ``model.{i}`` is layer ``i`` of the ultralytics/yolov5 ``yolov5*.yaml`` configurations
(the ``yolov5`` package's ``DetectionModel``), so its checkpoints load with ``strict=True``.
"""

from typing import Dict, List

import torch

from .._registry import register_model
from .blocks import C3, SPPF, make_divisible, scale_depth
from .common import AnchorDetect, Conv
from .detector import YOLO
from .loss_v5 import YOLOv5Loss

__all__ = ["ANCHORS", "YOLOv5", "yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x"]

# (depth, width) multipliers of yolov5{n,s,m,l,x}.yaml
SCALES = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}
# COCO anchors (w, h) in pixels for P3/8, P4/16, P5/32
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


class YOLOv5(YOLO):
    """YOLOv5 at a ``depth``/``width`` multiplier for ``num_classes`` classes; ``anchors``:
    per level flat pixel ``(w, h)`` pairs."""

    def __init__(
        self,
        num_classes: int = 80,
        depth: float = 0.33,
        width: float = 0.25,
        anchors=ANCHORS,
        **detector_options,
    ):
        super().__init__(num_classes, **detector_options)

        def c(ch: int) -> int:
            return make_divisible(ch * width, 8)

        def n(k: int) -> int:
            return scale_depth(k, depth)

        g = self
        # backbone
        g.add(-1, Conv(3, c(64), 6, 2, 2), c(64))  # 0  P1/2
        g.add(-1, Conv(c(64), c(128), 3, 2), c(128))  # 1  P2/4
        g.add(-1, C3(c(128), c(128), n(3)), c(128))  # 2
        g.add(-1, Conv(c(128), c(256), 3, 2), c(256))  # 3  P3/8
        g.add(-1, C3(c(256), c(256), n(6)), c(256))  # 4
        g.add(-1, Conv(c(256), c(512), 3, 2), c(512))  # 5  P4/16
        g.add(-1, C3(c(512), c(512), n(9)), c(512))  # 6
        g.add(-1, Conv(c(512), c(1024), 3, 2), c(1024))  # 7  P5/32
        g.add(-1, C3(c(1024), c(1024), n(3)), c(1024))  # 8
        g.add(-1, SPPF(c(1024), c(1024), 5), c(1024))  # 9
        # top-down neck
        g.add(-1, Conv(c(1024), c(512), 1, 1), c(512))  # 10
        g.upsample()  # 11
        g.concat([-1, 6])  # 12
        g.add(-1, C3(g.ch(-1), c(512), n(3), False), c(512))  # 13
        g.add(-1, Conv(c(512), c(256), 1, 1), c(256))  # 14
        g.upsample()  # 15
        g.concat([-1, 4])  # 16
        p3 = g.add(-1, C3(g.ch(-1), c(256), n(3), False), c(256))  # 17  P3 out
        # bottom-up neck
        g.add(-1, Conv(c(256), c(256), 3, 2), c(256))  # 18
        g.concat([-1, 14])  # 19
        p4 = g.add(-1, C3(g.ch(-1), c(512), n(3), False), c(512))  # 20  P4 out
        g.add(-1, Conv(c(512), c(512), 3, 2), c(512))  # 21
        g.concat([-1, 10])  # 22
        p5 = g.add(-1, C3(g.ch(-1), c(1024), n(3), False), c(1024))  # 23  P5 out
        head = AnchorDetect(num_classes, anchors, [g.ch(i) for i in (p3, p4, p5)])
        g.add([p3, p4, p5], head, 0)  # 24
        head.initialize_biases()
        # plain attribute: the loss holds no parameters or state
        self.criterion = YOLOv5Loss(
            num_classes, head.strides, max(self.image_size), **self.loss_options
        )

    def loss(self, raw, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        return self.criterion(raw, self.head.anchors, targets)

    def boxes_and_scores(self, decoded: torch.Tensor):
        xy, wh = decoded[..., :2], decoded[..., 2:4]
        # the confidence of a class is objectness x class probability
        return torch.cat((xy - wh / 2, xy + wh / 2), -1), decoded[..., 5:] * decoded[..., 4:5]

    @property
    def head(self) -> AnchorDetect:
        return self.model[-1]


def _yolov5(scale: str, num_classes: int, **kwargs) -> YOLOv5:
    depth, width = SCALES[scale]
    return YOLOv5(num_classes, depth, width, **kwargs)


@register_model
def yolov5n(num_classes: int = 80, **kwargs) -> YOLOv5:
    """YOLOv5n (1,872,157 parameters at 80 classes)."""
    return _yolov5("n", num_classes, **kwargs)


@register_model
def yolov5s(num_classes: int = 80, **kwargs) -> YOLOv5:
    """YOLOv5s (7,235,389 parameters at 80 classes)."""
    return _yolov5("s", num_classes, **kwargs)


@register_model
def yolov5m(num_classes: int = 80, **kwargs) -> YOLOv5:
    """YOLOv5m."""
    return _yolov5("m", num_classes, **kwargs)


@register_model
def yolov5l(num_classes: int = 80, **kwargs) -> YOLOv5:
    """YOLOv5l."""
    return _yolov5("l", num_classes, **kwargs)


@register_model
def yolov5x(num_classes: int = 80, **kwargs) -> YOLOv5:
    """YOLOv5x."""
    return _yolov5("x", num_classes, **kwargs)
