"""Benchmark cases, one module per op family; importing a module registers its cases."""

from . import losses, roi_align  # noqa: F401
