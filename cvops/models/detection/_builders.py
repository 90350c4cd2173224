"""What the detection builders share: the weights guard, the ResNet-50-FPN backbone with
torchvision's defaults, and ``overwrite_eps`` for torchvision's COCO checkpoints."""

from typing import Optional, Sequence

from torch import nn

from ..segmentation._utils import check_weights
from ..segmentation.fpn import BackboneWithFPN, FrozenBatchNorm2d, resnet_fpn_backbone
from .transform import GeneralizedRCNNTransform

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def overwrite_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set the eps of every ``FrozenBatchNorm2d`` (torchvision's COCO v1 detection
    checkpoints were trained with eps 0.0: call ``overwrite_eps(model, 0.0)`` after loading
    one)."""
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps
    return model


def make_transform(min_size, max_size, image_mean, image_std, **kwargs):
    """The detectors' transform with torchvision's ImageNet mean/std when not given."""
    mean = IMAGE_MEAN if image_mean is None else image_mean
    std = IMAGE_STD if image_std is None else image_std
    return GeneralizedRCNNTransform(min_size, max_size, mean, std, **kwargs)


def build_resnet50_fpn_detector(
    model_cls,
    weights,
    weights_backbone,
    num_classes: Optional[int],
    kwargs: dict,
    returned_layers: Optional[Sequence[int]] = None,
    extra_blocks: Optional[nn.Module] = None,
):
    """``model_cls(backbone, num_classes, **kwargs)`` on a ResNet-50-FPN backbone.

    Builder options taken from ``kwargs``: ``progress`` (ignored: nothing is downloaded),
    ``trainable_backbone_layers`` (0-5, honoured; torchvision ignores it without weights)
    and ``norm_layer``: None is torchvision's choice without weights (``nn.BatchNorm2d``,
    every stage trainable by default); ``FrozenBatchNorm2d`` matches torchvision's COCO
    checkpoints (3 trainable stages by default). ``num_classes`` defaults to 91 (COCO)."""
    check_weights(weights=weights, weights_backbone=weights_backbone)
    kwargs.pop("progress", None)
    trainable = kwargs.pop("trainable_backbone_layers", None)
    norm_layer = kwargs.pop("norm_layer", None) or nn.BatchNorm2d
    if trainable is None:
        trainable = 3 if norm_layer is FrozenBatchNorm2d else 5
    backbone: BackboneWithFPN = resnet_fpn_backbone(
        backbone_name="resnet50",
        norm_layer=norm_layer,
        trainable_layers=trainable,
        returned_layers=returned_layers,
        extra_blocks=extra_blocks,
    )
    return model_cls(backbone, 91 if num_classes is None else num_classes, **kwargs)
