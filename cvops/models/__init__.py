"""cvops models: a registry of builders (``get_model``, ``list_models``) and the model families.

Parameter and buffer names follow the reference implementation users have checkpoints for
(torchvision or timm), so a reference ``state_dict`` loads with ``strict=True``.
"""

# importing the families registers their builders
from . import (  # noqa: E402, F401
    classification,
    detection,
    segmentation,
    vision_language,  # CLIP, BLIP
    yolo,  # YOLOv5/v7/v8
)
from ._registry import get_model, get_model_builder, list_models, register_model
from .classification import *  # noqa: E402, F401, F403
from .detection import *  # noqa: E402, F401, F403
from .segmentation import *  # noqa: E402, F401, F403

__all__ = [
    "classification",
    "detection",
    "segmentation",
    "vision_language",
    "yolo",
    "get_model",
    "get_model_builder",
    "list_models",
    "register_model",
]
