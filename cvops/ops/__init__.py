"""cvops ops: torchvision-compatible functions and their nn.Module wrappers."""

from .losses import (  # noqa: F401
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    dice_focal_loss,
    dice_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from .roi_align import RoIAlign, roi_align

__all__ = ["RoIAlign", "roi_align"]
__all__ += ["sigmoid_focal_loss", "softmax_focal_loss", "dice_loss", "dice_focal_loss"]
__all__ += ["FocalLoss", "DiceLoss", "DiceFocalLoss"]
