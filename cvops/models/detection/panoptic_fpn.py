"""Panoptic FPN (Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019):
Mask R-CNN (:class:`MaskRCNN`, reused as it is) with a semantic segmentation branch on the same
FPN levels P2-P5, trained jointly, and merged into a panoptic map at inference.

The semantic branch (paper section 3, figure 3; detectron2's ``SemSegFPNHead``): per level, as
many ``3x3 conv 128 + GroupNorm(32) + ReLU`` (+ ``2x`` bilinear upsampling) stages as it takes
to reach 1/4 scale (one stage, no upsampling, for P2), the four maps summed, a ``1x1`` conv to
``num_stuff + 1`` classes (class 0 is "things", all thing pixels together; ``1..S`` the stuff
classes), then ``4x`` bilinear upsampling to the input size. Its loss is per-pixel cross-entropy
(unlabeled pixels 255 ignored), and the joint loss is the instance losses plus
``semantic_loss_weight`` (lambda, 0.5 by default as in detectron2's COCO configuration) times it.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_model
from ._builders import build_resnet50_fpn_detector
from .generalized_rcnn import prepare_inputs
from .mask_rcnn import MaskRCNN
from .panoptic_merge import merge_panoptic

IGNORE_INDEX = 255  # unlabeled pixels in the semantic targets
SEMANTIC_LEVELS = ("0", "1", "2", "3")  # P2..P5 in the FPN's output dict


class SemanticFPNHead(nn.Module):
    """``forward([P2, P3, P4, P5]) -> [B, num_classes, H/4, W/4]`` logits (module docstring).
    ``num_levels`` levels, level ``k`` at stride ``4 * 2^k``; ``num_groups`` GroupNorm groups."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        channels: int = 128,
        num_levels: int = 4,
        num_groups: int = 32,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1, got %d" % num_classes)
        if channels % num_groups:
            raise ValueError(
                "channels (%d) must be divisible by num_groups (%d)" % (channels, num_groups)
            )
        self.scale_heads = nn.ModuleList()
        for level in range(num_levels):
            layers: List[nn.Module] = []
            for k in range(max(1, level)):  # P2 gets one stage, P(2+k) k stages
                layers += [
                    nn.Conv2d(
                        in_channels if k == 0 else channels, channels, 3, padding=1, bias=False
                    ),
                    nn.GroupNorm(num_groups, channels),
                    nn.ReLU(inplace=True),
                ]
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.scale_heads):
            raise ValueError(
                "SemanticFPNHead was built for %d levels, got %d"
                % (len(self.scale_heads), len(features))
            )
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:]):
            y = head(x)
            if y.shape[-2:] != out.shape[-2:]:  # inputs not padded to a multiple of 32
                y = F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + y
        return self.predictor(out)


def semantic_targets(targets: List[Dict[str, Tensor]], sizes, batch_shape) -> Tensor:
    """The targets' ``sem_seg`` ``[H, W]`` maps resized (nearest) to each transformed image's
    size and padded with ``IGNORE_INDEX`` to ``batch_shape`` ``(H, W)``: ``[B, H, W]`` int64."""
    out = torch.full(
        (len(targets), *batch_shape),
        IGNORE_INDEX,
        dtype=torch.int64,
        device=targets[0]["sem_seg"].device,
    )
    for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
        sem = t["sem_seg"]
        if tuple(sem.shape[-2:]) != (h, w):
            sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        out[i, :h, :w] = sem.to(torch.int64)
    return out


def semantic_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the labeled pixels (0 when every pixel is unlabeled)."""
    if not bool((target != IGNORE_INDEX).any()):
        return logits.sum() * 0
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


class PanopticFPN(MaskRCNN):
    """Mask R-CNN with ``num_things + 1`` classes (background included) plus the semantic FPN
    head over ``num_stuff + 1`` classes.

    Training (``targets`` as Mask R-CNN's, plus ``sem_seg``: int ``[H, W]`` at the image's
    size, 0 = things, ``1..S`` stuff, 255 unlabeled) returns Mask R-CNN's losses and
    ``loss_sem_seg`` (already times ``semantic_loss_weight``). Evaluation returns per image
    Mask R-CNN's detections plus ``sem_seg`` (``[S + 1, H, W]`` logits at the original size),
    ``panoptic_seg`` (int64 ``[H, W]`` segment ids) and ``segments_info`` (from
    :func:`merge_panoptic` with the ``panoptic_*`` thresholds; category ids are the unified
    labels: things ``1..T``, stuff ``T + j``). Every other keyword goes to :class:`MaskRCNN`."""

    def __init__(
        self,
        backbone: nn.Module,
        num_things: int,
        num_stuff: int,
        semantic_loss_weight: float = 0.5,
        semantic_channels: int = 128,
        panoptic_score_thresh: float = 0.5,
        panoptic_overlap_thresh: float = 0.5,
        panoptic_stuff_area: int = 4096,
        **kwargs,
    ):
        for name, value in (("num_things", num_things), ("num_stuff", num_stuff)):
            if not isinstance(value, int) or value < 1:
                raise ValueError("%s must be a positive int, got %r" % (name, value))
        if semantic_loss_weight < 0:
            raise ValueError("semantic_loss_weight must be >= 0, got %s" % semantic_loss_weight)
        super().__init__(backbone, num_things + 1, **kwargs)
        self.num_things, self.num_stuff = num_things, num_stuff
        self.semantic_loss_weight = float(semantic_loss_weight)
        self.semantic_head = SemanticFPNHead(
            num_stuff + 1, backbone.out_channels, semantic_channels
        )
        self.panoptic_score_thresh = panoptic_score_thresh
        self.panoptic_overlap_thresh = panoptic_overlap_thresh
        self.panoptic_stuff_area = panoptic_stuff_area

    def semantic_logits(self, features: Dict[str, Tensor], batch_shape) -> Tensor:
        """``[B, S + 1, H, W]`` logits at the padded batch's size (the head's 1/4-scale output
        upsampled 4x)."""
        logits = self.semantic_head([features[k] for k in SEMANTIC_LEVELS])
        return F.interpolate(logits, size=tuple(batch_shape), mode="bilinear", align_corners=False)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is not None:
            for t in targets:
                if "sem_seg" not in t:
                    raise ValueError(
                        "every training target needs 'sem_seg', the [H, W] semantic labels"
                    )
        image_list, targets, sizes, features = prepare_inputs(self, images, targets)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets
        )
        batch_shape = image_list.tensors.shape[-2:]
        logits = self.semantic_logits(features, batch_shape)
        if self.training:
            target = semantic_targets(targets, image_list.image_sizes, batch_shape)
            loss = semantic_loss(logits, target)
            return {
                **detector_losses,
                **proposal_losses,
                "loss_sem_seg": self.semantic_loss_weight * loss,
            }
        detections = self.transform.postprocess(detections, image_list.image_sizes, sizes)
        for det, logit, (h, w), original in zip(detections, logits, image_list.image_sizes, sizes):
            sem = F.interpolate(
                logit[None, :, :h, :w], size=original, mode="bilinear", align_corners=False
            )[0]
            det["sem_seg"] = sem
            det["panoptic_seg"], det["segments_info"] = self.merge(det, sem.argmax(0))
        return detections

    def merge(self, detections: Dict[str, Tensor], semantic: Tensor) -> Tuple[Tensor, list]:
        """:func:`merge_panoptic` of one image's detections and semantic labels."""
        return merge_panoptic(
            detections["masks"],
            detections["scores"],
            detections["labels"],
            semantic,
            self.num_things,
            score_thresh=self.panoptic_score_thresh,
            overlap_thresh=self.panoptic_overlap_thresh,
            stuff_area=self.panoptic_stuff_area,
        )


@register_model
def panoptic_fpn_resnet50(
    *,
    weights=None,
    weights_backbone=None,
    num_things: int = 80,
    num_stuff: int = 53,
    **kwargs,
) -> PanopticFPN:
    """Panoptic FPN on Mask R-CNN ResNet-50-FPN (``weights``/``weights_backbone`` only None).
    COCO panoptic by default: 80 thing and 53 stuff classes (Mask R-CNN 81 classes, the semantic
    head 54). ``norm_layer``, ``trainable_backbone_layers`` and ``progress`` as
    :func:`maskrcnn_resnet50_fpn`; every other keyword goes to :class:`PanopticFPN`."""
    if "num_classes" in kwargs:
        raise ValueError("panoptic_fpn_resnet50 takes num_things and num_stuff, not num_classes")
    kwargs["num_stuff"] = num_stuff
    return build_resnet50_fpn_detector(PanopticFPN, weights, weights_backbone, num_things, kwargs)
