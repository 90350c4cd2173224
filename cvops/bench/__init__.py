"""Benchmarks of cvops against its reference implementations (``python -m cvops.bench``)."""

from .harness import BenchCase, Result, register, registered_cases, time_fn

__all__ = ["BenchCase", "Result", "register", "registered_cases", "time_fn"]
