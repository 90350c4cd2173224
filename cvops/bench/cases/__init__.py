"""Benchmark cases, one module per op family; importing a module registers its cases."""

from . import (
    depthwise_conv2d,  # noqa: F401
    models,  # noqa: F401
    roi_align,  # noqa: F401
)
