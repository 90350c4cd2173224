"""Benchmark cases, one module per op family; importing a module registers its cases."""

from . import clip as _clip  # noqa: F401
from . import depthwise_conv2d as _depthwise_conv2d  # noqa: F401
from . import detection as _detection  # noqa: F401
from . import detection_export as _detection_export  # noqa: F401
from . import losses as _losses  # noqa: F401
from . import models as _models  # noqa: F401
from . import nms as _nms  # noqa: F401  (one line per op family keeps merges trivial)
from . import roi_align  # noqa: F401
from . import roi_pool as _roi_pool  # noqa: F401
from . import segmentation as _segmentation  # noqa: F401
from . import yolo as _yolo  # noqa: F401
