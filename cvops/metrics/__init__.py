"""Evaluation metrics for the cvops tasks."""

from .coco import COCO_STAT_NAMES, CocoEvaluator, targets_as_outputs
from .panoptic import PanopticEvaluator, panoptic_to_pairs, relabel_segments
from .segmentation import ConfusionMatrix, confusion_matrix, logits_to_labels, metrics_from_matrix

__all__ = [
    "COCO_STAT_NAMES",
    "CocoEvaluator",
    "targets_as_outputs",
    "PanopticEvaluator",
    "panoptic_to_pairs",
    "relabel_segments",
    "ConfusionMatrix",
    "confusion_matrix",
    "logits_to_labels",
    "metrics_from_matrix",
]
