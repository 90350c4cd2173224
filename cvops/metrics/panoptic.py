"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019) through torchmetrics'
``PanopticQuality``: this module only converts the COCO panoptic convention (an id map and its
``segments_info``) into the ``(category_id, instance_id)`` pixel pairs torchmetrics takes, and
splits its per-class numbers into all / things / stuff averages.

PQ = sum of the matched segments' IoU / (TP + FP/2 + FN/2) per class (a match: same class,
IoU > 0.5), SQ = the mean IoU of the matches, RQ = TP / (TP + FP/2 + FN/2); the averages run
over the classes that occur (TP + FP + FN > 0). As in panopticapi, unlabeled ground-truth
pixels (id 0, or an id without a segment) are void: they are left out of the unions, and a
predicted segment lying more than half on them is ignored. Ground-truth crowd segments
(``iscrowd=1``) are treated as void too (torchmetrics has no crowd regions; panopticapi ignores
only same-class predictions on them: a small deviation).

Unlabeled *predicted* pixels must not be void for torchmetrics: it would then also skip the
false negatives of ground-truth segments that the prediction leaves mostly unlabeled (a model
that labels nothing would score no FN at all; panopticapi counts them). They get an extra stuff
category of their own, which no ground truth has and which is left out of every average.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

PanopticPrediction = Tuple[Tensor, List[dict]]  # (id map [H, W], segments_info)
VOID_CATEGORY = -1  # a category in neither things nor stuff: torchmetrics' void


def panoptic_to_pairs(
    ids: Tensor,
    segments_info: Sequence[dict],
    crowd_as_void: bool = True,
    unlabeled: int = VOID_CATEGORY,
) -> Tensor:
    """int64 ``[H, W, 2]`` ``(category_id, segment_id)`` per pixel of a COCO panoptic id map:
    pixels without a segment (and crowd segments when ``crowd_as_void``) get
    ``(unlabeled, 0)``."""
    if ids.dim() != 2:
        raise ValueError("ids must be an [H, W] id map, got shape %s" % (tuple(ids.shape),))
    ids = ids.to(torch.int64)
    category = torch.full_like(ids, unlabeled)
    instance = torch.zeros_like(ids)
    for seg in segments_info:
        if crowd_as_void and seg.get("iscrowd", 0):
            continue
        mask = ids == int(seg["id"])
        category[mask] = int(seg["category_id"])
        instance[mask] = int(seg["id"])
    return torch.stack((category, instance), -1)


def relabel_segments(segments_info: Sequence[dict], category_map: Dict[int, int]) -> List[dict]:
    """Copies of ``segments_info`` with ``category_id`` mapped through ``category_map`` (e.g. a
    model's unified labels to a dataset's category ids, ``CocoPanoptic.coco_id``)."""
    out = []
    for seg in segments_info:
        cat = int(seg["category_id"])
        if cat not in category_map:
            raise ValueError("segment %s has category %d, not in category_map" % (seg["id"], cat))
        out.append(dict(seg, category_id=category_map[cat]))
    return out


class PanopticEvaluator:
    """Accumulates PQ/SQ/RQ over images with ``torchmetrics.detection.PanopticQuality``.

    ``things`` / ``stuffs``: the category ids. :meth:`update` takes lists of predictions and
    ground truths, each ``(id map [H, W], segments_info)`` (or a dict with ``panoptic_seg`` /
    ``panoptic`` and ``segments_info``). :meth:`compute` returns ``PQ``, ``SQ``, ``RQ`` and the
    same for things (``PQ_th``...) and stuff (``PQ_st``...), the per-class ``PQ`` as
    ``per_class`` ({category id: PQ}), and ``num_images``; under ``torch.distributed`` it sums
    the counts of every process first (so every process gets the same numbers)."""

    def __init__(self, things: Sequence[int], stuffs: Sequence[int]):
        from torchmetrics.detection import PanopticQuality

        self.things, self.stuffs = sorted(int(c) for c in things), sorted(int(c) for c in stuffs)
        if not self.things and not self.stuffs:
            raise ValueError("things and stuffs are both empty")
        # the predictions' unlabeled pixels (module docstring): sorts last among the stuff
        self.unlabeled = max(self.things + self.stuffs) + 1
        # per class (things, then stuff, each sorted) x (PQ, SQ, RQ); synced by hand in
        # compute so that the TP/FP/FN counts read there are the global ones
        self.metric = PanopticQuality(
            self.things,
            self.stuffs + [self.unlabeled],
            allow_unknown_preds_category=False,
            return_sq_and_rq=True,
            return_per_class=True,
            sync_on_compute=False,
        )
        self.num_images = 0

    @staticmethod
    def _pair(item, key: str) -> PanopticPrediction:
        if isinstance(item, dict):
            return item[key], item["segments_info"]
        ids, segments = item
        return ids, segments

    def update(self, predictions: Sequence, targets: Sequence) -> None:
        if len(predictions) != len(targets):
            raise ValueError("%d predictions for %d targets" % (len(predictions), len(targets)))
        for pred, target in zip(predictions, targets):
            pred_ids, pred_segments = self._pair(pred, "panoptic_seg")
            gt_ids, gt_segments = self._pair(target, "panoptic")
            if pred_ids.shape != gt_ids.shape:
                raise ValueError(
                    "prediction %s and ground truth %s id maps differ in size"
                    % (tuple(pred_ids.shape), tuple(gt_ids.shape))
                )
            preds = panoptic_to_pairs(pred_ids.cpu(), pred_segments, False, self.unlabeled)
            gts = panoptic_to_pairs(gt_ids.cpu(), gt_segments, crowd_as_void=True)
            self.metric.update(preds[None], gts[None])
            self.num_images += 1

    def compute(self, device: Optional[torch.device] = None) -> Dict[str, object]:
        metric = self.metric
        if device is not None and torch.distributed.is_initialized():
            metric = metric.to(device)  # nccl reduces CUDA tensors only
        with metric.sync_context(should_sync=True, should_unsync=True):
            per_class = metric.compute().double().cpu()  # [C, 3]: PQ, SQ, RQ
            counts = metric.true_positives + metric.false_positives + metric.false_negatives
            seen = (counts > 0).cpu()
        seen[-1] = False  # the unlabeled predictions' category
        n = torch.tensor([float(self.num_images)], dtype=torch.float64)
        if torch.distributed.is_initialized():
            n = n.to(device or "cpu")
            torch.distributed.all_reduce(n)
        is_thing = torch.arange(len(per_class)) < len(self.things)
        out: Dict[str, object] = {"num_images": int(n.item())}
        for suffix, subset in (("", seen), ("_th", seen & is_thing), ("_st", seen & ~is_thing)):
            for i, name in enumerate(("PQ", "SQ", "RQ")):
                values = per_class[subset, i]
                out[name + suffix] = float(values.mean()) if len(values) else float("nan")
        ids = self.things + self.stuffs
        out["per_class"] = {
            ids[c]: float(per_class[c, 0]) for c in range(len(ids)) if bool(seen[c])
        }
        return out
