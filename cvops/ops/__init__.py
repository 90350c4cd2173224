"""cvops ops: torchvision-compatible functions and their nn.Module wrappers."""

from .depthwise_conv2d import DepthwiseConv2d, depthwise_conv2d
from .roi_align import RoIAlign, roi_align

__all__ = ["RoIAlign", "roi_align"]
__all__ += ["DepthwiseConv2d", "depthwise_conv2d"]
