"""Image classifiers. Every model has ``forward_features``, ``forward_head``,
``get_classifier`` and ``reset_classifier`` (see ``_base.ClassifierMixin``)."""

from .alexnet import AlexNet, alexnet
from .deit import (
    DeiT,
    deit_base_distilled_patch16_224,
    deit_base_patch16_224,
    deit_small_distilled_patch16_224,
    deit_small_patch16_224,
    deit_tiny_distilled_patch16_224,
    deit_tiny_patch16_224,
)
from .distillation import DistillationLoss
from .googlenet import GoogLeNet, GoogLeNetOutputs, googlenet, googlenet_loss
from .mobilenet_v1 import MobileNetV1, mobilenet_v1
from .mobilenet_v2 import MobileNetV2, mobilenet_v2
from .resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from .vit import VisionTransformer, convert_timm_vit_state_dict, vit_b_16, vit_b_32, vit_l_16

__all__ = [
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "DeiT",
    "DistillationLoss",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "MobileNetV1",
    "MobileNetV2",
    "ResNet",
    "VGG",
    "VisionTransformer",
    "alexnet",
    "convert_timm_vit_state_dict",
    "deit_base_distilled_patch16_224",
    "deit_base_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_small_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "deit_tiny_patch16_224",
    "googlenet",
    "googlenet_loss",
    "mobilenet_v1",
    "mobilenet_v2",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
]
