"""COCO detection and instance segmentation evaluation through pycocotools' ``COCOeval``.

:class:`CocoEvaluator` takes the outputs of torchvision-style detectors (one dict per image with
``boxes`` xyxy, ``scores``, ``labels`` and optionally ``masks``), turns them into COCO results
(``[x, y, w, h]`` boxes, COCO category ids, masks thresholded at 0.5 and RLE-encoded) keyed by
image id, and returns the standard 12 numbers per IoU type. Under ``torch.distributed`` each
rank feeds its own images; :meth:`CocoEvaluator.evaluate` gathers the results on every rank,
rank 0 runs ``COCOeval`` and the numbers are broadcast back, so every rank returns the same.
"""

import copy
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from cvops.data.coco import category_maps, quiet_unless

__all__ = ["COCO_STAT_NAMES", "CocoEvaluator", "targets_as_outputs"]

# The order of COCOeval.stats for "bbox" and "segm".
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
IOU_TYPES = ("bbox", "segm")


def _image_id(item) -> int:
    if isinstance(item, Mapping):
        item = item["image_id"]
    return int(item.item() if isinstance(item, Tensor) else item)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CocoEvaluator:
    """Accumulates detections per image and evaluates them against a COCO ground truth.

    Args:
        coco_gt: a ``pycocotools.coco.COCO``, or a dataset with a ``.coco`` attribute (such as
            :class:`cvops.data.CocoDetection`, also through ``SeededTransform``).
        iou_types: ``"bbox"`` and/or ``"segm"``; ``None`` evaluates ``"bbox"``, and ``"segm"``
            too when the outputs carry masks.
        coco_id: contiguous label -> COCO category id (a dict or a callable); by default the
            dataset's ``coco_id``, else the sorted-category-id convention of
            :func:`cvops.data.coco.category_maps`.
        mask_threshold: mask probabilities above it are foreground.
        verbose: let pycocotools print (``COCOeval.summarize``'s table included).

    Use: ``update(outputs, targets)`` per batch (``targets`` the target dicts, or image ids),
    then ``evaluate()`` -> ``{"bbox": {"AP": ..., ...}, "segm": {...}}``; ``reset()`` between
    evaluations. Images fed twice (a padded ``DistributedSampler``) count once.
    """

    def __init__(
        self,
        coco_gt,
        iou_types: Optional[Sequence[str]] = None,
        coco_id=None,
        mask_threshold: float = 0.5,
        verbose: bool = False,
    ):
        dataset = coco_gt
        self.coco_gt = getattr(coco_gt, "coco", coco_gt)
        if coco_id is None:
            coco_id = getattr(dataset, "coco_id", None) or category_maps(self.coco_gt)[1]
        self.coco_id = coco_id
        if iou_types is not None:
            bad = [t for t in iou_types if t not in IOU_TYPES]
            if bad:
                raise ValueError("unknown IoU types %s (known: %s)" % (bad, IOU_TYPES))
            iou_types = tuple(iou_types)
        self.iou_types = iou_types
        self.mask_threshold, self.verbose = float(mask_threshold), verbose
        self.reset()

    def reset(self) -> None:
        """Forget every detection fed so far."""
        # image id -> {"bbox": [COCO results], "segm": [...]}
        self.results: Dict[int, Dict[str, List[dict]]] = {}
        self.saw_masks = False

    def _category(self, label: int) -> int:
        return int(self.coco_id(label) if callable(self.coco_id) else self.coco_id[label])

    def update(
        self, outputs: Sequence[Mapping[str, Tensor]], targets: Optional[Iterable] = None
    ) -> None:
        """Add one batch: ``outputs[i]`` are the detections of the image ``targets[i]`` (a
        target dict with ``image_id``, or the id itself). ``outputs`` may also be a dict
        ``{image_id: output}`` with ``targets`` left out."""
        if isinstance(outputs, Mapping):
            targets, outputs = list(outputs.keys()), list(outputs.values())
        if targets is None:
            raise ValueError("update() needs the image ids (targets) of the outputs")
        targets, outputs = list(targets), list(outputs)
        if len(targets) != len(outputs):
            raise ValueError("%d outputs for %d images" % (len(outputs), len(targets)))
        for target, output in zip(targets, outputs):
            image_id = _image_id(target)
            self.results[image_id] = self._convert(image_id, output)

    def _convert(self, image_id: int, output: Mapping[str, Tensor]) -> Dict[str, List[dict]]:
        info = self.coco_gt.imgs.get(image_id)
        if info is None:
            raise ValueError("image id %d is not in the ground truth" % image_id)
        boxes = output["boxes"].detach().float().cpu().reshape(-1, 4)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        scores = output["scores"].detach().float().cpu().tolist()
        categories = [self._category(int(k)) for k in output["labels"].detach().cpu().tolist()]
        results: Dict[str, List[dict]] = {
            "bbox": [
                {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                for b, s, c in zip(xywh, scores, categories)
            ]
        }
        masks = output.get("masks")
        if masks is not None:
            from pycocotools import mask as mask_utils

            self.saw_masks = True
            masks = masks.detach().cpu()
            if masks.dim() == 4:
                masks = masks[:, 0]
            size = (info["height"], info["width"])
            if tuple(masks.shape[-2:]) != size:
                raise ValueError(
                    "masks of image %d are %s but the image is %s: evaluate on images of "
                    "their original size (no resizing eval transform)"
                    % (image_id, tuple(masks.shape[-2:]), size)
                )
            if masks.dtype != torch.bool:
                masks = masks.float() > self.mask_threshold
            binary = np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0))
            rles = mask_utils.encode(binary) if len(categories) else []
            results["segm"] = [
                {
                    "image_id": image_id,
                    "category_id": c,
                    "segmentation": {"size": r["size"], "counts": r["counts"].decode("ascii")},
                    "score": s,
                }
                for r, s, c in zip(rles, scores, categories)
            ]
        return results

    def gather(self) -> Dict[int, Dict[str, List[dict]]]:
        """The results of every rank (this rank's alone without ``torch.distributed``)."""
        if not _distributed():
            return dict(self.results)
        import torch.distributed as dist

        parts: List[Optional[dict]] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.results, self.saw_masks))
        merged: Dict[int, Dict[str, List[dict]]] = {}
        for results, saw_masks in parts:
            merged.update(results)
            self.saw_masks = self.saw_masks or saw_masks
        return merged

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """``{iou_type: {"AP": ..., "AP50": ..., ..., "ARl": ...}}`` over the images fed so far
        (on all ranks together). Every rank must call it. Numbers are COCOeval's: -1 where
        there is nothing to score (e.g. no large objects)."""
        results = self.gather()
        stats: Optional[Dict[str, Dict[str, float]]] = None
        distributed = _distributed()
        if not distributed or torch.distributed.get_rank() == 0:
            stats = self._evaluate(results)
        if distributed:
            box = [stats]
            torch.distributed.broadcast_object_list(box, src=0)
            stats = box[0]
        return stats

    def _evaluate(self, results: Dict[int, Dict[str, List[dict]]]) -> Dict[str, Dict[str, float]]:
        iou_types = self.iou_types or (("bbox", "segm") if self.saw_masks else ("bbox",))
        image_ids = sorted(results)
        out = {}
        for iou_type in iou_types:
            if any(iou_type not in r for r in results.values()):
                raise ValueError("%s evaluation needs masks in every output" % iou_type)
            dets = [copy.deepcopy(d) for i in image_ids for d in results[i][iou_type]]
            out[iou_type] = self.run_cocoeval(dets, iou_type, image_ids)
        return out

    def run_cocoeval(
        self, detections: List[dict], iou_type: str, image_ids: Sequence[int]
    ) -> Dict[str, float]:
        """COCOeval on COCO-format ``detections`` (modified in place) restricted to
        ``image_ids``; the 12 numbers by name."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with quiet_unless(self.verbose):
            if detections:
                coco_dt = self.coco_gt.loadRes(detections)
            else:  # loadRes cannot take an empty list: an empty result set by hand
                coco_dt = COCO()
                coco_dt.dataset = {
                    "images": list(self.coco_gt.dataset["images"]),
                    "categories": copy.deepcopy(self.coco_gt.dataset["categories"]),
                    "annotations": [],
                }
                coco_dt.createIndex()
            evaluator = COCOeval(self.coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}


def targets_as_outputs(targets: Sequence[Mapping[str, Union[Tensor, int]]]) -> List[dict]:
    """Ground-truth targets dressed as detections (score 1, crowd regions left out): what a
    perfect detector would return; for checking an evaluation pipeline end to end."""
    outputs = []
    for t in targets:
        keep = t["iscrowd"] == 0 if "iscrowd" in t else slice(None)
        out = {
            "boxes": t["boxes"][keep],
            "labels": t["labels"][keep],
            "scores": torch.ones(len(t["labels"][keep])),
        }
        if "masks" in t:
            out["masks"] = t["masks"][keep]
        outputs.append(out)
    return outputs
