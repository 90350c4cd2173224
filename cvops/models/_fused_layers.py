"""The one place that decides how the models' convolutions and box-head linears run:
``conv_block`` computes ``relu(bn(conv(x)) + residual)`` (BatchNorm, residual and ReLU each
optional), ``linear_block`` ``relu(linear(x))``.

At CPU inference (autograd off: ``torch.no_grad`` / ``torch.inference_mode``; float32; eager
mode; oneDNN available) each is one oneDNN primitive: the BatchNorm folded into the weight
(:func:`fold_bn`), the weight reordered once into oneDNN's blocked layout and cached until a
parameter or buffer changes, the residual add and the ReLU as post-ops, channels-last
activations; 3x3 stride-1 convolutions of at least 64 channels run as Winograd F(2x2, 3x3)
instead (:mod:`._winograd`: 2.25x fewer multiply-adds; cvops' transforms around 16 oneDNN
matrix products). The plain path reorders the weight on every call and the add and the ReLU each
take a pass over the activation map; on ResNet-50 + FPN at 800x800 the oneDNN convolutions
are 1.38x faster, and the Faster R-CNN box head's 12544 x 1024 linear 1.13x.
Everything else (training, autograd on, other devices and dtypes, TorchScript, tracing,
torch.compile and export) runs the reference ops: the folded convolution where
:func:`can_fold` allows, ``F.linear``, then ``+`` and ``relu``. The two differ by float32
rounding only: oneDNN's channels-last convolutions and its linear sum in another order than
the NCHW convolution and MKL's GEMM (rms error against float64 ~2x the plain path's on a
ResNet-50 feature map, the same ~1e-7 relative). docs/models.md, "Speed and rounding".
"""

import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _conv_bn, _winograd
from ._conv_bn import fold_bn, is_depthwise

# conv or linear module -> (key, packed weight, bias): the cache dies with the module, and
# lives outside it so that state_dict, deepcopy and pickling never see oneDNN tensors.
_PACKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

# False runs the reference ops everywhere (the benchmarks' "before" step).
ONEDNN = True


def conv_block(
    conv: nn.Module,
    x: Tensor,
    bn: Optional[nn.Module] = None,
    relu: bool = False,
    residual: Optional[Tensor] = None,
) -> Tensor:
    """``relu(bn(conv(x)) + residual)``, each of ``bn``, ``residual`` and ``relu`` optional."""
    if not torch.jit.is_scripting() and _onednn_applies(conv, bn, x):
        return _onednn_conv_block(conv, x, bn, relu, residual)
    out = conv(x) if bn is None else _conv_bn.conv_bn(conv, bn, x)
    if residual is not None:
        out = out + residual
    return F.relu(out) if relu else out


@torch.jit.unused
def _onednn_inference(x: Tensor, dim: int) -> bool:
    """Whether this call is CPU float32 inference in eager mode with oneDNN available."""
    # is_compiling first: under torch.compile it is a constant and ends the check before
    # anything Dynamo refuses to trace
    return (
        not torch.compiler.is_compiling()
        and ONEDNN
        and not torch.is_grad_enabled()
        and type(x) is Tensor  # (an fx Proxy is not)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == dim
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.jit.is_tracing()
    )


@torch.jit.unused
def _onednn_applies(conv: nn.Module, bn: Optional[nn.Module], x: Tensor) -> bool:
    if not _onednn_inference(x, 4):
        return False
    if type(conv) is not nn.Conv2d or is_depthwise(conv) or isinstance(conv.padding, str):
        return False
    if conv.padding_mode != "zeros" or (bn is not None and not _conv_bn.can_fold(conv, bn)):
        return False
    # The cache key reads version counters, which inference tensors do not have.
    return not any(t.is_inference() for t in _sources(conv, bn))


def _sources(layer: nn.Module, bn: Optional[nn.Module]):
    tensors = [layer.weight, layer.bias]
    if bn is not None:
        tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return [t for t in tensors if t is not None]


@torch.jit.unused
def _onednn_conv_block(
    conv: nn.Conv2d,
    x: Tensor,
    bn: Optional[nn.Module],
    relu: bool,
    residual: Optional[Tensor],
) -> Tensor:
    x = x.contiguous(memory_format=torch.channels_last)
    if _winograd.applies(conv):
        weights, bias = _packed_weight(conv, bn, x, "winograd")
        return _winograd.conv3x3(x, weights, bias, residual, relu)
    weight, bias = _packed_weight(conv, bn, x, "conv")
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, *args, "relu" if relu else "none", [], ""
        )
    residual = residual.contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, weight, bias, *args, "add", None, "relu" if relu else None, [], ""
    )


def _packed_weight(layer: nn.Module, bn: Optional[nn.Module], x: Tensor, form: str):
    """``layer``'s weight (``bn`` folded in) in oneDNN's layout for ``form`` ("linear",
    "conv", or "winograd": the 16 transformed matrices) and its bias, cached until one of
    their sources changes."""
    sources = _sources(layer, bn)
    eps = None if bn is None else bn.eps
    # form too: a conv whose stride or padding is changed in place switches forms
    key = tuple((t.data_ptr(), t._version) for t in sources) + (eps, form)
    cached = _PACKED.get(layer)
    if cached is None or cached[0] != key:
        weight, bias = (layer.weight, layer.bias) if bn is None else fold_bn(layer, bn)
        weight = weight.detach().contiguous()
        if form == "linear":
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        elif form == "winograd":
            packed = _winograd.packed_weights(weight)
        else:
            # The layout oneDNN picks for this problem size; a call with another size still
            # computes the same result (oneDNN reorders again if it wants another layout).
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.to_mkldnn(),
                list(layer.padding),
                list(layer.stride),
                list(layer.dilation),
                layer.groups,
                list(x.shape),
            )
        bias = None if bias is None else bias.detach().contiguous()
        cached = _PACKED[layer] = (key, packed, bias)
    return cached[1], cached[2]


def linear_block(linear: nn.Linear, x: Tensor, relu: bool = False) -> Tensor:
    """``relu(linear(x))`` (ReLU optional) for a 2-D ``x``."""
    if (
        not torch.jit.is_scripting()
        and _onednn_inference(x, 2)
        and type(linear) is nn.Linear
        and not any(t.is_inference() for t in _sources(linear, None))
    ):
        weight, bias = _packed_weight(linear, None, x, "linear")
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), weight, bias, "relu" if relu else "none", [], ""
        )
    out = linear(x)
    return F.relu(out) if relu else out


class ConvReLU(nn.Sequential):
    """``Sequential(conv, ReLU)`` (keys ``0.*``, as torchvision's
    ``Conv2dNormActivation(norm_layer=None)``) run through :func:`conv_block`."""

    def __init__(self, conv: nn.Module):
        super().__init__(conv, nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (conv_block takes modules, which TorchScript cannot)
            return self[1](self[0](x))
        return conv_block(self[0], x, relu=True)


class ConvBN(nn.Sequential):
    """``Sequential(conv, norm)`` (keys ``0.*``, ``1.*``, as ResNet's ``downsample``) run
    through :func:`conv_block`: one folded convolution where :func:`can_fold` allows."""

    def __init__(self, conv: nn.Module, norm: nn.Module):
        super().__init__(conv, norm)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (conv_block takes modules, which TorchScript cannot)
            return self[1](self[0](x))
        return conv_block(self[0], x, self[1])
