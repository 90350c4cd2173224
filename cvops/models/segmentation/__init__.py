"""Semantic segmentation models. Every model's ``forward`` returns torchvision's dict
``{"out": logits[, "aux": aux logits]}``."""

from .deeplab import (
    ASPP,
    DeepLabHead,
    DeepLabV2ResNet,
    DeepLabV3,
    DeepLabVGG,
    deeplabv1_largefov,
    deeplabv2,
    deeplabv3_mobilenet_v2,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)
from .fcn import FCN, FCNVGG, fcn8s, fcn16s, fcn32s, fcn_resnet50, fcn_resnet101
from .fpn import (
    BackboneWithFPN,
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    FrozenBatchNorm2d,
    LastLevelMaxPool,
    LastLevelP6P7,
    resnet_fpn_backbone,
    resnet_fpn_extractor,
)
from .unet import UNet, unet

__all__ = [
    "ASPP",
    "DeepLabHead",
    "DeepLabV2ResNet",
    "DeepLabV3",
    "DeepLabVGG",
    "deeplabv1_largefov",
    "deeplabv2",
    "deeplabv3_mobilenet_v2",
    "deeplabv3_resnet101",
    "deeplabv3_resnet50",
    "BackboneWithFPN",
    "ExtraFPNBlock",
    "FCN",
    "FeaturePyramidNetwork",
    "FrozenBatchNorm2d",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "resnet_fpn_backbone",
    "resnet_fpn_extractor",
    "FCNVGG",
    "UNet",
    "fcn16s",
    "fcn32s",
    "fcn8s",
    "fcn_resnet101",
    "fcn_resnet50",
    "unet",
]
