"""ResNet 18/34/50/101/152 (post-activation, ReLU after the residual add, stride on the
Bottleneck's 3x3: "v1.5"); parameter names equal ``torchvision.models.resnet*``'s (and
timm's ``resnet*``).

Each conv-BN(-add)(-ReLU) runs through models/_fused_layers.py: one folded conv where exact
(eval-mode BatchNorm2d, FrozenBatchNorm2d), and at CPU inference one oneDNN convolution with
a cached packed weight and the add and ReLU fused; the state_dict is unchanged.

``replace_stride_with_dilation=[False, True, True]`` gives the output-stride-8 backbone that
FCN and DeepLab use; ``zero_init_residual=True`` starts each residual branch at zero.
"""

from typing import Callable, List, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
from torch import Tensor

from .._fused_layers import ConvBN, conv_block
from .._registry import register_model
from ._base import ClassifierMixin, check_num_classes, linear_or_identity

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        bias=False,
        dilation=dilation,
    )


def conv1x1(in_planes, out_planes, stride=1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """3x3-BN-ReLU-3x3-BN + shortcut, ReLU."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Optional[NormLayer] = None,
    ):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        if dilation > 1:
            raise ValueError(
                "BasicBlock does not support dilation > 1 (replace_stride_with_dilation needs "
                "a Bottleneck ResNet: resnet50/101/152)"
            )
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if torch.jit.is_scripting():  # (conv_block takes modules, which TorchScript cannot)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)
        out = conv_block(self.conv1, x, self.bn1, relu=True)
        return conv_block(self.conv2, out, self.bn2, relu=True, residual=identity)


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (stride, dilation, groups) - 1x1 expand (x4), each with BN; shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Optional[NormLayer] = None,
    ):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if torch.jit.is_scripting():  # (conv_block takes modules, which TorchScript cannot)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)
        out = conv_block(self.conv1, x, self.bn1, relu=True)
        out = conv_block(self.conv2, out, self.bn2, relu=True)
        return conv_block(self.conv3, out, self.bn3, relu=True, residual=identity)


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(ClassifierMixin, nn.Module):
    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Optional[Sequence[bool]] = None,
        norm_layer: Optional[NormLayer] = None,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation must be None or 3 booleans (layer2..layer4), "
                "got %r" % (replace_stride_with_dilation,)
            )
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc = linear_or_identity(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: Block, planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = ConvBN(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers: List[nn.Module] = [
            block(
                self.inplanes,
                planes,
                stride,
                downsample,
                self.groups,
                self.base_width,
                previous_dilation,
                norm_layer,
            )
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    groups=self.groups,
                    base_width=self.base_width,
                    dilation=self.dilation,
                    norm_layer=norm_layer,
                )
            )
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (conv_block takes modules, which TorchScript cannot)
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        else:
            x = self.maxpool(conv_block(self.conv1, x, self.bn1, relu=True))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.fc = linear_or_identity(self.num_features, num_classes)


def _resnet(block: Block, layers: Sequence[int], **kwargs) -> ResNet:
    return ResNet(block, layers, **kwargs)


@register_model
def resnet18(
    *,
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    norm_layer: Optional[NormLayer] = None,
) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return _resnet(
        BasicBlock,
        [2, 2, 2, 2],
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
        norm_layer=norm_layer,
    )


@register_model
def resnet34(
    *,
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    norm_layer: Optional[NormLayer] = None,
) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3])."""
    return _resnet(
        BasicBlock,
        [3, 4, 6, 3],
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
        norm_layer=norm_layer,
    )


def _bottleneck(layers, num_classes, zero_init_residual, replace_stride_with_dilation, norm_layer):
    return _resnet(
        Bottleneck,
        layers,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
        replace_stride_with_dilation=replace_stride_with_dilation,
        norm_layer=norm_layer,
    )


@register_model
def resnet50(
    *,
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    replace_stride_with_dilation: Optional[Sequence[bool]] = None,
    norm_layer: Optional[NormLayer] = None,
) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3])."""
    return _bottleneck(
        [3, 4, 6, 3], num_classes, zero_init_residual, replace_stride_with_dilation, norm_layer
    )


@register_model
def resnet101(
    *,
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    replace_stride_with_dilation: Optional[Sequence[bool]] = None,
    norm_layer: Optional[NormLayer] = None,
) -> ResNet:
    """ResNet-101 (Bottleneck, [3, 4, 23, 3])."""
    return _bottleneck(
        [3, 4, 23, 3], num_classes, zero_init_residual, replace_stride_with_dilation, norm_layer
    )


@register_model
def resnet152(
    *,
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    replace_stride_with_dilation: Optional[Sequence[bool]] = None,
    norm_layer: Optional[NormLayer] = None,
) -> ResNet:
    """ResNet-152 (Bottleneck, [3, 8, 36, 3])."""
    return _bottleneck(
        [3, 8, 36, 3], num_classes, zero_init_residual, replace_stride_with_dilation, norm_layer
    )
