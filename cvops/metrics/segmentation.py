"""Semantic segmentation metrics from a confusion matrix accumulated on the device.

``matrix[t, p]`` counts the pixels of true class ``t`` predicted as ``p`` (pixels whose target is
``ignore_index`` are left out). From it, per class: ``IoU = TP / (TP + FP + FN)``,
``Dice = F1 = 2 TP / (2 TP + FP + FN)``, ``accuracy (recall) = TP / (TP + FN)``; and
``pixel accuracy = sum TP / sum matrix``. Means are over the classes whose denominator is not 0
(a class that neither occurs nor is predicted has no IoU and is left out of the mean).

Under ``torch.distributed`` (initialised), :meth:`ConfusionMatrix.compute` sums the matrices of
all processes first (one ``all_reduce`` of an int64 ``[C, C]`` tensor), so the metrics are those
of the whole evaluation set however it was split, provided each sample is seen by exactly one
process.
"""

from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch import Tensor


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int] = 255
) -> Tensor:
    """int64 ``[C, C]`` confusion matrix (rows: target, columns: prediction) of integer label
    tensors of the same shape, on their device. Targets outside ``[0, C)`` other than
    ``ignore_index`` raise ``ValueError`` (one host sync)."""
    if pred.shape != target.shape:
        raise ValueError(
            "pred %s and target %s must have the same shape"
            % (tuple(pred.shape), tuple(target.shape))
        )
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    bad = (t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            "labels outside [0, %d) (other than ignore_index=%r)" % (num_classes, ignore_index)
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def logits_to_labels(logits: Tensor, binary: bool = False) -> Tensor:
    """Predicted labels ``[N, H, W]`` from logits ``[N, C, H, W]``: argmax over classes, or
    ``logit > 0`` for binary logits ``[N, 1, H, W]``."""
    if binary:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def metrics_from_matrix(matrix: Tensor) -> Dict[str, object]:
    """Per-class IoU / Dice / accuracy (lists, NaN where undefined) and their means, pixel
    accuracy and frequency-weighted IoU, from a ``[C, C]`` confusion matrix."""
    m = matrix.double()
    tp = m.diag()
    gt = m.sum(1)  # TP + FN
    pr = m.sum(0)  # TP + FP
    total = m.sum()
    nan = torch.tensor(float("nan"), dtype=m.dtype, device=m.device)

    def ratio(num, den):
        return torch.where(den > 0, num / den.clamp_min(1e-300), nan)

    iou = ratio(tp, gt + pr - tp)
    dice = ratio(2 * tp, gt + pr)
    acc = ratio(tp, gt)
    freq = gt / total if total > 0 else gt * 0
    valid = ~iou.isnan()
    return {
        "miou": float(iou.nanmean()),
        "mean_dice": float(dice.nanmean()),
        "mean_class_acc": float(acc.nanmean()),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "fw_iou": float((freq[valid] * iou[valid]).sum()) if total > 0 else float("nan"),
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "class_acc": acc.tolist(),
        "pixels": int(total),
    }


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches on the device of the first update.

    ``update(pred, target)``: ``pred`` integer labels ``[N, H, W]``, or logits ``[N, C, H, W]``
    (argmax over dim 1), or for ``num_classes == 2`` with ``binary=True``, logits
    ``[N, 1, H, W]`` (foreground where > 0). ``compute()`` returns :func:`metrics_from_matrix`
    of the matrix summed over processes when torch.distributed is initialised.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255, binary: bool = False):
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2, got %d" % num_classes)
        self.num_classes, self.ignore_index, self.binary = num_classes, ignore_index, binary
        self.matrix: Optional[Tensor] = None

    def reset(self) -> None:
        self.matrix = None

    def labels(self, pred: Tensor) -> Tensor:
        """Integer labels from labels or logits (see the class docstring)."""
        return logits_to_labels(pred, self.binary) if pred.is_floating_point() else pred

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        m = confusion_matrix(self.labels(pred), target, self.num_classes, self.ignore_index)
        self.matrix = m if self.matrix is None else self.matrix + m.to(self.matrix.device)

    def reduced(self, device=None) -> Tensor:
        """The matrix summed over all processes (a copy; the local one is untouched)."""
        c = self.num_classes
        m = self.matrix
        if m is None:
            m = torch.zeros(c, c, dtype=torch.int64, device=device)
        m = m.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(m)
        return m

    def compute(self, device=None) -> Dict[str, object]:
        """Metrics of the (all-reduced) matrix. Every process must call it (collective).
        ``device``: where the empty matrix lives on a process that saw no batch (NCCL needs
        CUDA tensors)."""
        matrix = self.reduced(device)
        out = metrics_from_matrix(matrix)
        out["confusion_matrix"] = matrix.tolist()
        return out
