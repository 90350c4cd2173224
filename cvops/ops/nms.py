"""Non-maximum suppression: nms, batched_nms, nms_fixed and soft_nms.

``nms`` and ``batched_nms`` have torchvision's signatures and results. The kernels (CPU and
CUDA) share one IoU function with torchvision's formula, suppress a box when its IoU with a
kept, higher-ranked box is strictly greater than ``iou_threshold``, and rank boxes by
(score descending, index ascending), so tied scores keep the lower index first.
"""

from typing import Tuple

import torch
from torch import Tensor

from .. import extension
from ._errors import ArgumentError, call_op
from ._utils import check_tensor


def _threshold(value, name="iou_threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            return float(value)
        raise TypeError("%s must be a float, got %s" % (name, type(value).__name__))
    return float(value)


# Each function checks its arguments in eager mode (the branch TorchScript skips: it types
# the arguments itself) and calls the compiled op through call_op, which gives its argument
# errors torchvision's exception types too. torch.fx.wrap makes each a leaf of fx graphs.


@torch.fx.wrap
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, with the semantics of ``torchvision.ops.nms``.

    Args:
        boxes: ``Tensor[N, 4]`` of ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``
            (float32/float64/float16/bfloat16).
        scores: ``Tensor[N]``, same dtype and device as ``boxes``.
        iou_threshold: in ``[0, 1]``; a box is discarded when its IoU with a kept box of
            higher rank is ``> iou_threshold``.

    Returns:
        ``Tensor[K]`` int64 indices of the kept boxes, by decreasing score; equal scores keep
        the lower index first.

    Boxes with a NaN score are dropped. Non-finite coordinates or ``x2 < x1`` / ``y2 < y1``
    raise ``ValueError`` naming the box. No boxes give an empty int64 tensor. Shape, length
    and threshold errors are ``ValueError`` and ``RuntimeError`` (torchvision's type) at once,
    dtype errors ``TypeError`` and ``RuntimeError``.
    """
    if not torch.jit.is_scripting():
        extension.require_ops()
        check_tensor(boxes, "boxes")
        check_tensor(scores, "scores")
        return call_op(torch.ops.cvops.nms, boxes, scores, _threshold(iou_threshold))
    return torch.ops.cvops.nms(boxes, scores, iou_threshold)


@torch.fx.wrap
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category, with the semantics of ``torchvision.ops.batched_nms``.

    Boxes of different ``idxs`` never suppress each other. Unlike torchvision this uses no
    coordinate offsets and no per-class Python loop: it is exact for negative coordinates
    and for half/bfloat16 boxes. ``idxs`` is an integer tensor ``[N]``. Returns the kept
    indices by decreasing score (ties: lower index first). Empty ``boxes`` give an empty
    int64 tensor whatever the other arguments are, as in torchvision (which accepts
    ``batched_nms(empty, None, None, None)``).
    """
    if not torch.jit.is_scripting():
        extension.require_ops()
        check_tensor(boxes, "boxes")
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        check_tensor(scores, "scores")
        check_tensor(idxs, "idxs")
        threshold = _threshold(iou_threshold)
        return call_op(torch.ops.cvops.batched_nms, boxes, scores, idxs, threshold)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return torch.ops.cvops.batched_nms(boxes, scores, idxs, iou_threshold)


@torch.fx.wrap
def nms_fixed(
    boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int
) -> Tuple[Tensor, Tensor]:
    """NMS with a fixed-size output and no host synchronisation on CUDA.

    Returns ``(indices, num_kept)``: ``indices`` is ``Tensor[max_output]`` int64 holding the
    first ``num_kept`` kept indices (same order as :func:`nms`) followed by ``-1``;
    ``num_kept`` is a 0-d int64 tensor, ``min(len(nms(...)), max_output)``. Being free of
    data-dependent shapes and syncs, it can be captured in a CUDA graph and exported.

    It never inspects the data on the host: boxes with non-finite coordinates, ``x2 < x1``
    or ``y2 < y1``, or a NaN score are dropped instead of raising.
    """
    if not torch.jit.is_scripting():
        extension.require_ops()
        check_tensor(boxes, "boxes")
        check_tensor(scores, "scores")
        if isinstance(max_output, bool) or not isinstance(max_output, (int, torch.SymInt)):
            raise TypeError("max_output must be an int, got %s" % type(max_output).__name__)
        threshold = _threshold(iou_threshold)
        return call_op(torch.ops.cvops.nms_fixed, boxes, scores, threshold, max_output)
    return torch.ops.cvops.nms_fixed(boxes, scores, iou_threshold, max_output)


@torch.fx.wrap
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> Tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): decay the scores of overlapping boxes instead of
    discarding them.

    Repeatedly selects the box with the highest current score (ties: lower index) and
    multiplies the score of every remaining box by ``exp(-iou**2 / sigma)`` (``"gaussian"``)
    or, when ``iou > iou_threshold``, by ``1 - iou`` (``"linear"``; the gaussian method
    ignores ``iou_threshold``). Boxes whose score falls below ``score_threshold`` are removed.

    Returns ``(indices, decayed_scores)``: int64 indices of the kept boxes in selection order
    (non-increasing decayed score) and their scores at selection, in the dtype of ``scores``.
    """
    if method != "gaussian" and method != "linear":
        raise ArgumentError("method must be 'gaussian' or 'linear', got '%s'" % (method,))
    code = 1 if method == "gaussian" else 0
    if not torch.jit.is_scripting():
        extension.require_ops()
        check_tensor(boxes, "boxes")
        check_tensor(scores, "scores")
        return call_op(
            torch.ops.cvops.soft_nms,
            boxes,
            scores,
            _threshold(iou_threshold),
            _threshold(sigma, "sigma"),
            _threshold(score_threshold, "score_threshold"),
            code,
        )
    return torch.ops.cvops.soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, code)


def _register():
    def _check_fake(boxes, scores):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4, lambda: "boxes must be [N, 4]")
        torch._check(scores.dim() == 1, lambda: "scores must be [N]")
        torch._check(boxes.size(0) == scores.size(0), lambda: "boxes and scores lengths differ")

    def _dynamic_indices(boxes):
        n = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((n,), dtype=torch.int64), n

    @torch.library.register_fake("cvops::nms")
    def _nms_fake(boxes, scores, iou_threshold):
        _check_fake(boxes, scores)
        return _dynamic_indices(boxes)[0]

    @torch.library.register_fake("cvops::batched_nms")
    def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
        _check_fake(boxes, scores)
        return _dynamic_indices(boxes)[0]

    @torch.library.register_fake("cvops::nms_fixed")
    def _nms_fixed_fake(boxes, scores, iou_threshold, max_output):
        _check_fake(boxes, scores)
        return (
            boxes.new_empty((max_output,), dtype=torch.int64),
            boxes.new_empty((), dtype=torch.int64),
        )

    @torch.library.register_fake("cvops::soft_nms")
    def _soft_nms_fake(boxes, scores, iou_threshold, sigma, score_threshold, method):
        _check_fake(boxes, scores)
        idx, n = _dynamic_indices(boxes)
        return idx, scores.new_empty((n,))


if extension.has_ops():
    _register()
