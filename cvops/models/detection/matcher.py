"""Assigning ground truth to anchors or proposals (torchvision's ``Matcher``) and sampling a
balanced training batch from the assignment (``BalancedPositiveNegativeSampler``)."""

from typing import List, Tuple

import torch
from torch import Tensor


class Matcher:
    """Match each prediction (column of an ``[M gt, N pred]`` quality matrix, e.g. IoU) to
    its best ground truth.

    A prediction whose best quality is ``>= high_threshold`` gets that ground truth's index;
    below ``low_threshold`` it gets ``BELOW_LOW_THRESHOLD`` (-1, background); in between it
    gets ``BETWEEN_THRESHOLDS`` (-2, ignored). With ``allow_low_quality_matches`` every
    prediction that ties for the highest quality with some ground truth keeps its best
    match even below the thresholds (Faster R-CNN's rule that each ground truth gets at
    least one anchor).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ):
        if low_threshold > high_threshold:
            raise ValueError(
                "low_threshold (%s) must be <= high_threshold (%s)"
                % (low_threshold, high_threshold)
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        if match_quality_matrix.numel() == 0:
            what = "ground-truth boxes" if match_quality_matrix.shape[0] == 0 else "predictions"
            raise ValueError("no %s to match in one of the images during training" % what)
        best_quality, matches = match_quality_matrix.max(dim=0)
        best_matches = matches.clone() if self.allow_low_quality_matches else None
        matches[best_quality < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS
        if best_matches is not None:
            self.set_low_quality_matches_(matches, best_matches, match_quality_matrix)
        return matches

    @staticmethod
    def set_low_quality_matches_(matches: Tensor, best_matches: Tensor, quality: Tensor) -> None:
        """Restore the best match of every prediction that is (one of) the best for some
        ground truth, ties included."""
        best_per_gt = quality.max(dim=1).values
        preds = torch.where(quality == best_per_gt[:, None])[1]
        matches[preds] = best_matches[preds]


class BalancedPositiveNegativeSampler:
    """Per image, pick at most ``batch_size_per_image * positive_fraction`` positives
    (labels >= 1) and fill the batch with negatives (label 0); -1 is ignored. The choice is
    uniform (``torch.randperm``, positives first then negatives, per image: the same RNG
    calls as torchvision, so a seeded run samples the same anchors).

    Returns two lists of uint8 masks (positives, negatives), one per image."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError("positive_fraction must be in [0, 1], got %s" % positive_fraction)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, matched_idxs: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        pos_masks, neg_masks = [], []
        for labels in matched_idxs:
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
            neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[pos] = 1
            neg_mask[neg] = 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
