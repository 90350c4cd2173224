"""Mask R-CNN (He et al., ICCV 2017) as torchvision's ``MaskRCNN`` /
``maskrcnn_resnet50_fpn``: Faster R-CNN plus a mask branch on 14x14 RoI Align features
(cvops ``MultiScaleRoIAlign``, sampling 2), four 3x3 conv 256 + ReLU, a 2x2 deconv and a 1x1
conv to 28x28 per-class mask logits, per-class sigmoid BCE on the ground-truth class; masks
are pasted into the original image by the transform's postprocess."""

from typing import Optional

from torch import nn

from ...ops import MultiScaleRoIAlign
from .._registry import register_model
from ._builders import build_resnet50_fpn_detector
from .faster_rcnn import FasterRCNN
from .mask_head import MaskRCNNHeads, MaskRCNNPredictor


class MaskRCNN(FasterRCNN):
    """torchvision's ``MaskRCNN(backbone, num_classes, ..., mask_roi_pool, mask_head,
    mask_predictor)``; every other keyword as :class:`FasterRCNN`. Evaluation adds
    ``masks`` (``[K, 1, H, W]`` probabilities) to each image's detections; training adds
    ``loss_mask``."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: Optional[int] = None,
        *args,
        mask_roi_pool: Optional[MultiScaleRoIAlign] = None,
        mask_head: Optional[nn.Module] = None,
        mask_predictor: Optional[nn.Module] = None,
        **kwargs,
    ):
        if num_classes is not None and mask_predictor is not None:
            raise ValueError("num_classes must be None when mask_predictor is given")
        super().__init__(backbone, num_classes, *args, **kwargs)
        if mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(
                ["0", "1", "2", "3"], output_size=14, sampling_ratio=2
            )
        if mask_head is None:
            mask_head = MaskRCNNHeads(backbone.out_channels, (256, 256, 256, 256), 1)
        if mask_predictor is None:
            mask_predictor = MaskRCNNPredictor(256, 256, num_classes)
        self.roi_heads.mask_roi_pool = mask_roi_pool
        self.roi_heads.mask_head = mask_head
        self.roi_heads.mask_predictor = mask_predictor


@register_model
def maskrcnn_resnet50_fpn(
    *, weights=None, weights_backbone=None, num_classes: Optional[int] = None, **kwargs
) -> MaskRCNN:
    """Mask R-CNN ResNet-50-FPN (torchvision's builder; ``weights``/``weights_backbone`` only
    None). 91 classes by default: 44,454,513 parameters with ``nn.BatchNorm2d``
    (torchvision without weights), 44,401,393 with ``norm_layer=FrozenBatchNorm2d`` (its COCO
    checkpoint: load it with ``strict=True``, then ``overwrite_eps(model, 0.0)``). Also
    ``trainable_backbone_layers`` and ``progress`` (ignored); every other keyword goes to the
    model class."""
    return build_resnet50_fpn_detector(MaskRCNN, weights, weights_backbone, num_classes, kwargs)
