"""Building blocks shared by the MobileNets: the cvops depthwise convolution and a
conv-BN-activation unit that folds the BN into the conv in eval mode (models/_conv_bn.py)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ... import ops as _ops
from .._conv_bn import conv_bn, is_depthwise


def depthwise_conv(
    channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = False
) -> nn.Module:
    """``cvops.ops.DepthwiseConv2d`` (state_dict keys equal ``nn.Conv2d(groups=channels)``'s)."""
    cls = getattr(_ops, "DepthwiseConv2d", None)
    if cls is None:
        raise RuntimeError(
            "the MobileNets need cvops.ops.DepthwiseConv2d, which this cvops build lacks"
        )
    return cls(channels, kernel_size, stride=stride, padding=padding, bias=bias)


def relu6_(x: Tensor) -> Tensor:
    return F.hardtanh(x, 0.0, 6.0, inplace=True)


class ConvBNAct(nn.Sequential):
    """``Sequential(conv, BatchNorm2d[, ReLU6])`` (so its keys are ``0.weight``, ``1.*``, as in
    torchvision's ``Conv2dNormActivation``) with the eval-mode BN folding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        depthwise: bool = False,
        activation: bool = True,
        bn_eps: float = 1e-5,
    ):
        padding = (kernel_size - 1) // 2
        if depthwise:
            if in_channels != out_channels:
                raise ValueError("a depthwise ConvBNAct needs in_channels == out_channels")
            conv = depthwise_conv(in_channels, kernel_size, stride, padding)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        layers = [conv, nn.BatchNorm2d(out_channels, eps=bn_eps)]
        if activation:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (conv_bn takes modules, which TorchScript cannot)
            x = self[1](self[0](x))
        else:
            x = conv_bn(self[0], self[1], x)
        return relu6_(x) if self.activation else x


def init_mobile_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit BN, N(0, 0.01) linear layers, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or is_depthwise(m):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
