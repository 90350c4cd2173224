"""One-stage YOLO detectors (v5, v7, v8): models, losses, assignment and decoding."""

from . import common  # noqa: F401
from .assigners import TaskAlignedAssigner, match_anchors  # noqa: F401
from .detector import YOLO  # noqa: F401
from .loss_v5 import YOLOv5Loss  # noqa: F401
from .loss_v8 import YOLOv8Loss  # noqa: F401
from .yolov5 import YOLOv5, yolov5l, yolov5m, yolov5n, yolov5s, yolov5x  # noqa: F401
from .yolov7 import YOLOv7, yolov7, yolov7_tiny  # noqa: F401
from .yolov8 import YOLOv8, yolov8l, yolov8m, yolov8n, yolov8s, yolov8x  # noqa: F401
