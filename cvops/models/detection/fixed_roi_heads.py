"""Fast R-CNN box detections with fixed shapes, from a built ``RoIHeads`` (its pooler, box
head, predictor, coder and thresholds, no copies).

- RoI pooling: ``MultiScaleRoIAlign`` picks each box's FPN level with ``torch.where`` and
  pools each level's boxes separately (data-dependent sizes). Here every level pools every
  box and a per-box level mask selects the result: the same ``roi_align`` values (a RoI's
  output does not depend on the other RoIs), at the cost of ``L`` times the pooling work.
- Postprocess: as ``RoIHeads.postprocess_detections``, with the score threshold, the
  small-box removal (1e-2) and the padding proposals as a validity mask, and per-class NMS
  as one ``nms_fixed`` per class on that class's column of ``P`` boxes (exact: no coordinate
  offsets, the same IoU as ``batched_nms``). The kept (box, class) candidates are ranked by
  score, ties by the regular path's candidate order (proposal-major), and the best
  ``max_detections`` returned. Nothing is capped that the regular path does not cap.
"""

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops import MultiScaleRoIAlign, clip_boxes_to_image, roi_align
from ...ops.poolers import infer_scale
from .fixed_ops import best_kept, nms_keep_mask, padded_detections, wide_enough
from .roi_heads import RoIHeads

MIN_BOX_SIZE = 1e-2  # RoIHeads.postprocess_detections' remove_small_boxes


def _fpn_levels(boxes: Tensor, k_min: int, k_max: int, pool: MultiScaleRoIAlign) -> Tensor:
    """``cvops.ops.poolers.map_levels`` with ``eps`` as a Python number instead of a
    ``torch.tensor``: the same float32 arithmetic, but no host-to-device copy per call, which a
    CUDA graph capture would reject."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = pool.canonical_level + torch.log2(torch.sqrt(area) / pool.canonical_scale)
    level = torch.nan_to_num(torch.floor(level + 1e-6), nan=float(k_min))
    return level.clamp(min=k_min, max=k_max).to(torch.int64) - k_min


def fixed_roi_align(
    pool: MultiScaleRoIAlign,
    features: Dict[str, Tensor],
    boxes: Tensor,
    image_size: Tuple[int, int],
) -> Tensor:
    """``pool(features, list(boxes), [image_size] * N)`` for ``boxes [N, P, 4]``, as
    ``[N * P, C, oh, ow]``, without data-dependent shapes."""
    feats = [v for k, v in features.items() if k in pool.featmap_names]
    if not feats:
        raise ValueError("none of the pooler's featmap_names %s is a feature" % pool.featmap_names)
    scales = [infer_scale(f.shape[-2:], image_size) for f in feats]
    n, p = boxes.shape[:2]
    image_index = torch.arange(n, dtype=boxes.dtype, device=boxes.device)
    rois = torch.cat([image_index.view(n, 1, 1).expand(n, p, 1), boxes], dim=2).reshape(-1, 5)
    kwargs = dict(sampling_ratio=pool.sampling_ratio, aligned=pool.aligned)
    if len(feats) == 1:
        return roi_align(feats[0], rois, pool.output_size, scales[0], **kwargs)
    k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
    levels = _fpn_levels(rois[:, 1:], k_min, k_max, pool).view(-1, 1, 1, 1)
    result = roi_align(feats[0], rois, pool.output_size, scales[0], **kwargs)
    for level in range(1, len(feats)):
        pooled = roi_align(feats[level], rois, pool.output_size, scales[level], **kwargs)
        result = torch.where(levels == level, pooled, result)
    return result


def fixed_box_detections(
    roi_heads: RoIHeads,
    features: Dict[str, Tensor],
    proposals: Tensor,
    counts: Tensor,
    image_size: Tuple[int, int],
    max_detections: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(boxes [N, D, 4], scores [N, D], labels [N, D], counts [N])`` in resized-image
    coordinates from ``proposals [N, P, 4]`` of which the first ``counts[i]`` are real."""
    n, p = proposals.shape[:2]
    pooled = fixed_roi_align(roi_heads.box_roi_pool, features, proposals, image_size)
    logits, regression = roi_heads.box_predictor(roi_heads.box_head(pooled))
    c = logits.shape[-1]
    boxes = roi_heads.box_coder.decode(regression, [proposals.reshape(-1, 4)]).view(n, p, c, 4)
    scores = F.softmax(logits, -1).view(n, p, c)
    real = torch.arange(p, device=counts.device)[None, :] < counts[:, None]
    per_class_max = min(max_detections, p)
    results = []
    for i in range(n):
        # the background column dropped; class-major so each class's boxes are contiguous
        boxes_i = clip_boxes_to_image(boxes[i], image_size)[:, 1:].transpose(0, 1).contiguous()
        scores_i = scores[i, :, 1:].t().contiguous()
        valid = real[i][None, :] & (scores_i > roi_heads.score_thresh)
        valid &= wide_enough(boxes_i, MIN_BOX_SIZE)
        keep = torch.stack(
            [
                nms_keep_mask(
                    boxes_i[k], scores_i[k], valid[k], roi_heads.nms_thresh, per_class_max
                )
                for k in range(c - 1)
            ]
        )
        # back to the regular path's candidate order, proposal-major: index p * (C - 1) + k
        flat_boxes = boxes_i.transpose(0, 1).reshape(-1, 4)
        flat_scores = scores_i.t().reshape(-1)
        flat_keep = keep.t().reshape(-1)
        labels = torch.arange(1, c, device=flat_scores.device).repeat(p)
        order, count = best_kept(flat_scores, flat_keep, max_detections)
        results.append(
            padded_detections(flat_boxes, flat_scores, labels, order, count, max_detections)
            + (count,)
        )
    return tuple(torch.stack(t) for t in zip(*results))
