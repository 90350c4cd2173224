"""The RPN's proposals with fixed shapes, from a built ``RegionProposalNetwork`` (its head,
box coder, top-n and thresholds, no copies).

Same steps as ``RegionProposalNetwork.filter_proposals`` in evaluation mode: the per-level
top ``pre_nms_top_n`` (the same ``topk`` call), sigmoid, clip, then the small-box and score
filters become a validity mask, NMS per level is one ``nms_fixed`` per level on its slice
(the levels are contiguous after the top-n), and the ``post_nms_top_n`` best kept boxes are
ranked like ``batched_nms`` ranks them. The regular path keeps at most ``post_nms_top_n``
proposals too, so there is no extra cap: the first ``count`` proposals equal the regular
ones, in the same order.
"""

from typing import List, Tuple

import torch
from torch import Tensor

from ...ops import clip_boxes_to_image
from .fixed_ops import best_kept, nms_keep_mask, wide_enough
from .rpn import RegionProposalNetwork, concat_box_prediction_layers


def fixed_proposals(
    rpn: RegionProposalNetwork,
    features: List[Tensor],
    anchors: Tensor,
    image_size: Tuple[int, int],
) -> Tuple[Tensor, Tensor]:
    """``(proposals [N, P, 4], counts [N])`` for a batch whose images all have the resized
    size ``image_size`` (h, w); ``anchors`` is one image's ``[sum HWA, 4]`` (all images share
    them). ``P = min(post_nms_top_n, sum of the per-level top-n)``; rows from ``counts[i]`` on
    are padding (finite boxes, to be masked by the caller)."""
    objectness, deltas = rpn.head(features)
    n = features[0].shape[0]
    per_level = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas, [anchors] * n).view(n, -1, 4)
    objectness = objectness.reshape(n, -1)
    top = rpn._top_n_per_level(objectness, per_level)
    rows = torch.arange(n, device=top.device)[:, None]
    probs, boxes = torch.sigmoid(objectness[rows, top]), proposals[rows, top]
    level_sizes = [min(rpn.pre_nms_top_n(), c) for c in per_level]
    post = min(rpn.post_nms_top_n(), sum(level_sizes))
    out_boxes, counts = [], []
    for boxes_i, probs_i in zip(boxes, probs):
        boxes_i = clip_boxes_to_image(boxes_i, image_size)
        valid = wide_enough(boxes_i, rpn.min_size) & (probs_i >= rpn.score_thresh)
        keep = torch.cat(
            [
                nms_keep_mask(b, s, v, rpn.nms_thresh, min(post, b.shape[0]))
                for b, s, v in zip(
                    boxes_i.split(level_sizes), probs_i.split(level_sizes), valid.split(level_sizes)
                )
            ]
        )
        order, count = best_kept(probs_i, keep, post)
        out_boxes.append(boxes_i[order])
        counts.append(count)
    return torch.stack(out_boxes), torch.stack(counts)
