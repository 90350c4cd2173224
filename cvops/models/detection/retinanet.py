"""RetinaNet (Lin et al., ICCV 2017, "Focal Loss for Dense Object Detection") as
torchvision's ``RetinaNet`` / ``retinanet_resnet50_fpn``: ResNet-50-FPN P3-P7 (P6/P7 by
3x3/2 convs from P5), 9 anchors per location (sizes 32..512 x scales 2^(0, 1/3, 2/3) x
ratios 0.5/1/2), two towers of four 3x3 conv + ReLU, the classification prior 0.01, the
sigmoid focal loss (cvops ``sigmoid_focal_loss``, alpha 0.25, gamma 2) summed and divided
by the number of foreground anchors, an L1 box loss, matching at IoU 0.5/0.4 with
low-quality matches; inference keeps the top 1000 candidates above ``score_thresh`` per
level, then class-wise NMS (cvops ``batched_nms``) and the best ``detections_per_img``."""

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import batched_nms, box_iou, clip_boxes_to_image, sigmoid_focal_loss
from .._registry import register_model
from ..segmentation.fpn import LastLevelP6P7
from ._builders import build_resnet50_fpn_detector, make_transform
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .generalized_rcnn import prepare_inputs
from .mask_head import conv3x3_relu
from .matcher import Matcher
from .rpn import flatten_level

Target = Dict[str, Tensor]
BOX_LOSSES = ("l1", "smooth_l1")


def default_retinanet_anchor_generator() -> AnchorGenerator:
    sizes = tuple(
        (s, int(s * 2 ** (1.0 / 3)), int(s * 2 ** (2.0 / 3))) for s in (32, 64, 128, 256, 512)
    )
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _tower(channels: int) -> nn.Sequential:
    tower = nn.Sequential(*[conv3x3_relu(channels, channels) for _ in range(4)])
    for m in tower.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    return tower


def _per_image_mean(losses: List[Tensor], num_images: int) -> Tensor:
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total / max(1, num_images)


class RetinaNetClassificationHead(nn.Module):
    """``conv`` tower and ``cls_logits`` (3x3, ``A * num_classes``; bias
    ``-log((1 - prior) / prior)``). ``forward`` returns ``[N, sum HWA, num_classes]``."""

    def __init__(
        self, in_channels: int, num_anchors: int, num_classes: int, prior_probability=0.01
    ):
        super().__init__()
        self.conv = _tower(in_channels)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(
            self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability)
        )
        self.num_classes = num_classes
        self.num_anchors = num_anchors

    def compute_loss(
        self, targets: List[Target], head_outputs, matched_idxs: List[Tensor]
    ) -> Tensor:
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs):
            fg = matched >= 0
            gt_classes = torch.zeros_like(logits)
            gt_classes[fg, target["labels"][matched[fg]]] = 1.0
            valid = matched != Matcher.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(logits[valid], gt_classes[valid], reduction="sum")
            losses.append(loss / max(1, int(fg.sum())))
        return _per_image_mean(losses, len(targets))

    def forward(self, x: List[Tensor]) -> Tensor:
        return torch.cat(
            [flatten_level(self.cls_logits(self.conv(f)), self.num_classes) for f in x], 1
        )


class RetinaNetRegressionHead(nn.Module):
    """``conv`` tower and ``bbox_reg`` (3x3, ``4 A``); deltas with weights (1, 1, 1, 1).
    ``box_loss``: ``"l1"`` (torchvision's RetinaNet) or ``"smooth_l1"`` (beta 1/9)."""

    def __init__(self, in_channels: int, num_anchors: int, box_loss: str = "l1"):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError("box_loss must be one of %s, got %r" % (BOX_LOSSES, box_loss))
        self.conv = _tower(in_channels)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self._loss_type = box_loss

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> Tensor:
        losses = []
        for target, deltas, anchors_i, matched in zip(
            targets, head_outputs["bbox_regression"], anchors, matched_idxs
        ):
            fg = torch.where(matched >= 0)[0]
            wanted = self.box_coder.encode_single(target["boxes"][matched[fg]], anchors_i[fg])
            if self._loss_type == "l1":
                loss = F.l1_loss(deltas[fg], wanted, reduction="sum")
            else:
                loss = F.smooth_l1_loss(deltas[fg], wanted, beta=1 / 9, reduction="sum")
            losses.append(loss / max(1, fg.numel()))
        return _per_image_mean(losses, len(targets))

    def forward(self, x: List[Tensor]) -> Tensor:
        return torch.cat([flatten_level(self.bbox_reg(self.conv(f)), 4) for f in x], 1)


class RetinaNetHead(nn.Module):
    """``classification_head`` and ``regression_head``; ``forward`` returns
    ``{"cls_logits", "bbox_regression"}``."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, box_loss: str = "l1"):
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(
            in_channels, num_anchors, num_classes
        )
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, box_loss)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> Dict[str, Tensor]:
        return {
            "classification": self.classification_head.compute_loss(
                targets, head_outputs, matched_idxs
            ),
            "bbox_regression": self.regression_head.compute_loss(
                targets, head_outputs, anchors, matched_idxs
            ),
        }

    def forward(self, x: List[Tensor]) -> Dict[str, Tensor]:
        return {
            "cls_logits": self.classification_head(x),
            "bbox_regression": self.regression_head(x),
        }


class RetinaNet(nn.Module):
    """torchvision's ``RetinaNet(backbone, num_classes, ...)`` (same keywords and defaults).
    Training returns ``{"classification", "bbox_regression"}``; evaluation a list of
    ``{"boxes", "scores", "labels"}``."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        min_size=800,
        max_size=1333,
        image_mean=None,
        image_std=None,
        anchor_generator: Optional[AnchorGenerator] = None,
        head: Optional[nn.Module] = None,
        proposal_matcher: Optional[Matcher] = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 300,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        topk_candidates: int = 1000,
        **kwargs,
    ):
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError("backbone must have an out_channels attribute (the FPN width)")
        self.backbone = backbone
        self.anchor_generator = anchor_generator or default_retinanet_anchor_generator()
        if head is None:
            num_anchors = self.anchor_generator.num_anchors_per_location()[0]
            head = RetinaNetHead(backbone.out_channels, num_anchors, num_classes)
        self.head = head
        self.proposal_matcher = proposal_matcher or Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True
        )
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.transform = make_transform(min_size, max_size, image_mean, image_std, **kwargs)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    def compute_loss(self, targets: List[Target], head_outputs, anchors: List[Tensor]):
        matched_idxs = []
        for anchors_i, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:
                matched_idxs.append(
                    torch.full((anchors_i.size(0),), -1, dtype=torch.int64, device=anchors_i.device)
                )
            else:
                matched_idxs.append(self.proposal_matcher(box_iou(target["boxes"], anchors_i)))
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def _detect_level(self, deltas: Tensor, logits: Tensor, anchors: Tensor, image_shape):
        num_classes = logits.shape[-1]
        scores = torch.sigmoid(logits).flatten()
        candidates = torch.where(scores > self.score_thresh)[0]
        scores = scores[candidates]
        scores, order = scores.topk(min(self.topk_candidates, candidates.numel()))
        candidates = candidates[order]
        anchor_idx = torch.div(candidates, num_classes, rounding_mode="floor")
        boxes = self.box_coder.decode_single(deltas[anchor_idx], anchors[anchor_idx])
        return clip_boxes_to_image(boxes, image_shape), scores, candidates % num_classes

    def postprocess_detections(self, head_outputs, anchors, image_shapes) -> List[Target]:
        """``head_outputs[k][level][image]`` and ``anchors[image][level]``, split by level."""
        detections = []
        for i, shape in enumerate(image_shapes):
            per_level = [
                self._detect_level(d[i], c[i], a, shape)
                for d, c, a in zip(
                    head_outputs["bbox_regression"], head_outputs["cls_logits"], anchors[i]
                )
            ]
            boxes, scores, labels = (torch.cat(t) for t in zip(*per_level))
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append(
                {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
            )
        return detections

    def forward(self, images: List[Tensor], targets: Optional[List[Target]] = None):
        image_list, targets, sizes, features = prepare_inputs(self, images, targets)
        features = list(features.values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(image_list, features)
        if self.training:
            return self.compute_loss(targets, head_outputs, anchors)
        locations = [f.size(2) * f.size(3) for f in features]
        per_location = head_outputs["cls_logits"].size(1) // sum(locations)
        counts = [n * per_location for n in locations]
        split_outputs = {k: list(v.split(counts, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(counts)) for a in anchors]
        detections = self.postprocess_detections(
            split_outputs, split_anchors, image_list.image_sizes
        )
        return self.transform.postprocess(detections, image_list.image_sizes, sizes)


@register_model
def retinanet_resnet50_fpn(
    *, weights=None, weights_backbone=None, num_classes: Optional[int] = None, **kwargs
) -> RetinaNet:
    """RetinaNet ResNet-50-FPN (torchvision's builder; ``weights``/``weights_backbone`` only
    None): 34,068,119 parameters at 91 classes with ``nn.BatchNorm2d`` (torchvision without
    weights); ``norm_layer=FrozenBatchNorm2d`` for torchvision's COCO checkpoint (then
    ``overwrite_eps(model, 0.0)``). Also ``trainable_backbone_layers`` and ``progress``
    (ignored); every other keyword goes to the model class."""
    return build_resnet50_fpn_detector(
        RetinaNet,
        weights,
        weights_backbone,
        num_classes,
        kwargs,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
