"""Positive-sample assignment of the YOLO losses.

* :class:`TaskAlignedAssigner` (TOOD, Feng et al. 2021; YOLOv8): a ground truth's positives
  are the ``topk`` cells whose centres lie inside it, ranked by the alignment
  ``score^alpha * CIoU^beta`` of the cell's current prediction; a cell claimed by several
  ground truths keeps the one its predicted box overlaps most. The soft class target is the
  alignment, rescaled per ground truth so its best cell gets that cell's IoU.
* :func:`match_anchors` (YOLOv5): a ground truth matches an anchor of a level when their
  width and height ratios are within ``anchor_t``; besides its own cell it is assigned to
  the two neighbouring cells nearest its centre.
"""

from typing import List, Tuple

import torch
from torch import Tensor

from ...ops.iou_losses import complete_box_iou_loss

__all__ = ["TaskAlignedAssigner", "match_anchors", "pad_targets"]


def pad_targets(boxes: List[Tensor], labels: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-image targets as padded ``(B, M, 4)`` boxes, ``(B, M)`` labels and ``(B, M)``
    validity mask, ``M`` the most boxes of any image."""
    m = max([len(b) for b in boxes] + [0])
    bs = len(boxes)
    device = boxes[0].device if bs else torch.device("cpu")
    out_boxes = torch.zeros(bs, m, 4, device=device)
    out_labels = torch.zeros(bs, m, dtype=torch.long, device=device)
    mask = torch.zeros(bs, m, dtype=torch.bool, device=device)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        n = len(b)
        out_boxes[i, :n] = b.float()
        out_labels[i, :n] = lab
        mask[i, :n] = True
    return out_boxes, out_labels, mask


class TaskAlignedAssigner:
    """Task-aligned assignment. ``min_gt_size`` > 0 first enlarges ground-truth sides below it
    (about the centre) so tiny objects still contain cell centres (recent ultralytics
    releases use the middle stride, 16; YOLOv8 as published used none)."""

    def __init__(
        self,
        num_classes: int,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        min_gt_size: float = 0.0,
        eps: float = 1e-9,
    ):
        self.num_classes, self.topk, self.alpha, self.beta = num_classes, topk, alpha, beta
        self.min_gt_size, self.eps = min_gt_size, eps

    def centres_inside(self, points: Tensor, gt_boxes: Tensor) -> Tensor:
        """``(B, M, N)``: whether cell centre ``n`` lies strictly inside ground truth ``m``."""
        boxes = gt_boxes
        if self.min_gt_size > 0:
            centre = (boxes[..., :2] + boxes[..., 2:]) / 2
            half = (boxes[..., 2:] - boxes[..., :2]).clamp(min=self.min_gt_size) / 2
            boxes = torch.cat((centre - half, centre + half), -1)
        lo = points[None, None] - boxes[..., None, :2]
        hi = boxes[..., None, 2:] - points[None, None]
        return torch.cat((lo, hi), -1).amin(-1) > self.eps

    @torch.no_grad()
    def __call__(
        self,
        scores: Tensor,
        pred_boxes: Tensor,
        points: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        gt_mask: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Assign cells to ground truths.

        Args: ``scores`` ``(B, N, C)`` predicted probabilities, ``pred_boxes`` ``(B, N, 4)``
        and ``points`` ``(N, 2)`` in pixels, ground truths ``gt_labels`` ``(B, M)``,
        ``gt_boxes`` ``(B, M, 4)`` xyxy pixels, ``gt_mask`` ``(B, M)`` (padding False).

        Returns ``(target_boxes (B, N, 4), target_scores (B, N, C), fg_mask (B, N),
        target_gt_idx (B, N))``; ``target_scores`` is zero for background cells.
        """
        bs, n_cells, _ = scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return (
                torch.zeros_like(pred_boxes),
                torch.zeros_like(scores),
                torch.zeros(bs, n_cells, dtype=torch.bool, device=scores.device),
                torch.zeros(bs, n_cells, dtype=torch.long, device=scores.device),
            )
        candidate = self.centres_inside(points, gt_boxes) & gt_mask[..., None]  # (B, M, N)
        # alignment of every candidate (image, gt, cell) pair
        b_idx, g_idx, c_idx = candidate.nonzero(as_tuple=True)
        cls_score = scores[b_idx, c_idx, gt_labels[b_idx, g_idx]]
        ciou = 1 - complete_box_iou_loss(gt_boxes[b_idx, g_idx], pred_boxes[b_idx, c_idx])
        ciou = ciou.clamp(min=0).to(scores.dtype)
        overlaps = scores.new_zeros(bs, m, n_cells)
        align = scores.new_zeros(bs, m, n_cells)
        overlaps[b_idx, g_idx, c_idx] = ciou
        align[b_idx, g_idx, c_idx] = cls_score.pow(self.alpha) * ciou.pow(self.beta)
        # each ground truth's top-k cells (among its candidates: the metric is 0 elsewhere)
        top = align.topk(min(self.topk, n_cells), dim=-1).indices
        is_top = torch.zeros_like(candidate).scatter_(-1, top, True)
        positive = is_top & candidate  # (B, M, N)
        # a cell claimed by several ground truths keeps the best-overlapping one
        multi = positive.sum(1, keepdim=True) > 1
        best = torch.zeros_like(positive).scatter_(1, overlaps.argmax(1, keepdim=True), True)
        positive = torch.where(multi, best, positive)
        fg_mask = positive.any(1)
        gt_idx = positive.to(torch.uint8).argmax(1)  # (B, N)
        labels = gt_labels.gather(1, gt_idx)
        target_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))
        target_scores = torch.zeros_like(scores)
        target_scores.scatter_(2, labels[..., None], 1.0)
        target_scores *= fg_mask[..., None]
        # soft targets: alignment normalised so each gt's best cell scores its best IoU
        align = align * positive
        overlaps = overlaps * positive
        norm = align * overlaps.amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + self.eps)
        target_scores = target_scores * norm.amax(1)[..., None]
        return target_boxes, target_scores, fg_mask, gt_idx


# neighbour offsets (in cells) of match_anchors: own cell, left, up, right, down
_NEIGHBOURS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


def match_anchors(
    targets: Tensor, anchors: Tensor, grid_shape: Tuple[int, int], anchor_t: float = 4.0
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """YOLOv5 positives of one level.

    Args: ``targets`` ``(T, 6)`` rows ``(image, class, cx, cy, w, h)`` with the box in this
    level's grid units; ``anchors`` ``(A, 2)`` in grid units; ``grid_shape`` ``(ny, nx)``.

    A (target, anchor) pair matches when ``max(w / aw, aw / w, h / ah, ah / h) < anchor_t``.
    Each match is assigned to the cell holding the centre and to the horizontal and vertical
    neighbour nearest the centre (when the centre is in that half of its cell and the
    neighbour exists): three cells per match, which the ``2 sigmoid - 0.5`` centre decoding
    can reach. Order: anchor-major, then own cell, left, up, right, down neighbours.

    Returns ``(image, anchor, gj, gi, box, class)``: the cell indices of each positive and its
    target ``box`` ``(n, 4)`` = centre offset from the cell corner and ``w, h``.
    """
    ny, nx = grid_shape
    anchor_idx, t_idx = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if len(targets):
        ratio = targets[None, :, 4:6] / anchors[:, None]  # (A, T, 2)
        ok = torch.maximum(ratio, 1 / ratio).amax(-1) < anchor_t
        anchor_idx, t_idx = ok.nonzero(as_tuple=True)
    t = targets[t_idx]
    gxy = t[:, 2:4]
    gxy_inv = gxy.new_tensor([nx, ny]) - gxy
    near_low = (gxy % 1 < 0.5) & (gxy > 1)  # left (x), up (y) neighbour
    near_high = (gxy_inv % 1 < 0.5) & (gxy_inv > 1)  # right, down
    use = torch.stack(
        (
            torch.ones_like(near_low[:, 0]),
            near_low[:, 0],
            near_low[:, 1],
            near_high[:, 0],
            near_high[:, 1],
        )
    )  # (5, n)
    which, pos = use.nonzero(as_tuple=True)
    offsets = gxy.new_tensor(_NEIGHBOURS) * 0.5
    gxy_pos = gxy[pos]
    cell = (gxy_pos - offsets[which]).long()
    gi = cell[:, 0].clamp(0, nx - 1)
    gj = cell[:, 1].clamp(0, ny - 1)
    box = torch.cat((gxy_pos - torch.stack((gi, gj), 1), t[pos, 4:6]), 1)
    return t[pos, 0].long(), anchor_idx[pos], gj, gi, box, t[pos, 1].long()
