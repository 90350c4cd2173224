"""MobileNetV1 with the width multiplier ``alpha`` (0.25/0.5/0.75/1.0, any positive value);
parameter names equal timm's ``mobilenetv1_100`` (ReLU6, BN eps 1e-5, widths rounded to
multiples of 8 as timm does). The resolution multiplier ``rho`` of the paper is simply the
input size: the network is fully convolutional up to a global average pool, so any input
of at least 32x32 works (224, 192, 160, 128 in the paper).

The depthwise 3x3 convs are ``cvops.ops.DepthwiseConv2d``; BN is folded into the convs in
eval mode (see ``_mobile``).
"""

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._conv_bn import conv_bn
from .._registry import register_model
from ._base import ClassifierMixin, check_num_classes, check_positive, check_prob, make_divisible
from ._mobile import depthwise_conv, init_mobile_weights, relu6_

# Stages of (output width, repeats, first stride): 13 depthwise-separable blocks in all.
STAGES = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]


class DepthwiseSeparableConv(nn.Module):
    """dw3x3-BN-ReLU6 - pw1x1-BN-ReLU6 (no residual), with timm's names."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv_dw = depthwise_conv(in_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (conv_bn takes modules, which TorchScript cannot)
            x = relu6_(self.bn1(self.conv_dw(x)))
            return relu6_(self.bn2(self.conv_pw(x)))
        x = relu6_(conv_bn(self.conv_dw, self.bn1, x))
        return relu6_(conv_bn(self.conv_pw, self.bn2, x))


class MobileNetV1(ClassifierMixin, nn.Module):
    def __init__(self, *, num_classes: int = 1000, alpha: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        dropout = check_prob(dropout, "dropout")
        self.alpha = check_positive(alpha, "alpha")
        stem = make_divisible(32 * alpha)
        self.conv_stem = nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages: List[nn.Module] = []
        in_ch = stem
        for width, repeats, stride in STAGES:
            out_ch = make_divisible(width * alpha)
            blocks = []
            for i in range(repeats):
                blocks.append(DepthwiseSeparableConv(in_ch, out_ch, stride if i == 0 else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = in_ch
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
        init_mobile_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (conv_bn takes modules, which TorchScript cannot)
            x = relu6_(self.bn1(self.conv_stem(x)))
        else:
            x = relu6_(conv_bn(self.conv_stem, self.bn1, x))
        return self.blocks(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return x if pre_logits else self.classifier(self.dropout(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.classifier = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )


@register_model
def mobilenet_v1(
    *, num_classes: int = 1000, alpha: float = 1.0, dropout: float = 0.0
) -> MobileNetV1:
    """MobileNetV1 with width multiplier ``alpha``; 4,231,976 parameters at ``alpha=1.0``."""
    return MobileNetV1(num_classes=num_classes, alpha=alpha, dropout=dropout)
