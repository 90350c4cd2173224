"""Faster R-CNN (Ren et al., NeurIPS 2015) with an FPN (Lin et al., CVPR 2017), as
torchvision's ``FasterRCNN`` / ``fasterrcnn_resnet50_fpn``: same constructor options,
defaults and state_dict keys, built on cvops ops (``MultiScaleRoIAlign``, ``batched_nms``,
the box utilities)."""

from typing import Optional

from torch import nn

from ...ops import MultiScaleRoIAlign
from .._registry import register_model
from ._builders import build_resnet50_fpn_detector, make_transform
from .anchors import AnchorGenerator
from .generalized_rcnn import GeneralizedRCNN
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead


def default_rpn_anchor_generator() -> AnchorGenerator:
    """One size per FPN level (32..512) x ratios 0.5, 1, 2."""
    sizes = ((32,), (64,), (128,), (256,), (512,))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class FasterRCNN(GeneralizedRCNN):
    """torchvision's ``FasterRCNN(backbone, num_classes, ...)`` (every keyword, same
    defaults); ``box_loss_beta`` (default 1/9) sets the Fast R-CNN head's smooth-L1 beta.
    ``backbone`` must have ``out_channels``."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: Optional[int] = None,
        # transform
        min_size=800,
        max_size=1333,
        image_mean=None,
        image_std=None,
        # RPN
        rpn_anchor_generator=None,
        rpn_head=None,
        rpn_pre_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_train=2000,
        rpn_post_nms_top_n_test=1000,
        rpn_nms_thresh=0.7,
        rpn_fg_iou_thresh=0.7,
        rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=256,
        rpn_positive_fraction=0.5,
        rpn_score_thresh=0.0,
        # box head
        box_roi_pool=None,
        box_head=None,
        box_predictor=None,
        box_score_thresh=0.05,
        box_nms_thresh=0.5,
        box_detections_per_img=100,
        box_fg_iou_thresh=0.5,
        box_bg_iou_thresh=0.5,
        box_batch_size_per_image=512,
        box_positive_fraction=0.25,
        bbox_reg_weights=None,
        box_loss_beta: float = 1 / 9,
        **kwargs,
    ):
        if not hasattr(backbone, "out_channels"):
            raise ValueError("backbone must have an out_channels attribute (the FPN width)")
        if num_classes is not None and box_predictor is not None:
            raise ValueError("num_classes must be None when box_predictor is given")
        if num_classes is None and box_predictor is None:
            raise ValueError("num_classes is required when box_predictor is not given")
        channels = backbone.out_channels
        if rpn_anchor_generator is None:
            rpn_anchor_generator = default_rpn_anchor_generator()
        if rpn_head is None:
            rpn_head = RPNHead(channels, rpn_anchor_generator.num_anchors_per_location()[0])
        rpn = RegionProposalNetwork(
            rpn_anchor_generator,
            rpn_head,
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
            rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
        )
        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        if box_head is None:
            resolution = box_roi_pool.output_size[0]
            box_head = TwoMLPHead(channels * resolution**2, 1024)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(1024, num_classes)
        roi_heads = RoIHeads(
            box_roi_pool,
            box_head,
            box_predictor,
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            bbox_reg_weights,
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
            box_loss_beta=box_loss_beta,
        )
        transform = make_transform(min_size, max_size, image_mean, image_std, **kwargs)
        super().__init__(backbone, rpn, roi_heads, transform)


@register_model
def fasterrcnn_resnet50_fpn(
    *, weights=None, weights_backbone=None, num_classes: Optional[int] = None, **kwargs
) -> FasterRCNN:
    """Faster R-CNN ResNet-50-FPN (torchvision's builder; ``weights``/``weights_backbone``
    only None). 91 classes by default: 41,808,406 parameters with ``nn.BatchNorm2d``
    (torchvision without weights), 41,755,286 with ``norm_layer=FrozenBatchNorm2d`` (its COCO
    checkpoint: load it with ``strict=True``, then ``overwrite_eps(model, 0.0)``). Also
    ``trainable_backbone_layers`` and ``progress`` (ignored); every other keyword goes to the
    model class."""
    return build_resnet50_fpn_detector(FasterRCNN, weights, weights_backbone, num_classes, kwargs)
