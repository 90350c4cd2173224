"""cvops ops: torchvision-compatible functions and their nn.Module wrappers."""

from . import boxes  # noqa: F401
from .boxes import *  # noqa: F401, F403
from .depthwise_conv2d import DepthwiseConv2d, depthwise_conv2d
from .iou_losses import (  # noqa: F401
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
)
from .losses import (  # noqa: F401
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    dice_focal_loss,
    dice_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from .nms import batched_nms, nms, nms_fixed, soft_nms  # noqa: F401
from .poolers import MultiScaleRoIAlign
from .roi_align import RoIAlign, roi_align
from .roi_pool import RoIPool, roi_pool

__all__ = ["RoIAlign", "roi_align"]
__all__ += ["batched_nms", "nms", "nms_fixed", "soft_nms"] + boxes.__all__
__all__ += ["RoIPool", "roi_pool", "MultiScaleRoIAlign"]
__all__ += ["DepthwiseConv2d", "depthwise_conv2d"]
__all__ += ["sigmoid_focal_loss", "softmax_focal_loss", "dice_loss", "dice_focal_loss"]
__all__ += ["FocalLoss", "DiceLoss", "DiceFocalLoss"]
__all__ += ["complete_box_iou_loss", "distance_box_iou_loss", "generalized_box_iou_loss"]
