"""cvops: fast, correct computer-vision ops for PyTorch, drop-in for torchvision.ops."""

__version__ = "0.1.0"

from . import extension, models, ops  # noqa: E402, F401
from .extension import ExtensionNotAvailable, has_cuda, has_ops  # noqa: E402
from .ops import roi_align  # noqa: E402
from .ops.boxes import *  # noqa: E402, F401, F403
from .ops.depthwise_conv2d import depthwise_conv2d  # noqa: E402
from .ops.iou_losses import (  # noqa: E402
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)
from .ops.losses import (  # noqa: E402
    dice_focal_loss,
    dice_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from .ops.nms import batched_nms, nms, nms_fixed, soft_nms  # noqa: E402
from .ops.roi_pool import roi_pool  # noqa: E402

__all__ = ["ExtensionNotAvailable", "has_cuda", "has_ops", "models", "ops", "roi_align"]
__all__ += ["batched_nms", "nms", "nms_fixed", "soft_nms"] + ops.boxes.__all__
__all__ += ["roi_pool"]
__all__ += ["depthwise_conv2d"]
__all__ += ["dice_focal_loss", "dice_loss", "sigmoid_focal_loss", "softmax_focal_loss"]
__all__ += ["complete_box_iou_loss", "distance_box_iou_loss", "generalized_box_iou_loss"]
