"""VGG 11/13/16/19 (configurations A, B, D, E) with and without batch norm; parameter
names equal ``torchvision.models.vgg*``'s."""

from typing import List, Union

import torch.nn as nn

from .._registry import register_model
from ._base import SequentialHeadMixin, check_num_classes, check_prob, linear_or_identity

# "M" is a 2x2 max pool; numbers are 3x3 conv widths.
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg: List[Union[int, str]], batch_norm: bool = False) -> nn.Sequential:
    """The convolutional trunk: 3x3 pad-1 convs (with bias), optional BN, ReLU, max pools."""
    layers: List[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(SequentialHeadMixin, nn.Module):
    def __init__(
        self,
        features: nn.Module,
        *,
        num_classes: int = 1000,
        dropout: float = 0.5,
        init_weights: bool = True,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        dropout = check_prob(dropout, "dropout")
        self.num_features = 4096
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            linear_or_identity(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)


def _vgg(cfg: str, batch_norm: bool, num_classes: int, dropout: float) -> VGG:
    return VGG(make_features(CONFIGS[cfg], batch_norm), num_classes=num_classes, dropout=dropout)


@register_model
def vgg11(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-11 (configuration A)."""
    return _vgg("A", False, num_classes, dropout)


@register_model
def vgg11_bn(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-11 (configuration A) with batch norm."""
    return _vgg("A", True, num_classes, dropout)


@register_model
def vgg13(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-13 (configuration B)."""
    return _vgg("B", False, num_classes, dropout)


@register_model
def vgg13_bn(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-13 (configuration B) with batch norm."""
    return _vgg("B", True, num_classes, dropout)


@register_model
def vgg16(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg("D", False, num_classes, dropout)


@register_model
def vgg16_bn(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-16 (configuration D) with batch norm."""
    return _vgg("D", True, num_classes, dropout)


@register_model
def vgg19(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg("E", False, num_classes, dropout)


@register_model
def vgg19_bn(*, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """VGG-19 (configuration E) with batch norm."""
    return _vgg("E", True, num_classes, dropout)
