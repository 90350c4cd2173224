"""An inference path with fixed-size outputs for Faster R-CNN and RetinaNet, so the whole
eval forward goes through ``torch.export.export``, ``torch.compile(fullgraph=True)`` and,
on CUDA, CUDA-graph capture. See docs/export.md.

``FixedSizeDetector(model)`` wraps a built model (sharing its modules and weights) and runs
``forward(images [N, 3, H, W]) -> (boxes [N, D, 4], scores [N, D], labels [N, D],
counts [N])``: the first ``counts[i]`` rows of image ``i`` equal ``model(list(images))[i]``
(same order; boxes in input pixels), the rest are padding (boxes 0, scores 0, labels -1).

The model's transform is included: normalise, resize by its ``min_size``/``max_size`` rule
(or its ``fixed_size``) and zero-pad to ``size_divisible``. With one input size per batch
these sizes are fixed by the input shape, so an exported program or compiled graph is
specialised to that shape; a caller with a fixed camera or a letterboxed input passes the
raw images and gets boxes in their pixels, as from the regular model.
"""

import struct
from collections import OrderedDict
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .faster_rcnn import FasterRCNN
from .fixed_retinanet import fixed_retinanet_detections
from .fixed_roi_heads import fixed_box_detections
from .fixed_rpn import fixed_proposals
from .image_list import ImageList
from .retinanet import RetinaNet
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork
from .transform import resize_image_and_masks

__all__ = ["FixedSizeDetector"]


def _check_model(model) -> str:
    """Which fixed path ``model`` takes: ``"rcnn"`` or ``"retinanet"``."""
    if isinstance(model, RetinaNet):
        return "retinanet"
    if not isinstance(model, FasterRCNN):
        raise TypeError(
            "model must be a cvops FasterRCNN or RetinaNet, got %s" % type(model).__name__
        )
    from ...ops import MultiScaleRoIAlign

    if not isinstance(model.rpn, RegionProposalNetwork):
        raise TypeError("model.rpn must be a cvops RegionProposalNetwork")
    if not isinstance(model.roi_heads, RoIHeads):
        raise TypeError("model.roi_heads must be a cvops RoIHeads")
    if not isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign):
        raise TypeError("model.roi_heads.box_roi_pool must be a cvops MultiScaleRoIAlign")
    if model.roi_heads.has_mask():
        raise ValueError("model has a mask branch: the fixed-size path computes boxes only")
    return "rcnn"


def _float32_ratio(new: int, old: int) -> float:
    """``new / old`` rounded to float32 as the transform's ``resize_boxes`` computes it, as a
    Python number: boxes are then scaled with the same float32 product and no tensor constant
    (a host-to-device copy per call on CUDA)."""
    # double division rounded to float32 is the float32 quotient (53 >= 2 * 24 + 2 bits)
    return struct.unpack("f", struct.pack("f", new / old))[0]


class FixedSizeDetector(nn.Module):
    """Fixed-shape inference for a built cvops ``FasterRCNN`` or ``RetinaNet``.

    Args:
        model: the detector; its modules and weights are shared, not copied. It is put in
            eval mode (the fixed path is inference only). Mask R-CNN is refused.
        max_detections: ``D``, the padded number of detections per image; default the
            model's ``detections_per_img``. The rows equal the regular model's detections
            with ``detections_per_img = D``.

    ``forward(images)`` takes ``Tensor[N, 3, H, W]`` floating-point images in [0, 1] (one
    size for the whole batch) and returns ``(boxes [N, D, 4], scores [N, D], labels [N, D]
    int64, counts [N] int64)``. Move it with ``.to(device)`` (the wrapper, not only the
    model: it holds the normalisation constants).
    """

    def __init__(self, model: nn.Module, max_detections: Optional[int] = None):
        super().__init__()
        self.kind = _check_model(model)
        if max_detections is None:
            heads = model.roi_heads if self.kind == "rcnn" else model
            max_detections = heads.detections_per_img
        if isinstance(max_detections, bool) or not isinstance(max_detections, int):
            raise TypeError("max_detections must be an int, got %r" % (max_detections,))
        if max_detections < 1:
            raise ValueError("max_detections must be >= 1, got %d" % max_detections)
        self.model = model
        self.max_detections = max_detections
        transform = model.transform
        device = next(iter(model.parameters())).device
        # float64 like the Python floats the transform converts, cast to the image dtype
        self.register_buffer(
            "image_mean",
            torch.tensor(transform.image_mean, dtype=torch.float64, device=device),
            persistent=False,
        )
        self.register_buffer(
            "image_std",
            torch.tensor(transform.image_std, dtype=torch.float64, device=device),
            persistent=False,
        )
        self._anchor_cache = {}
        self.eval()

    def _check_images(self, images) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError("images must be a Tensor[N, C, H, W], got %s" % (shape,))
        if images.shape[1] != self.image_mean.shape[0]:
            raise ValueError(
                "images must have %d channels, got %d" % (self.image_mean.shape[0], images.shape[1])
            )
        if not images.is_floating_point():
            raise TypeError("images must be floating point in [0, 1], got dtype %s" % images.dtype)
        if images.device != self.image_mean.device:
            raise ValueError(
                "images are on %s but the FixedSizeDetector on %s: move it with .to()"
                % (images.device, self.image_mean.device)
            )
        if self.training or self.model.training:
            raise RuntimeError("FixedSizeDetector is inference only: call .eval()")

    def preprocess(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """The model's transform for a batch of one size: normalise, resize, zero-pad.
        Returns the padded batch and the resized (unpadded) image size."""
        t = self.model.transform
        mean = self.image_mean.to(images.dtype)[:, None, None]
        std = self.image_std.to(images.dtype)[:, None, None]
        resized = [
            resize_image_and_masks(img, t.min_size[-1], t.max_size, None, t.fixed_size)[0]
            for img in (images - mean) / std
        ]
        x = torch.stack(resized)
        h, w = x.shape[-2:]
        stride = t.size_divisible
        pad_h, pad_w = -h % stride, -w % stride
        return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h)), (h, w)

    def _anchors(self, generator, batch: Tensor, features, image_size) -> Tensor:
        """One image's anchors. In eager mode they are cached per shape, dtype and device, so
        a CUDA graph captured after a warm-up call copies nothing from the host; traced
        (export, compile), they are computed in the graph."""
        compute = lambda: generator(ImageList(batch[:1], [image_size]), features)[0]
        if torch.compiler.is_compiling():
            return compute()
        f = features[0]
        key = (id(generator), tuple(batch.shape[-2:]))
        key += tuple(tuple(g.shape[-2:]) for g in features) + (f.dtype, f.device)
        # (an inference tensor cached under inference_mode must not meet autograd later)
        key += (torch.is_inference_mode_enabled(),)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = compute()
        return self._anchor_cache[key]

    def forward(self, images: Tensor):
        self._check_images(images)
        height, width = images.shape[-2:]
        x, image_size = self.preprocess(images)
        features = self.model.backbone(x)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        levels = list(features.values())
        if self.kind == "rcnn":
            rpn = self.model.rpn
            anchors = self._anchors(rpn.anchor_generator, x, levels, image_size)
            proposals, proposal_counts = fixed_proposals(rpn, levels, anchors, image_size)
            boxes, scores, labels, counts = fixed_box_detections(
                self.model.roi_heads,
                features,
                proposals,
                proposal_counts,
                image_size,
                self.max_detections,
            )
        else:
            anchors = self._anchors(self.model.anchor_generator, x, levels, image_size)
            boxes, scores, labels, counts = fixed_retinanet_detections(
                self.model, levels, anchors, image_size, self.max_detections
            )
        rw = _float32_ratio(int(width), image_size[1])
        rh = _float32_ratio(int(height), image_size[0])
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack((x1 * rw, y1 * rh, x2 * rw, y2 * rh), dim=-1)
        return boxes, scores, labels, counts

    def extra_repr(self) -> str:
        return "kind=%s, max_detections=%d" % (self.kind, self.max_detections)
