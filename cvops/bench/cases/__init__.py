"""Benchmark cases, one module per op family; importing a module registers its cases."""

from . import roi_align  # noqa: F401
from . import losses  # noqa: F401
