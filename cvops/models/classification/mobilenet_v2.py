"""MobileNetV2 with ``width_mult``; parameter names equal
``torchvision.models.mobilenet_v2``'s. The depthwise 3x3 convs are
``cvops.ops.DepthwiseConv2d``; BN is folded into the convs in eval mode (see ``_mobile``).
"""

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._conv_bn import conv_bn
from .._registry import register_model
from ._base import ClassifierMixin, check_num_classes, check_positive, check_prob, make_divisible
from ._mobile import ConvBNAct, init_mobile_weights

# (expansion t, output channels c, repeats n, first stride s)
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6 (t > 1)] - dw3x3-BN-ReLU6 - 1x1 linear projection-BN, plus the
    input when stride is 1 and the width is unchanged."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("stride must be 1 or 2, got %r" % (stride,))
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNAct(hidden_dim, hidden_dim, kernel_size=3, stride=stride, depthwise=True),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (conv_bn takes modules, which TorchScript cannot)
            y = self.conv(x)
        else:
            y = x
            for layer in self.conv[:-2]:
                y = layer(y)
            y = conv_bn(self.conv[-2], self.conv[-1], y)
        return x + y if self.use_res_connect else y


class MobileNetV2(ClassifierMixin, nn.Module):
    def __init__(
        self,
        *,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        dropout = check_prob(dropout, "dropout")
        self.width_mult = check_positive(width_mult, "width_mult")
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.num_features = make_divisible(1280 * max(1.0, width_mult), round_nearest)

        features: List[nn.Module] = [ConvBNAct(3, input_channel, stride=2)]
        for t, c, n, s in SETTINGS:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(
                    InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t)
                )
                input_channel = output_channel
        features.append(ConvBNAct(input_channel, self.num_features, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity(),
        )
        init_mobile_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.classifier[-1] = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )


@register_model
def mobilenet_v2(
    *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNetV2; 3,504,872 parameters at ``width_mult=1.0`` and 1000 classes."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
