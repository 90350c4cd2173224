"""The YOLOv5 detection loss. Positives come from :func:`match_anchors` (anchor shape ratio
below ``anchor_t``, own and two neighbouring cells); on them a CIoU box loss and a class BCE
(means); objectness is a BCE over every anchor of every cell whose target is the positive's
(detached, clamped) IoU, 0 elsewhere, weighted per level by ``balance`` (4, 1, 0.4: the fine
level has many more easy negatives).

Gains as the reference's training: ``box`` 0.05, ``obj`` 1.0 x (image size / 640)^2, ``cls``
0.5 x classes / 80 (for three levels). The losses are per image: the reference returns
their sum times the batch size.
"""

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops.iou_losses import complete_box_iou_loss
from .assigners import match_anchors

__all__ = ["YOLOv5Loss"]


def _cxcywh_to_xyxy(b: Tensor) -> Tensor:
    return torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1)


class YOLOv5Loss:
    """Loss of an :class:`~cvops.models.yolo.common.AnchorDetect` head's raw training output
    (``[(B, A, ny, nx, 5 + C)]`` per level); ``anchors`` ``(L, A, 2)`` in grid units."""

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[float] = (8.0, 16.0, 32.0),
        image_size: int = 640,
        box: float = 0.05,
        obj: float = 1.0,
        cls: float = 0.5,
        anchor_t: float = 4.0,
        balance: Sequence[float] = (4.0, 1.0, 0.4),
        scale_gains: bool = True,
    ):
        self.num_classes, self.strides, self.anchor_t = num_classes, tuple(strides), anchor_t
        self.balance = tuple(balance)
        if scale_gains:  # the reference training script's adjustment to classes and size
            levels = 3 / len(self.strides)
            box, cls = box * levels, cls * num_classes / 80 * levels
            obj = obj * (image_size / 640) ** 2 * levels
        self.gains = {"box": box, "obj": obj, "cls": cls}

    def targets_tensor(self, targets: List[Dict[str, Tensor]], device) -> Tensor:
        """``(T, 6)`` rows ``(image, class, cx, cy, w, h)`` in pixels."""
        rows = []
        for i, t in enumerate(targets):
            b = t["boxes"].float()
            cxcywh = torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), 1)
            img = torch.full((len(b), 1), float(i), device=b.device)
            rows.append(torch.cat((img, t["labels"].float()[:, None], cxcywh), 1))
        return torch.cat(rows).to(device) if rows else torch.zeros(0, 6, device=device)

    def __call__(
        self, raw: List[Tensor], anchors: Tensor, targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        device = raw[0].device
        rows = self.targets_tensor(targets, device)
        zero = raw[0].sum() * 0  # keeps every loss in the graph
        loss_box, loss_obj, loss_cls = zero, zero, zero
        for level, p in enumerate(raw):
            stride = self.strides[level]
            t = rows.clone()
            t[:, 2:] = t[:, 2:] / stride
            b, a, gj, gi, tbox, tcls = match_anchors(
                t, anchors[level], tuple(p.shape[2:4]), self.anchor_t
            )
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=device)
            if len(b):
                pos = p[b, a, gj, gi]
                pxy = pos[:, :2].sigmoid() * 2 - 0.5
                pwh = (pos[:, 2:4].sigmoid() * 2) ** 2 * anchors[level][a]
                ciou_loss = complete_box_iou_loss(
                    _cxcywh_to_xyxy(torch.cat((pxy, pwh), 1)), _cxcywh_to_xyxy(tbox)
                )
                loss_box = loss_box + ciou_loss.mean()
                iou = (1 - ciou_loss).detach().clamp(min=0).to(tobj.dtype)
                tobj[b, a, gj, gi] = iou  # a cell matched twice keeps the last
                if self.num_classes > 1:  # one class: objectness says it all
                    onehot = torch.zeros_like(pos[:, 5:])
                    onehot[torch.arange(len(b), device=device), tcls] = 1.0
                    loss_cls = loss_cls + F.binary_cross_entropy_with_logits(pos[:, 5:], onehot)
            loss_obj = (
                loss_obj
                + F.binary_cross_entropy_with_logits(p[..., 4], tobj) * (self.balance[level])
            )
        g = self.gains
        return {
            "loss_box": loss_box * g["box"],
            "loss_obj": loss_obj * g["obj"],
            "loss_cls": loss_cls * g["cls"],
        }
