"""Fully convolutional networks.

``fcn32s``/``fcn16s``/``fcn8s``: Long, Shelhamer, Darrell, "Fully Convolutional Networks
for Semantic Segmentation" (CVPR 2015, arXiv:1411.4038), on VGG-16 as in the reference
Caffe models: conv1_1 padded by 100, Caffe's ceil-mode pools, fc6/fc7 as 7x7 and 1x1 convs
(4096), 1x1 scoring layers, learned up-sampling (``ConvTranspose2d`` without bias,
initialised to bilinear interpolation), pool4 (16s) and pool3 (8s) skips cropped at the
Caffe offsets (5, 9; final crops 19, 27, 31). Scoring layers start at zero as in the paper.
Names follow the Caffe models (``score_fr``, ``upscore2``, ``score_pool4``...); the VGG part
is ``backbone`` (torchvision ``vgg16``'s ``features``); ``load_vgg16_state_dict`` loads a
torchvision ``vgg16`` checkpoint, convolutionalising its fc layers.

``fcn_resnet50``/``fcn_resnet101``: torchvision's FCN (dilated ResNet at output stride 8,
``FCNHead``, bilinear up-sampling, optional aux head on layer3); same state_dict keys.
"""

from typing import Dict

import torch
import torch.nn as nn
from torch import Tensor

from .._registry import register_model
from ._utils import (
    FCNHead,
    SimpleSegmentationModel,
    build_resnet_segmentation,
    check_choice,
    check_seg_classes,
    check_weights,
)
from ._vgg import convolutionalize_vgg16, fc_layers, run_trunk, vgg16_trunk


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """``[channels, channels, k, k]`` ConvTranspose2d weight that up-samples each channel
    bilinearly (no mixing between channels): with stride ``f = k // 2`` and the output
    cropped by ``f // 2``, it equals ``F.interpolate(mode="bilinear", align_corners=False)``
    away from the borders."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).to(torch.float32)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt
    return weight


def bilinear_upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable ``factor``x up-sampling (kernel 2*factor, stride factor, no bias)
    initialised to bilinear interpolation."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def crop(x: Tensor, offset: int, size) -> Tensor:
    """``x[..., offset:offset + h, offset:offset + w]`` (Caffe's Crop layer)."""
    if x.shape[-2] < offset + size[0] or x.shape[-1] < offset + size[1]:
        raise RuntimeError(  # cannot happen with the pad-100 geometry; guards edits
            "crop %s at offset %d does not fit in %s" % (list(size), offset, list(x.shape))
        )
    return x[..., offset : offset + size[0], offset : offset + size[1]]


class FCNVGG(nn.Module):
    """FCN-32s, -16s or -8s (``stride`` 32, 16, 8) on VGG-16."""

    # Caffe's crop offsets for the pad-100 VGG-16 geometry.
    POOL4_OFFSET, POOL3_OFFSET = 5, 9
    FINAL_OFFSET = {32: 19, 16: 27, 8: 31}

    def __init__(self, *, num_classes: int = 21, stride: int = 32):
        super().__init__()
        self.num_classes = check_seg_classes(num_classes)
        self.stride = check_choice(stride, "stride", (32, 16, 8))
        c = num_classes
        self.backbone = vgg16_trunk(first_padding=100, ceil_mode=True)
        self.head = fc_layers(nn.Conv2d(512, 4096, 7), 4096, c, score_name="score_fr")
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        if stride == 32:
            self.upscore = bilinear_upsampling(c, 32)
        else:
            self.upscore2 = bilinear_upsampling(c, 2)
            self.score_pool4 = nn.Conv2d(512, c, 1)
            if stride == 16:
                self.upscore16 = bilinear_upsampling(c, 16)
            else:
                self.upscore_pool4 = bilinear_upsampling(c, 2)
                self.score_pool3 = nn.Conv2d(256, c, 1)
                self.upscore8 = bilinear_upsampling(c, 8)
        for name, m in self.named_modules():  # the paper zero-initialises the class scores
            if name.split(".")[-1].startswith("score_"):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        pool3, pool4, pool5 = run_trunk(self.backbone, x)
        h = self.head(pool5)
        if self.stride == 32:
            h = self.upscore(h)
        else:
            h = self.upscore2(h)
            h = h + crop(self.score_pool4(pool4), self.POOL4_OFFSET, h.shape[-2:])
            if self.stride == 16:
                h = self.upscore16(h)
            else:
                h = self.upscore_pool4(h)
                h = h + crop(self.score_pool3(pool3), self.POOL3_OFFSET, h.shape[-2:])
                h = self.upscore8(h)
        return {"out": crop(h, self.FINAL_OFFSET[self.stride], x.shape[-2:])}

    def load_vgg16_state_dict(self, state_dict: Dict[str, Tensor]) -> None:
        """Initialise the trunk and fc6/fc7 from a torchvision ``vgg16`` state_dict (the
        paper's ImageNet initialisation); the scoring and up-sampling layers are kept."""
        converted = convolutionalize_vgg16(state_dict, fc_prefixes=("head.",))
        own = self.state_dict()
        own.update(converted)
        self.load_state_dict(own, strict=True)


def _fcn_vgg(stride: int, num_classes: int, weights, weights_backbone) -> FCNVGG:
    check_weights(weights=weights, weights_backbone=weights_backbone)
    return FCNVGG(num_classes=num_classes, stride=stride)


@register_model
def fcn32s(*, num_classes: int = 21, weights=None, weights_backbone=None) -> FCNVGG:
    """FCN-32s (VGG-16); 136,152,917 parameters at 21 classes."""
    return _fcn_vgg(32, num_classes, weights, weights_backbone)


@register_model
def fcn16s(*, num_classes: int = 21, weights=None, weights_backbone=None) -> FCNVGG:
    """FCN-16s (VGG-16, pool4 skip); 134,815,994 parameters at 21 classes."""
    return _fcn_vgg(16, num_classes, weights, weights_backbone)


@register_model
def fcn8s(*, num_classes: int = 21, weights=None, weights_backbone=None) -> FCNVGG:
    """FCN-8s (VGG-16, pool4 and pool3 skips); 134,489,759 parameters at 21 classes."""
    return _fcn_vgg(8, num_classes, weights, weights_backbone)


class FCN(SimpleSegmentationModel):
    """torchvision's ``FCN``: ``backbone`` dict -> ``classifier`` (+ ``aux_classifier``)."""


def _fcn_head(in_channels: int, num_classes: int, output_stride: int) -> FCNHead:
    return FCNHead(in_channels, num_classes)


@register_model
def fcn_resnet50(**kwargs) -> FCN:
    """torchvision's ``fcn_resnet50`` (same keys and outputs); 32,957,013 parameters at 21
    classes, 35,322,218 with ``aux_loss=True``. Keywords: ``num_classes`` (21), ``aux_loss``
    (False), ``weights``/``weights_backbone`` (None only), ``progress`` (ignored),
    ``output_stride`` (8, torchvision's; or 16)."""
    return build_resnet_segmentation(FCN, "resnet50", _fcn_head, **kwargs)


@register_model
def fcn_resnet101(**kwargs) -> FCN:
    """torchvision's ``fcn_resnet101`` (same keys and outputs); keywords as ``fcn_resnet50``."""
    return build_resnet_segmentation(FCN, "resnet101", _fcn_head, **kwargs)
