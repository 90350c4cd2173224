"""The standard merge of instance and semantic predictions into one panoptic map (Kirillov et
al., "Panoptic Feature Pyramid Networks", CVPR 2019, section 3, as detectron2's
``combine_semantic_and_instance_outputs`` does it):

1. instances in decreasing score order, those below ``score_thresh`` dropped; each instance's
   binary mask loses the pixels an earlier (higher-scoring) instance already holds, and the
   instance is dropped when more than ``overlap_thresh`` of its mask was taken that way;
2. the remaining pixels go to the stuff classes of the semantic prediction (its "things"
   class 0 is skipped), a stuff region being kept only if it covers at least ``stuff_area``
   pixels;
3. what is left is unlabeled (id 0).

The output follows the COCO panoptic convention: an int64 id map ``[H, W]`` (0 = unlabeled,
segment ids 1, 2, ... in placement order) and ``segments_info``, one dict per segment.
Category ids are the *unified contiguous labels*: things ``1..T`` (the detector's labels),
stuff ``T + j`` for semantic class ``j`` in ``1..S``.
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

Segment = Dict[str, object]


def _check_instances(masks: Tensor, scores: Tensor, labels: Tensor, size) -> Tensor:
    if masks.dim() == 4 and masks.shape[1] == 1:  # Mask R-CNN's [K, 1, H, W] probabilities
        masks = masks[:, 0]
    if masks.dim() != 3 or tuple(masks.shape[1:]) != tuple(size):
        raise ValueError(
            "masks must be [K, H, W] or [K, 1, H, W] with (H, W) = the semantic map's %s, "
            "got %s" % (tuple(size), tuple(masks.shape))
        )
    k = masks.shape[0]
    if scores.shape != (k,) or labels.shape != (k,):
        raise ValueError(
            "scores and labels must be [K] with K = %d masks, got %s and %s"
            % (k, tuple(scores.shape), tuple(labels.shape))
        )
    return masks


def merge_panoptic(
    masks: Tensor,
    scores: Tensor,
    labels: Tensor,
    semantic: Tensor,
    num_things: int,
    score_thresh: float = 0.5,
    overlap_thresh: float = 0.5,
    stuff_area: int = 4096,
    mask_thresh: float = 0.5,
) -> Tuple[Tensor, List[Segment]]:
    """Merge one image's instances and semantic labels (see the module docstring).

    Args:
        masks: ``[K, H, W]`` (or Mask R-CNN's ``[K, 1, H, W]``) instance masks, probabilities
            (thresholded at ``mask_thresh``) or bool.
        scores, labels: ``[K]`` instance scores and thing labels ``1..num_things``.
        semantic: ``[H, W]`` int semantic labels: 0 = "things", ``j >= 1`` stuff class ``j``
            (the argmax of the semantic head).
        num_things: ``T``; stuff class ``j`` becomes category ``T + j``.

    Returns:
        ``(panoptic, segments_info)``: int64 ``[H, W]`` segment ids (0 unlabeled) and a list
        of ``{"id", "category_id", "isthing", "area", "iscrowd": 0}`` (things also ``"score"``).
    """
    if semantic.dim() != 2:
        raise ValueError("semantic must be [H, W] labels, got %s" % (tuple(semantic.shape),))
    if semantic.is_floating_point():
        raise TypeError("semantic must hold integer labels (argmax), got %s" % semantic.dtype)
    if not (0.0 <= overlap_thresh <= 1.0):
        raise ValueError("overlap_thresh must be in [0, 1], got %s" % overlap_thresh)
    masks = _check_instances(masks, scores, labels, semantic.shape)
    binary = masks > mask_thresh if masks.is_floating_point() else masks.bool()
    panoptic = torch.zeros(semantic.shape, dtype=torch.int64, device=semantic.device)
    segments: List[Segment] = []

    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        score = float(scores[i])
        if score < score_thresh:
            break  # sorted: every later instance scores lower
        mask = binary[i]
        area = int(mask.sum())
        if area == 0:
            continue
        taken = mask & (panoptic > 0)
        if int(taken.sum()) / area > overlap_thresh:
            continue
        mask = mask & ~taken
        segment_id = len(segments) + 1
        panoptic[mask] = segment_id
        segments.append(
            {
                "id": segment_id,
                "category_id": int(labels[i]),
                "isthing": True,
                "score": score,
                "area": int(mask.sum()),
                "iscrowd": 0,
            }
        )

    free = panoptic == 0
    for stuff in torch.unique(semantic).tolist():
        if stuff <= 0:  # 0 is the semantic head's "things" class (negative: none)
            continue
        mask = free & (semantic == stuff)
        area = int(mask.sum())
        if area < stuff_area or area == 0:
            continue
        segment_id = len(segments) + 1
        panoptic[mask] = segment_id
        segments.append(
            {
                "id": segment_id,
                "category_id": int(num_things) + int(stuff),
                "isthing": False,
                "area": area,
                "iscrowd": 0,
            }
        )
    return panoptic, segments
