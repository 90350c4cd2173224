"""Fixed-size building blocks of the exportable detectors (``export.py``): NMS as a keep-mask
over a fixed candidate set (``cvops.nms_fixed``), the ranking of what was kept, and padded
outputs. Nothing here has a shape that depends on the data, and nothing synchronises with the
host, so the callers can be exported, compiled with ``fullgraph=True`` and CUDA-graph captured.

Ranking rule, shared with ``cvops.nms``/``batched_nms`` and the regular detectors: score
descending, then index ascending. Candidates are kept in the regular path's order, so equal
scores resolve as they do there.
"""

from typing import Tuple

import torch
from torch import Tensor

from ...ops import nms_fixed

PAD_LABEL = -1  # label of the padding rows (boxes and scores are 0 there)


def wide_enough(boxes: Tensor, min_size: float) -> Tensor:
    """Mask form of ``remove_small_boxes``: width and height both ``>= min_size``."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size
    )


def indices_to_mask(indices: Tensor, size: int) -> Tensor:
    """Bool ``[size]`` mask of ``indices`` (``nms_fixed``'s -1 padding ignored)."""
    slot = torch.where(indices >= 0, indices, size)  # the padding goes to a spare slot
    mask = torch.zeros(size + 1, dtype=torch.bool, device=indices.device)
    return mask.index_fill(0, slot, True)[:size]


def nms_keep_mask(
    boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float, max_output: int
) -> Tensor:
    """Bool ``[K]`` mask of the boxes greedy NMS keeps among the ``valid`` ones, at most the
    ``max_output`` best ranked. Invalid boxes get a NaN score, which ``nms_fixed`` drops: they
    are neither kept nor suppress anything, as if they had been filtered out beforehand."""
    masked = torch.where(valid, scores, float("nan"))
    indices, _ = nms_fixed(boxes, masked, iou_threshold, max_output)
    return indices_to_mask(indices, scores.shape[0])


def best_kept(scores: Tensor, keep: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """``(order, count)``: indices of the ``min(k, K)`` best entries by (score desc, index
    asc), the kept ones first, and ``count = min(keep.sum(), k)`` (0-d int64). A stable sort,
    not ``topk``, so that equal scores keep the index order NMS ranked them in."""
    ranked = torch.where(keep, scores, float("-inf"))
    order = torch.sort(ranked, descending=True, stable=True).indices[:k]
    return order, keep.sum().clamp(max=k)


def padded_detections(
    boxes: Tensor, scores: Tensor, labels: Tensor, order: Tensor, count: Tensor, k: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """``boxes[order]``, ``scores[order]``, ``labels[order]`` as ``[k, 4]``, ``[k]``, ``[k]``:
    rows from ``count`` on (and beyond ``len(order)``) are padding (0, 0, ``PAD_LABEL``)."""
    short = k - order.shape[0]
    if short > 0:  # fewer candidates than k: point the missing rows at row 0, masked below
        order = torch.cat([order, order.new_zeros(short)])
    real = torch.arange(k, device=order.device) < count
    return (
        torch.where(real[:, None], boxes[order], 0.0),
        torch.where(real, scores[order], 0.0),
        torch.where(real, labels[order], PAD_LABEL),
    )
