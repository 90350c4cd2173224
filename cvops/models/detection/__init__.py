"""Object detection and instance segmentation: Faster R-CNN, Mask R-CNN and RetinaNet on a
ResNet-50-FPN, and their components. Module and parameter names are torchvision's, so its
checkpoints load with ``strict=True``; the models run on cvops ops (RoI Align, batched NMS,
box utilities, sigmoid focal loss)."""

from ._builders import overwrite_eps
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .faster_rcnn import FasterRCNN, fasterrcnn_resnet50_fpn
from .generalized_rcnn import GeneralizedRCNN
from .image_list import ImageList
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor, paste_masks_in_image
from .mask_rcnn import MaskRCNN, maskrcnn_resnet50_fpn
from .matcher import BalancedPositiveNegativeSampler, Matcher
from .retinanet import (
    RetinaNet,
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
    retinanet_resnet50_fpn,
)
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead, fastrcnn_loss
from .rpn import RegionProposalNetwork, RPNHead
from .transform import GeneralizedRCNNTransform

__all__ = [
    "AnchorGenerator",
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "FasterRCNN",
    "FastRCNNPredictor",
    "GeneralizedRCNN",
    "GeneralizedRCNNTransform",
    "ImageList",
    "MaskRCNN",
    "MaskRCNNHeads",
    "MaskRCNNPredictor",
    "Matcher",
    "RPNHead",
    "RetinaNet",
    "RetinaNetClassificationHead",
    "RetinaNetHead",
    "RetinaNetRegressionHead",
    "RegionProposalNetwork",
    "RoIHeads",
    "TwoMLPHead",
    "fastrcnn_loss",
    "fasterrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "overwrite_eps",
    "paste_masks_in_image",
    "retinanet_resnet50_fpn",
]
