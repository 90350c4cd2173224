"""Fast R-CNN (Girshick, ICCV 2015) with VGG16: one pass of the conv layers over the image,
RoI max pooling (cvops ``roi_pool``, 7x7 at stride 16) of each given proposal from conv5_3,
fc6/fc7, then a softmax classifier over K+1 classes and per-class box regression.

Training (the paper's section 2.3): the ground-truth boxes join the proposals; per image
``box_batch_size_per_image`` RoIs (64: 128 per 2-image minibatch) are sampled, 25% foreground
(IoU >= 0.5 with a ground-truth box) and the rest background (best IoU in [0.1, 0.5); RoIs
below 0.1 are not used). The loss is ``L_cls + lambda [u >= 1] smooth_L1`` (beta 1,
``fastrcnn_loss``), box targets as R-CNN's normalised by (0.1, 0.1, 0.2, 0.2) (the paper's
"zero mean, unit variance" normalisation, i.e. weights 10, 10, 5, 5). Inference: per-class
boxes, softmax scores, score threshold, per-class NMS at 0.3 (cvops ``batched_nms``).

Proposals come from ``proposals=[Tensor[N, 4], ...]``, the targets' ``"proposals"`` entries or
the model's ``proposal_source`` (see :mod:`.proposals`), in original image pixels.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...ops import box_iou, roi_pool
from .._registry import register_model
from ._builders import make_transform
from .generalized_rcnn import prepare_inputs
from .paper_vgg import VGGFCHead, check_width, map_torchvision_vgg, trunk_channels, vgg_trunk
from .proposals import proposals_of
from .roi_heads import FastRCNNPredictor, RoIHeads
from .transform import resize_boxes

Target = Dict[str, Tensor]


class VGGConv5(nn.Module):
    """VGG's conv layers up to conv5_3 + ReLU (pool5 removed): stride 16. ``features`` has
    torchvision's ``features.N`` indices."""

    def __init__(self, width: float = 1.0, config: str = "D", batch_norm: bool = False):
        super().__init__()
        self.features = vgg_trunk(config, width, last_pool=False, batch_norm=batch_norm)
        self.out_channels = trunk_channels(self.features)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def freeze_blocks(self, n: int) -> None:
        """Freeze the first ``n`` conv blocks (the paper fine-tunes conv3_1 and up: n=2)."""
        block = 0
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                block += 1
            elif block < n:
                m.requires_grad_(False)


class SingleLevelRoIPool(nn.Module):
    """RoI max pooling of the single feature map ``features["0"]`` with the call signature
    ``RoIHeads`` uses for its pooler: ``(features, proposals, image_shapes)``."""

    def __init__(self, output_size: int = 7, spatial_scale: float = 1 / 16):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, features: Dict[str, Tensor], proposals: List[Tensor], image_shapes):
        return roi_pool(features["0"], proposals, self.output_size, self.spatial_scale)


class FastRCNNRoIHeads(RoIHeads):
    """``RoIHeads`` with the paper's background interval: RoIs whose best IoU is below
    ``bg_iou_lo`` (0.1) are neither foreground nor background (ignored)."""

    def __init__(self, *args, bg_iou_lo: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= bg_iou_lo <= self.proposal_matcher.low_threshold:
            raise ValueError("bg_iou_lo must be in [0, bg_iou_thresh], got %r" % (bg_iou_lo,))
        self.bg_iou_lo = bg_iou_lo

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for props, boxes, lab in zip(proposals, gt_boxes, labels):
            if boxes.numel():
                lab[box_iou(boxes, props).max(dim=0).values < self.bg_iou_lo] = -1
        return matched_idxs, labels


def _check_proposals(proposals, n_images: int) -> List[Tensor]:
    if not isinstance(proposals, (list, tuple)) or len(proposals) != n_images:
        raise ValueError("proposals must be a list with one Tensor[N, 4] per image (%d)" % n_images)
    for i, p in enumerate(proposals):
        if not isinstance(p, Tensor) or p.dim() != 2 or p.shape[-1] != 4:
            got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError("proposals[%d] must be a Tensor[N, 4], got %s" % (i, got))
    return list(proposals)


def gather_proposals(model, images, targets, proposals) -> List[Tensor]:
    """The proposals of a paper detector's forward: given, from the targets, or from the
    model's ``proposal_source``; a clear error when there are none."""
    if proposals is None:
        proposals = proposals_of(targets)
    if proposals is None and model.proposal_source is not None:
        ts = targets if targets is not None else [None] * len(images)
        proposals = [model.proposal_source(img, t) for img, t in zip(images, ts)]
    if proposals is None:
        raise ValueError(
            "%s needs region proposals: pass proposals=[Tensor[N, 4], ...], targets with a "
            "'proposals' entry, or build it with proposal_source= (cvops.models.detection."
            "proposals)" % type(model).__name__
        )
    return _check_proposals(proposals, len(images))


class FastRCNN(nn.Module):
    """``forward(images, targets=None, proposals=None)``: the loss dict in training
    (``loss_classifier``, ``loss_box_reg``), else ``[{"boxes", "labels", "scores"}]`` per
    image in original pixels. ``backbone`` returns one stride-16 map and has
    ``out_channels``; ``box_loss_weight`` is the paper's lambda (1)."""

    takes_proposals = True  # the training command passes proposals in evaluation too

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        min_size=600,
        max_size: int = 1000,
        image_mean=None,
        image_std=None,
        representation_size: int = 4096,
        dropout: float = 0.5,
        roi_output_size: int = 7,
        spatial_scale: float = 1 / 16,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.3,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_bg_iou_lo: float = 0.1,
        box_batch_size_per_image: int = 64,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        box_loss_weight: float = 1.0,
        proposal_source=None,
        **kwargs,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError("num_classes (background included) must be >= 2, got %r" % num_classes)
        if not hasattr(backbone, "out_channels"):
            raise ValueError("backbone must have an out_channels attribute")
        self.transform = make_transform(min_size, max_size, image_mean, image_std, **kwargs)
        self.backbone = backbone
        self.roi_heads = FastRCNNRoIHeads(
            SingleLevelRoIPool(roi_output_size, spatial_scale),
            VGGFCHead(backbone.out_channels * roi_output_size**2, representation_size, dropout),
            FastRCNNPredictor(representation_size, num_classes),
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            tuple(bbox_reg_weights),
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
            box_loss_beta=1.0,
            bg_iou_lo=box_bg_iou_lo,
        )
        self.box_loss_weight = float(box_loss_weight)
        self.proposal_source = proposal_source

    def forward(
        self,
        images: List[Tensor],
        targets: Optional[List[Target]] = None,
        proposals: Optional[List[Tensor]] = None,
    ):
        proposals = gather_proposals(self, images, targets, proposals)
        image_list, targets, sizes, features = prepare_inputs(self, images, targets)
        dtype = features["0"].dtype if features["0"].is_floating_point() else torch.float32
        proposals = [
            resize_boxes(p.to(dtype), old, new)
            for p, old, new in zip(proposals, sizes, image_list.image_sizes)
        ]
        detections, losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            losses["loss_box_reg"] = self.box_loss_weight * losses["loss_box_reg"]
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, sizes)

    def load_vgg16_imagenet(self, state_dict: Dict[str, Tensor]) -> Tuple[List[str], List[str]]:
        """Load a ``torchvision.models.vgg16`` state_dict: conv layers into the backbone, fc6
        and fc7 into the box head (the paper's initialisation); the classifier and box
        regressor keep their initialisation. Returns ``(missing, unexpected)`` keys."""
        mapped = map_torchvision_vgg(state_dict, "backbone.features.", "roi_heads.box_head.")
        result = self.load_state_dict(mapped, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("roi_heads.box_predictor.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                "not a VGG16 state_dict for this model: missing %s, unexpected %s"
                % (missing, result.unexpected_keys)
            )
        return result.missing_keys, result.unexpected_keys


@register_model
def fast_rcnn_vgg16(
    *,
    weights=None,
    num_classes: int = 21,
    width: float = 1.0,
    representation_size: Optional[int] = None,
    frozen_blocks: int = 0,
    batch_norm: bool = False,
    **kwargs,
) -> FastRCNN:
    """Fast R-CNN VGG16 (21 classes: PASCAL VOC, as the paper): 134,690,729 parameters
    (VGG16's 138,357,544 less its 1000-way fc8, plus the 21-way classifier and 84 box
    outputs). ``width`` scales every conv width (and fc6/fc7, unless
    ``representation_size`` is given) for small CPU configurations; ``batch_norm=True`` is
    the ``vgg16_bn`` layout (trains from scratch, which plain VGG16 barely does).
    ``frozen_blocks=2`` freezes conv1-conv2 as the paper does after
    :meth:`FastRCNN.load_vgg16_imagenet`.
    Other keywords go to :class:`FastRCNN` (``min_size``, ``proposal_source``, ...)."""
    if weights is not None:
        raise ValueError(
            "weights: no Fast R-CNN checkpoint is available offline; load torchvision VGG16 "
            "ImageNet weights with model.load_vgg16_imagenet(state_dict)"
        )
    width = check_width(width)
    backbone = VGGConv5(width, batch_norm=batch_norm)
    if frozen_blocks:
        backbone.freeze_blocks(int(frozen_blocks))
    size = representation_size or max(1, int(round(4096 * width)))
    return FastRCNN(backbone, num_classes, representation_size=size, **kwargs)
