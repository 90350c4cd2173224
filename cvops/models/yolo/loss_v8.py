"""The YOLOv8 detection loss: task-aligned assignment, then CIoU + DFL on the positive
cells' boxes and BCE on every cell's class scores, each normalised by the sum of the soft
class targets and weighted by the gains ``box`` 7.5, ``cls`` 0.5, ``dfl`` 1.5.

The losses are per image: ultralytics' ``v8DetectionLoss`` returns them times the batch size.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops.iou_losses import complete_box_iou_loss
from .anchor_points import boxes_to_distances, distances_to_boxes, make_anchor_points
from .assigners import TaskAlignedAssigner, pad_targets

__all__ = ["YOLOv8Loss", "distribution_focal_loss"]


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """DFL (Li et al., 2020): cross-entropy of the bin distribution ``logits`` ``(n, 4, bins)``
    against a continuous ``target`` ``(n, 4)`` split between its two neighbouring bins in
    proportion to the distance; mean over the 4 sides, shape ``(n,)``."""
    bins = logits.shape[-1]
    target = target.clamp(0, bins - 1 - 0.01)
    left = target.long()
    w_left = left + 1 - target
    logp = F.log_softmax(logits, -1)
    lp_left = logp.gather(-1, left[..., None])[..., 0]
    lp_right = logp.gather(-1, (left + 1)[..., None])[..., 0]
    return -(lp_left * w_left + lp_right * (1 - w_left)).mean(-1)


class YOLOv8Loss:
    """Loss of a :class:`~cvops.models.yolo.yolov8.DFLDetect` head's raw training output."""

    def __init__(
        self,
        num_classes: int,
        reg_max: int = 16,
        strides=(8.0, 16.0, 32.0),
        box: float = 7.5,
        cls: float = 0.5,
        dfl: float = 1.5,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        min_gt_size: float = 0.0,
    ):
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.gains = {"box": box, "cls": cls, "dfl": dfl}
        self.assigner = TaskAlignedAssigner(num_classes, topk, alpha, beta, min_gt_size)

    def decode_distances(self, logits: Tensor) -> Tensor:
        """``(B, N, 4 * reg_max)`` logits -> expected distances ``(B, N, 4)`` (grid units)."""
        b, n, _ = logits.shape
        bins = torch.arange(self.reg_max, device=logits.device, dtype=logits.dtype)
        return logits.view(b, n, 4, self.reg_max).softmax(-1) @ bins

    def __call__(self, raw: Dict, targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """``raw``: the head's training output; ``targets``: per image ``boxes`` (xyxy in the
        input's pixels) and 0-based ``labels``. Returns ``loss_box``, ``loss_cls``,
        ``loss_dfl`` (gains applied)."""
        dist_logits = raw["boxes"].permute(0, 2, 1)  # (B, N, 4 * reg_max)
        cls_logits = raw["scores"].permute(0, 2, 1)  # (B, N, C)
        points, strides = make_anchor_points(
            raw["shapes"], self.strides, cls_logits.device, cls_logits.dtype
        )
        pred_boxes = distances_to_boxes(self.decode_distances(dist_logits), points)  # grid units
        gt_boxes, gt_labels, gt_mask = pad_targets(
            [t["boxes"] for t in targets], [t["labels"] for t in targets]
        )
        target_boxes, target_scores, fg, _ = self.assigner(
            cls_logits.detach().sigmoid(),
            pred_boxes.detach() * strides,
            points * strides,
            gt_labels,
            gt_boxes.to(cls_logits.dtype),
            gt_mask,
        )
        norm = target_scores.sum().clamp(min=1)
        loss_cls = F.binary_cross_entropy_with_logits(
            cls_logits, target_scores.to(cls_logits.dtype), reduction="sum"
        )
        # box losses on the positives, each weighted by its soft class target
        weight = target_scores.sum(-1)[fg]
        target_grid = (target_boxes / strides)[fg]
        loss_box = (complete_box_iou_loss(pred_boxes[fg], target_grid) * weight).sum()
        target_dist = boxes_to_distances(
            points.expand_as(pred_boxes[..., :2])[fg], target_grid, self.reg_max - 1 - 0.01
        )
        dfl = distribution_focal_loss(dist_logits[fg].view(-1, 4, self.reg_max), target_dist)
        loss_dfl = (dfl * weight).sum()
        g = self.gains
        return {
            "loss_box": loss_box / norm * g["box"],
            "loss_cls": loss_cls / norm * g["cls"],
            "loss_dfl": loss_dfl / norm * g["dfl"],
        }
