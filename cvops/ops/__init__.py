"""cvops ops: torchvision-compatible functions and their nn.Module wrappers."""

from .roi_align import RoIAlign, roi_align

__all__ = ["RoIAlign", "roi_align"]
