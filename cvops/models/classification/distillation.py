"""DeiT's distillation loss (Touvron et al. 2021, section 5).

``loss = (1 - alpha) * base_criterion(cls_logits, labels) + alpha * distill`` with

* ``type="soft"``: ``KL(log_softmax(dist / tau) || log_softmax(teacher / tau))`` summed, times
  ``tau ** 2``, divided by ``dist_logits.numel()``;
* ``type="hard"``: ``cross_entropy(dist_logits, teacher_logits.argmax(1))``;
* ``type="none"``: ``base_criterion(cls_logits, labels)`` alone (no teacher is run).

``outputs`` is the student's training-mode output ``(cls_logits, dist_logits)``; a plain
tensor is accepted only with ``type="none"``. The teacher runs under ``torch.no_grad()``
on ``inputs``.
"""

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

DISTILLATION_TYPES = ("none", "soft", "hard")


class DistillationLoss(nn.Module):
    def __init__(
        self,
        base_criterion: Callable[[Tensor, Tensor], Tensor],
        teacher: Optional[nn.Module],
        type: str = "none",
        alpha: float = 0.5,
        tau: float = 1.0,
    ):
        super().__init__()
        if type not in DISTILLATION_TYPES:
            raise ValueError("type must be one of %s, got %r" % (DISTILLATION_TYPES, type))
        if not callable(base_criterion):
            raise TypeError("base_criterion must be callable")
        if type != "none" and teacher is None:
            raise ValueError("type=%r needs a teacher model" % type)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError("alpha must be a float, got %s" % type_name(alpha))
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1], got %r" % (alpha,))
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError("tau must be a float, got %s" % type_name(tau))
        if not tau > 0:
            raise ValueError("tau must be > 0, got %r" % (tau,))
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.type = type
        self.alpha = float(alpha)
        self.tau = float(tau)

    def forward(
        self, inputs: Tensor, outputs: Union[Tensor, Tuple[Tensor, Tensor]], labels: Tensor
    ) -> Tensor:
        dist_logits = None
        if not isinstance(outputs, Tensor):
            if len(outputs) != 2:
                raise ValueError("outputs must be a tensor or a (cls_logits, dist_logits) pair")
            outputs, dist_logits = outputs
        base_loss = self.base_criterion(outputs, labels)
        if self.type == "none":
            return base_loss
        if dist_logits is None:
            raise ValueError(
                "type=%r needs the student's (cls_logits, dist_logits) pair: run a distilled "
                "DeiT in training mode" % self.type
            )
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        if self.type == "soft":
            t = self.tau
            distill = (
                F.kl_div(
                    F.log_softmax(dist_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                * (t * t)
                / dist_logits.numel()
            )
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distill * self.alpha


def type_name(x) -> str:
    return type(x).__name__
