"""Benchmark cases, one module per op family; importing a module registers its cases."""

from . import models as models  # noqa: F401
from . import roi_align  # noqa: F401
