"""Training: one engine (:mod:`cvops.train.engine`) and a thin command per task
(``python -m cvops.train.segmentation``)."""

from .engine import Engine, EngineConfig, Task, add_engine_args, build_scheduler

__all__ = ["Engine", "EngineConfig", "Task", "add_engine_args", "build_scheduler"]
