"""RetinaNet detections with fixed shapes, from a built ``RetinaNet`` (its head, coder and
thresholds, no copies).

As ``RetinaNet.postprocess_detections``: per level, the ``topk_candidates`` best (anchor,
class) scores among those above ``score_thresh``, decoded and clipped; class-wise NMS; the
best ``max_detections``. Here the threshold is a mask (scores below it become -inf before the
same-sized ``topk``, and stay invalid), and class-wise NMS is one ``nms_fixed`` per class over
all candidates with the other classes' scores masked out (exact: no coordinate offsets).
Nothing is capped that the regular path does not cap. Equal scores: the regular path runs
``topk`` on the filtered scores, this one on the masked scores, and ``topk`` orders equal
values as it likes, so detections with exactly equal scores may come out in another order
(and, if they overlap, NMS may keep the other one).
"""

from typing import List, Tuple

import torch
from torch import Tensor

from ...ops import clip_boxes_to_image
from .fixed_ops import best_kept, nms_keep_mask, padded_detections
from .retinanet import RetinaNet


def _level_candidates(model: RetinaNet, logits: Tensor, deltas: Tensor, anchors: Tensor, size):
    """One image, one level: (boxes, scores, labels, valid) of its ``topk_candidates``."""
    num_classes = logits.shape[-1]
    scores = torch.sigmoid(logits).flatten()
    valid = scores > model.score_thresh
    k = min(model.topk_candidates, scores.shape[0])
    index = torch.where(valid, scores, float("-inf")).topk(k).indices
    anchor_index = torch.div(index, num_classes, rounding_mode="floor")
    boxes = model.box_coder.decode_single(deltas[anchor_index], anchors[anchor_index])
    boxes = clip_boxes_to_image(boxes, size)
    return boxes, scores[index], index % num_classes, valid[index]


def fixed_retinanet_detections(
    model: RetinaNet,
    features: List[Tensor],
    anchors: Tensor,
    image_size: Tuple[int, int],
    max_detections: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(boxes [N, D, 4], scores [N, D], labels [N, D], counts [N])`` in resized-image
    coordinates; ``anchors`` is one image's ``[sum HWA, 4]``."""
    head = model.head(features)
    cls_logits, regression = head["cls_logits"], head["bbox_regression"]
    num_classes = cls_logits.shape[-1]
    locations = [f.shape[-2] * f.shape[-1] for f in features]
    per_location = cls_logits.shape[1] // sum(locations)
    split = [c * per_location for c in locations]
    anchors_per_level = anchors.split(split)
    results = []
    for logits_i, deltas_i in zip(cls_logits, regression):
        per_level = [
            _level_candidates(model, lg, dl, an, image_size)
            for lg, dl, an in zip(logits_i.split(split), deltas_i.split(split), anchors_per_level)
        ]
        boxes, scores, labels, valid = (torch.cat(t) for t in zip(*per_level))
        per_class_max = min(max_detections, scores.shape[0])
        keep = torch.stack(
            [
                nms_keep_mask(boxes, scores, valid & (labels == k), model.nms_thresh, per_class_max)
                for k in range(num_classes)
            ]
        ).any(0)
        order, count = best_kept(scores, keep, max_detections)
        results.append(
            padded_detections(boxes, scores, labels, order, count, max_detections) + (count,)
        )
    return tuple(torch.stack(t) for t in zip(*results))
