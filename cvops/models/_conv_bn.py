"""A convolution followed by a BatchNorm, run as one folded convolution where that is exact.

Folding is exact algebra (``bn(conv(x)) == conv'(x)`` with ``w' = w * s``,
``b' = beta - mean * s (+ b * s)``, ``s = gamma / sqrt(var + eps)``) recomputed on every
forward from the live parameters, so it never goes stale and the state_dict is unchanged; it
saves one full pass over every activation map. It applies to a ``BatchNorm2d`` in eval mode
and to a ``FrozenBatchNorm2d`` in either mode (its statistics never change; gradients still
reach the conv's weight through ``w * s``). A BatchNorm in training mode runs unfused, on
batch statistics.

The result differs from the unfused pair by float rounding only (a few ulp per layer).
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import ops as _ops
from ..ops import depthwise_conv2d

# one node in torch.fx graphs, as where cvops.ops defines it (fx.wrap patches this module's
# name only)
torch.fx.wrap("depthwise_conv2d")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers (torchvision's
    ``FrozenBatchNorm2d``: keys ``weight``, ``bias``, ``running_mean``, ``running_var``; a
    BatchNorm2d state_dict loads into it, its ``num_batches_tracked`` ignored)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return "%d, eps=%s" % (self.weight.shape[0], self.eps)


def is_depthwise(module: nn.Module) -> bool:
    cls = getattr(_ops, "DepthwiseConv2d", None)
    return cls is not None and isinstance(module, cls)


def can_fold(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn(conv(x))`` may run as one convolution (see the module docstring)."""
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        return False
    if isinstance(bn, FrozenBatchNorm2d):
        return True
    return (
        isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def fold_bn(conv: nn.Module, bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """Weight and bias of ``conv`` followed by ``bn`` (eval statistics), as one conv. The
    weight keeps ``conv.weight``'s memory format (channels-last stays channels-last)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    return weight, bias.to(conv.weight.dtype)


def conv_forward(conv: nn.Module, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``conv`` (an ``nn.Conv2d`` or a cvops ``DepthwiseConv2d``) with other parameters."""
    if is_depthwise(conv):
        return depthwise_conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def conv_bn(conv: nn.Module, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))``, as one folded conv where :func:`can_fold` allows."""
    if can_fold(conv, bn):
        return conv_forward(conv, x, *fold_bn(conv, bn))
    return bn(conv(x))
