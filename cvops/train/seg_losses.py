"""Segmentation losses by name (``--loss``), all honouring ``ignore_index``.

Multi-class (logits ``[N, C, H, W]``, integer targets ``[N, H, W]``):

* ``ce``: ``F.cross_entropy(ignore_index=...)`` (mean over non-ignored pixels);
* ``dice``: ``cvops.dice_loss(mode="multiclass")``;
* ``focal``: ``cvops.softmax_focal_loss`` (mean over non-ignored pixels);
* ``dice_focal``: ``cvops.dice_focal_loss(mode="multiclass")`` (both terms from one pass).

Binary (logits ``[N, 1, H, W]``, targets ``[N, H, W]`` with 0/1 and ``ignore_index``):

* ``ce``: BCE-with-logits averaged over non-ignored pixels;
* ``dice``/``dice_focal``: ``cvops.dice_loss``/``cvops.dice_focal_loss(mode="binary")``;
* ``focal``: ``cvops.sigmoid_focal_loss`` averaged over non-ignored pixels.

Losses are computed in float32 (logits from an autocast region are cast up first).
"""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.losses import dice_focal_loss, dice_loss, sigmoid_focal_loss, softmax_focal_loss

LOSSES = ("ce", "dice", "focal", "dice_focal")


def _masked_mean(loss: Tensor, valid: Tensor) -> Tensor:
    # Mean over valid pixels; 0 (with a gradient path) when none is valid. A select, not
    # loss * valid: an ignored pixel's NaN or infinite logit must not make 0 * inf = NaN.
    kept = torch.where(valid, loss, torch.zeros_like(loss))
    return kept.sum() / valid.sum().clamp_min(1).to(loss.dtype)


def _valid_logits(logits: Tensor, valid: Tensor) -> Tensor:
    # Ignored pixels' logits replaced by 0 before the loss: selecting the loss afterwards
    # keeps the value finite, but the backward of BCE at a NaN logit is 0 * NaN = NaN.
    x = logits[:, 0]
    return torch.where(valid, x, torch.zeros_like(x))


def _binary_ce(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    valid = target != ignore_index
    t = (target == 1).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(_valid_logits(logits, valid), t, reduction="none")
    return _masked_mean(loss, valid)


def _binary_focal(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    valid = target != ignore_index
    t = (target == 1).to(logits.dtype)
    loss = sigmoid_focal_loss(_valid_logits(logits, valid), t, reduction="none")
    return _masked_mean(loss, valid)


def _binary_target(target: Tensor, ignore_index: int) -> Tensor:
    # The binary Dice kernels read float targets: 0/1, ignore_index kept as it is.
    return target.unsqueeze(1).float()


def build_loss(name: str, binary: bool = False, ignore_index: int = 255) -> Callable:
    """``loss(logits, target) -> scalar`` for ``name`` in :data:`LOSSES`."""
    if name not in LOSSES:
        raise ValueError("unknown loss %r; choose from %s" % (name, ", ".join(LOSSES)))
    ii = int(ignore_index)
    if binary:
        table = {
            "ce": lambda x, t: _binary_ce(x, t, ii),
            "focal": lambda x, t: _binary_focal(x, t, ii),
            "dice": lambda x, t: dice_loss(x, _binary_target(t, ii), "binary", ignore_index=ii),
            "dice_focal": lambda x, t: dice_focal_loss(
                x, _binary_target(t, ii), "binary", ignore_index=ii
            ),
        }
    else:
        table = {
            "ce": lambda x, t: F.cross_entropy(x, t, ignore_index=ii),
            "focal": lambda x, t: softmax_focal_loss(x, t, ignore_index=ii),
            "dice": lambda x, t: dice_loss(x, t, "multiclass", ignore_index=ii),
            "dice_focal": lambda x, t: dice_focal_loss(x, t, "multiclass", ignore_index=ii),
        }
    fn = table[name]

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return fn(logits.float(), target)

    loss.__name__ = "%s_loss" % name
    return loss


__all__ = ["LOSSES", "build_loss"]
