"""The torchvision detector interface of the YOLO models, and its pre/post-processing.

``model(images)`` with a ``Tensor [B, 3, H, W]`` is the raw network (what the reference
implementations return: raw head outputs in training mode, ``(decoded, raw)`` in eval).
``model(list_of_images[, targets])`` is the interface of torchvision's detectors, so the
detection training command, the COCO evaluator and the predictions picture take YOLO models
unchanged:

* images: float ``[3, H, W]`` in ``[0, 1]``, any sizes. Each is letterboxed (resized to fit
  ``image_size`` keeping its aspect ratio, padded with grey 114/255) into one batch.
* training: ``targets`` (``boxes`` xyxy in the image's pixels, ``labels``) -> a loss dict.
* eval: a list of ``{"boxes", "labels", "scores"}`` per image in the image's own pixels:
  candidates above ``score_thresh`` (every class of a cell above it, as the references
  validate), class-aware NMS (``cvops.batched_nms``), at most ``detections_per_img``.

Labels are ``class index + label_offset``; the default offset 1 keeps torchvision's
convention (0 is the background, objects ``1..num_classes``).
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops.nms import batched_nms, nms_fixed
from .blocks import LayerGraph

__all__ = ["YOLO", "check_input_size", "letterbox", "select_detections", "unletterbox_boxes"]

MAX_STRIDE = 32
PAD_VALUE = 114 / 255


def _size2(size: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0 or h % MAX_STRIDE or w % MAX_STRIDE:
        raise ValueError(
            "%s must be positive multiples of %d (the coarsest stride), got %s"
            % (name, MAX_STRIDE, (h, w))
        )
    return h, w


def check_input_size(images: Tensor) -> None:
    """The network's input must be ``[B, 3, H, W]`` with H and W multiples of 32."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("images must be [B, 3, H, W], got %s" % (tuple(images.shape),))
    _size2(tuple(images.shape[-2:]), "the height and width of images")


def letterbox(
    image: Tensor, size: Tuple[int, int], fill: float = PAD_VALUE
) -> Tuple[Tensor, float, Tuple[float, float]]:
    """``image`` ``[3, h, w]`` resized by ``scale = min(H / h, W / w)`` and centred in an
    ``[3, H, W]`` canvas of ``fill``. Returns ``(canvas, scale, (pad_x, pad_y))``: a point
    ``p`` of the image is at ``p * scale + pad`` in the canvas."""
    H, W = size
    h, w = image.shape[-2:]
    scale = min(H / h, W / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(
            image[None], (nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1
        )[0]
    top, left = (H - nh) // 2, (W - nw) // 2
    canvas = image.new_full((image.shape[0], H, W), fill)
    canvas[:, top : top + nh, left : left + nw] = image
    return canvas, scale, (float(left), float(top))


def unletterbox_boxes(
    boxes: Tensor, scale: float, pad: Tuple[float, float], image_size: Tuple[int, int]
) -> Tensor:
    """Canvas xyxy boxes back to the original image's pixels, clipped to it."""
    out = boxes.clone()
    out[:, 0::2] = ((out[:, 0::2] - pad[0]) / scale).clamp(0, image_size[1])
    out[:, 1::2] = ((out[:, 1::2] - pad[1]) / scale).clamp(0, image_size[0])
    return out


def select_detections(
    boxes: Tensor,
    class_scores: Tensor,
    score_thresh: float,
    nms_thresh: float,
    max_det: int,
    pre_nms_top_n: int = 30000,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One image: ``boxes`` ``(N, 4)`` xyxy and ``class_scores`` ``(N, C)`` -> ``(boxes,
    scores, class indices)`` of the kept detections, best first. Every (cell, class) pair
    above ``score_thresh`` is a candidate (at most ``pre_nms_top_n``, the best);
    class-aware NMS; at most ``max_det``."""
    cell, cls = (class_scores > score_thresh).nonzero(as_tuple=True)
    scores = class_scores[cell, cls]
    if scores.numel() > pre_nms_top_n:
        scores, top = scores.topk(pre_nms_top_n)
        cell, cls = cell[top], cls[top]
    cand = boxes[cell]
    keep = batched_nms(cand.float(), scores.float(), cls, nms_thresh)[:max_det]
    return cand[keep], scores[keep], cls[keep]


def select_detections_fixed(
    boxes: Tensor, class_scores: Tensor, score_thresh: float, nms_thresh: float, max_det: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Export path of :func:`select_detections` without data-dependent shapes: each cell's
    best class only, classes kept apart by offsetting boxes per class, then ``nms_fixed``.
    Returns ``(boxes (max_det, 4), scores (max_det,), classes (max_det,), num_kept)``; rows
    past ``num_kept`` are padding (score 0, class -1)."""
    scores, cls = class_scores.max(1)
    scores = torch.where(scores > score_thresh, scores, torch.zeros_like(scores))
    # boxes of different classes never overlap once shifted by class * (span + 1)
    span = boxes.detach().abs().amax() + 1
    shifted = boxes + (cls.to(boxes.dtype) * span)[:, None]
    # drop sub-threshold cells: a degenerate box (x2 < x1) is never kept by nms_fixed
    shifted = torch.where((scores > 0)[:, None], shifted, shifted.new_tensor([1.0, 1.0, 0.0, 0.0]))
    keep, num = nms_fixed(shifted.float(), scores.float(), nms_thresh, max_det)
    valid = keep >= 0
    idx = keep.clamp(min=0)
    zeros = torch.zeros_like(scores[idx])
    return (
        torch.where(valid[:, None], boxes[idx], torch.zeros_like(boxes[idx])),
        torch.where(valid, scores[idx], zeros),
        torch.where(valid, cls[idx], torch.full_like(cls[idx], -1)),
        num,
    )


class YOLO(LayerGraph):
    """Base of the YOLO networks: the layer graph plus the torchvision detector interface
    (module docstring). Subclasses build the layers and define :meth:`loss` and
    :meth:`boxes_and_scores`."""

    def __init__(
        self,
        num_classes: int,
        image_size: Union[int, Sequence[int]] = 640,
        score_thresh: float = 0.001,
        nms_thresh: float = 0.7,
        detections_per_img: int = 300,
        label_offset: int = 1,
        loss_options: Optional[Dict[str, float]] = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1, got %d" % num_classes)
        self.num_classes = num_classes
        self.image_size = _size2(image_size, "image_size")
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.label_offset = label_offset
        self.loss_options = dict(loss_options or {})

    # -- subclasses
    def loss(self, raw, targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Loss dict of raw training outputs against canvas-pixel targets (0-based labels)."""
        raise NotImplementedError

    def boxes_and_scores(self, decoded: Tensor) -> Tuple[Tensor, Tensor]:
        """``(boxes (B, N, 4) xyxy pixels, class scores (B, N, C))`` of the decoded output."""
        raise NotImplementedError

    # -- interface
    def forward(self, images, targets: Optional[List[Dict[str, Tensor]]] = None):
        if isinstance(images, Tensor):
            check_input_size(images)
            return self.run(images)
        return self.detect(list(images), targets)

    def preprocess(self, images: List[Tensor], targets=None):
        """Letterboxed batch, per-image ``(scale, pad)``, and targets in canvas pixels with
        0-based labels."""
        if not images:
            raise ValueError("images must be a non-empty list of [3, H, W] tensors")
        canvases, frames, moved = [], [], []
        for k, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                raise ValueError("images[%d] must be a [3, H, W] tensor" % k)
            canvas, scale, pad = letterbox(image, self.image_size)
            canvases.append(canvas)
            frames.append((scale, pad, tuple(image.shape[-2:])))
            if targets is not None:
                t = targets[k]
                shift = t["boxes"].new_tensor([pad[0], pad[1], pad[0], pad[1]])
                moved.append(
                    {
                        "boxes": t["boxes"].float() * scale + shift,
                        "labels": t["labels"].long() - self.label_offset,
                    }
                )
        return torch.stack(canvases), frames, moved

    def detect(self, images: List[Tensor], targets=None):
        if self.training:
            if targets is None:
                raise ValueError("targets must be given in training mode")
            if len(targets) != len(images):
                raise ValueError(
                    "targets has %d entries for %d images" % (len(targets), len(images))
                )
            batch, _, moved = self.preprocess(images, targets)
            return self.loss(self.run(batch), moved)
        batch, frames, _ = self.preprocess(images)
        decoded, _ = self.run(batch)
        return self.postprocess(decoded, frames)

    def detect_fixed(self, batch: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Export path: a letterboxed ``[B, 3, H, W]`` batch -> fixed-size ``(boxes (B, D, 4)
        in the batch's pixels, scores (B, D), labels (B, D), num_kept (B,))`` with ``D =
        detections_per_img`` (:func:`select_detections_fixed`: each cell's best class only;
        padding rows have score 0 and label -1 + ``label_offset``)."""
        check_input_size(batch)
        if self.training:
            raise RuntimeError("detect_fixed needs eval mode (model.eval())")
        decoded, _ = self.run(batch)
        boxes, scores = self.boxes_and_scores(decoded)
        per_image = [
            select_detections_fixed(
                boxes[b], scores[b], self.score_thresh, self.nms_thresh, self.detections_per_img
            )
            for b in range(batch.shape[0])
        ]
        out_boxes, out_scores, cls, num = (torch.stack(t) for t in zip(*per_image))
        return out_boxes, out_scores, cls + self.label_offset, num

    def postprocess(self, decoded: Tensor, frames) -> List[Dict[str, Tensor]]:
        boxes, scores = self.boxes_and_scores(decoded)
        results = []
        for b, (scale, pad, size) in enumerate(frames):
            kept_boxes, kept_scores, cls = select_detections(
                boxes[b], scores[b], self.score_thresh, self.nms_thresh, self.detections_per_img
            )
            results.append(
                {
                    "boxes": unletterbox_boxes(kept_boxes, scale, pad, size),
                    "scores": kept_scores,
                    "labels": cls + self.label_offset,
                }
            )
        return results
