"""Argument helpers shared by the RoI ops (scriptable unless said otherwise)."""

from typing import List, Tuple, Union

import torch
from torch import Tensor

from ._errors import BoxesShapeError

# torchvision's annotation of the RoI ops' boxes (TorchScript has no Sequence).
BoxesArg = Union[Tensor, List[Tensor]]


def check_tensor(value, name: str) -> None:
    """TypeError naming the argument unless ``value`` is a Tensor (eager mode only)."""
    if not isinstance(value, Tensor):
        raise TypeError("%s must be a Tensor, got %s" % (name, type(value).__name__))


def pair(value, name: str) -> Tuple[int, int]:
    """An int or a pair of ints as (h, w); rejects anything else by name (eager mode only)."""
    if type(value) is int:  # the common case first: per-call overhead of small ops
        return value, value
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError("%s must be an int or a pair of ints, got %r" % (name, value))
        h, w = value
    else:
        h = w = value
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
            raise TypeError("%s must be an int or a pair of ints, got %r" % (name, value))
    return h, w


def boxes_to_rois(boxes: BoxesArg) -> Tensor:
    """torchvision's two box formats -> one [K, 5] tensor of (batch_index, x1, y1, x2, y2).

    ``boxes`` is either that tensor already, or a list with one [L_i, 4] tensor per image.
    A wrong shape raises :class:`BoxesShapeError` (a ValueError and an AssertionError, as
    torchvision asserts the shape).
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise BoxesShapeError(
                "boxes must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2) or a list of "
                "Tensor[L, 4], got a tensor of shape %s" % (list(boxes.shape),)
            )
        return boxes
    if not torch.jit.is_scripting():
        if not isinstance(boxes, (list, tuple)):
            raise TypeError(
                "boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got %s"
                % type(boxes).__name__
            )
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                raise TypeError("boxes[%d] must be a Tensor[L, 4], got %s" % (i, type(b).__name__))
    if len(boxes) == 0:
        raise BoxesShapeError("boxes is an empty list: pass one Tensor[L, 4] per image")
    parts: List[Tensor] = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.size(1) != 4:
            raise BoxesShapeError(
                "boxes[%d] must be a Tensor[L, 4] of (x1, y1, x2, y2), got shape %s"
                % (i, list(b.shape))
            )
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    return torch.cat(parts, dim=0)
