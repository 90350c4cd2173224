"""cvops: fast, correct computer-vision ops for PyTorch, drop-in for torchvision.ops."""

__version__ = "0.1.0"

from . import extension, ops  # noqa: E402, F401
from .extension import ExtensionNotAvailable, has_cuda, has_ops  # noqa: E402
from .ops import roi_align  # noqa: E402
from .ops.depthwise_conv2d import depthwise_conv2d  # noqa: E402

__all__ = ["ExtensionNotAvailable", "has_cuda", "has_ops", "ops", "roi_align"]
__all__ += ["depthwise_conv2d"]
from . import models  # noqa: E402, F401

__all__ += ["models"]
