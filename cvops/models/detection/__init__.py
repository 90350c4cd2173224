"""Object detection, instance and panoptic segmentation: Faster R-CNN, Mask R-CNN, RetinaNet
and Panoptic FPN on a ResNet-50-FPN, and their components. Module and parameter names are
torchvision's, so its checkpoints load with ``strict=True``; the models run on cvops ops (RoI
Align, batched NMS, box utilities, sigmoid focal loss)."""

from ._builders import overwrite_eps
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .export import FixedSizeDetector
from .fast_rcnn import FastRCNN, fast_rcnn_vgg16
from .faster_rcnn import FasterRCNN, fasterrcnn_resnet50_fpn
from .generalized_rcnn import GeneralizedRCNN
from .image_list import ImageList
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor, paste_masks_in_image
from .mask_rcnn import MaskRCNN, maskrcnn_resnet50_fpn
from .matcher import BalancedPositiveNegativeSampler, Matcher
from .panoptic_fpn import PanopticFPN, SemanticFPNHead, panoptic_fpn_resnet50
from .panoptic_merge import merge_panoptic
from .proposals import FileProposals, JitterProposals, SelectiveSearch, save_proposals
from .rcnn import RCNN, rcnn
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
    "FastRCNN",
    "FileProposals",
    "FixedSizeDetector",
    "JitterProposals",
    "FastRCNNPredictor",
    "GeneralizedRCNN",
    "GeneralizedRCNNTransform",
    "ImageList",
    "MaskRCNN",
    "MaskRCNNHeads",
    "MaskRCNNPredictor",
    "Matcher",
    "PanopticFPN",
    "RCNN",
    "RPNHead",
    "RetinaNet",
    "RetinaNetClassificationHead",
    "RetinaNetHead",
    "RetinaNetRegressionHead",
    "RegionProposalNetwork",
    "RoIHeads",
    "SelectiveSearch",
    "SemanticFPNHead",
    "TwoMLPHead",
    "fast_rcnn_vgg16",
    "fastrcnn_loss",
    "fasterrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "merge_panoptic",
    "overwrite_eps",
    "panoptic_fpn_resnet50",
    "paste_masks_in_image",
    "rcnn",
    "retinanet_resnet50_fpn",
    "save_proposals",
]
