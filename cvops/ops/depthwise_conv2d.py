"""Depthwise 2-D convolution: function, dispatcher registrations and nn.Module."""

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .. import extension
from ._errors import call_op
from ._utils import check_tensor, pair
from .depthwise_cpu_plan import CPU_KERNELS, cpu_has_avx512, cpu_plan, force_cpu_kernel  # noqa: F401

IntPair = Union[int, Tuple[int, int]]


@torch.fx.wrap  # one node in torch.fx graphs
def depthwise_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: BroadcastingList2[int] = 1,
    padding: BroadcastingList2[int] = 0,
    dilation: BroadcastingList2[int] = 1,
) -> Tensor:
    """Depthwise convolution, exactly ``F.conv2d(input, weight, bias, stride, padding,
    dilation, groups=input.shape[1])``.

    Args:
        input: ``[N, C, H, W]`` (float32/float64/float16/bfloat16, NCHW or channels_last).
        weight: ``[C * multiplier, 1, kH, kW]``; output channel ``co`` convolves input
            channel ``co // multiplier``.
        bias: optional ``[C * multiplier]``.
        stride, padding, dilation: ``int`` or ``(h, w)``; stride and dilation positive,
            padding non-negative (zero padding).

    Returns:
        ``[N, C * multiplier, oH, oW]`` in the input's memory format.

    Bad input (wrong ranks, ``weight.size(0)`` not a multiple of ``C``, a dilated kernel
    larger than the padded input, non-positive stride/dilation, negative padding, dtype or
    device mismatch) raises ``ValueError``/``TypeError`` naming the argument (the op's checks:
    also ``RuntimeError``, the type of ``F.conv2d``'s errors). The backward is deterministic
    on CPU and CUDA (no floating-point atomics). Scriptable.
    """
    if not torch.jit.is_scripting():
        extension.require_ops()
        check_tensor(input, "input")
        check_tensor(weight, "weight")
        if bias is not None and not isinstance(bias, Tensor):
            raise TypeError("bias must be a Tensor or None, got %s" % type(bias).__name__)
        return call_op(
            torch.ops.cvops.depthwise_conv2d,
            input,
            weight,
            bias,
            list(pair(stride, "stride")),
            list(pair(padding, "padding")),
            list(pair(dilation, "dilation")),
        )
    return torch.ops.cvops.depthwise_conv2d(input, weight, bias, stride, padding, dilation)


class DepthwiseConv2d(nn.Module):
    """Depthwise convolution layer, a drop-in for
    ``nn.Conv2d(in_channels, in_channels * channel_multiplier, kernel_size, stride, padding,
    dilation, groups=in_channels, bias=bias, padding_mode=padding_mode)``.

    Its parameters (``weight [C * multiplier, 1, kH, kW]``, ``bias [C * multiplier]``) and
    ``state_dict`` keys equal ``nn.Conv2d``'s, so torchvision/timm MobileNet weights load with
    ``strict=True``; initialisation follows ``nn.Conv2d`` too.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        bias: bool = True,
        channel_multiplier: int = 1,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if in_channels <= 0 or channel_multiplier <= 0:
            raise ValueError(
                "in_channels and channel_multiplier must be positive, got %d and %d"
                % (in_channels, channel_multiplier)
            )
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                "padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got %r"
                % (padding_mode,)
            )
        self.in_channels = in_channels
        self.out_channels = in_channels * channel_multiplier
        self.channel_multiplier = channel_multiplier
        self.groups = in_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.padding_mode = padding_mode
        # nn.Conv2d attributes that helpers such as torch.nn.utils.fuse_conv_bn_eval read
        self.transposed = False
        self.output_padding = (0, 0)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_channels, 1, *self.kernel_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "DepthwiseConv2d":
        """The equivalent layer of a depthwise ``nn.Conv2d`` (``groups == in_channels``),
        sharing its parameters."""
        if conv.groups != conv.in_channels or conv.out_channels % conv.in_channels != 0:
            raise ValueError("from_conv2d needs a depthwise nn.Conv2d (groups == in_channels)")
        if isinstance(conv.padding, str):
            raise ValueError("from_conv2d does not support string padding (%r)" % conv.padding)
        layer = cls(
            conv.in_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
            channel_multiplier=conv.out_channels // conv.in_channels,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        layer.weight = conv.weight
        layer.bias = conv.bias
        return layer

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            input = F.pad(input, (pw, pw, ph, ph), mode=self.padding_mode)
            return depthwise_conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation)
        return depthwise_conv2d(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation
        )

    def extra_repr(self) -> str:
        s = "%d, %d, kernel_size=%s, stride=%s" % (
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
        )
        if self.padding != (0, 0):
            s += ", padding=%s" % (self.padding,)
        if self.dilation != (1, 1):
            s += ", dilation=%s" % (self.dilation,)
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += ", padding_mode=%s" % self.padding_mode
        return s


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _channels_last(t: Tensor) -> bool:
    # The kernels' rule (C++ side): channels-last strides that are not also NCHW-contiguous.
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _like(t: Tensor, shape, layout_of: Tensor) -> Tensor:
    out = t.new_empty(shape)
    if _channels_last(layout_of):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _register():
    ops = torch.ops.cvops

    @torch.library.register_fake("cvops::depthwise_conv2d")
    def _forward_fake(input, weight, bias, stride, padding, dilation):
        torch._check(input.dim() == 4, lambda: "depthwise_conv2d: input must be [N, C, H, W]")
        torch._check(
            weight.dim() == 4 and weight.size(1) == 1,
            lambda: "depthwise_conv2d: weight must be [C_out, 1, kH, kW]",
        )
        torch._check(
            weight.size(0) % input.size(1) == 0,
            lambda: "depthwise_conv2d: weight.size(0) must be a multiple of the input channels",
        )
        oh = _out_size(input.size(2), weight.size(2), stride[0], padding[0], dilation[0])
        ow = _out_size(input.size(3), weight.size(3), stride[1], padding[1], dilation[1])
        torch._check(oh > 0 and ow > 0, lambda: "depthwise_conv2d: kernel larger than input")
        return _like(input, (input.size(0), weight.size(0), oh, ow), input)

    @torch.library.register_fake("cvops::_depthwise_conv2d_backward_input")
    def _backward_input_fake(grad, weight, batch, channels, height, width, stride, padding, dil):
        return _like(grad, (batch, channels, height, width), grad)

    @torch.library.register_fake("cvops::_depthwise_conv2d_backward_weight")
    def _backward_weight_fake(grad, input, kernel_h, kernel_w, stride, padding, dilation):
        c_out = grad.size(1)
        return input.new_empty((c_out, 1, kernel_h, kernel_w)), input.new_empty((c_out,))

    @torch.library.register_fake("cvops::_depthwise_conv2d_backward")
    def _backward_fake(grad, input, weight, stride, padding, dilation):
        c_out = grad.size(1)
        return (
            _like(grad, input.shape, grad),
            weight.new_empty(weight.shape),
            weight.new_empty((c_out,)),
        )

    # The forward op's autograd is registered in C++ (csrc/ops/autograd/): a Python
    # registration cost ~30 us more per forward+backward, a fifth of a small-plane step.

    # Double backward. Both backward ops are bilinear, and their derivatives are the three
    # kernels again: gradgradcheck passes at no extra kernel cost.
    def input_grad_derivatives(grad, weight, gg_input, args, want_grad, want_weight):
        """d/d(grad, weight) of _depthwise_conv2d_backward_input(grad, weight) against
        gg_input (None where not wanted)."""
        stride, padding, dilation = args
        d_grad = d_weight = None
        if want_grad:
            d_grad = ops.depthwise_conv2d(gg_input, weight, None, stride, padding, dilation)
        if want_weight:
            d_weight, _ = ops._depthwise_conv2d_backward_weight(
                grad, gg_input, weight.size(2), weight.size(3), stride, padding, dilation
            )
        return d_grad, d_weight

    def weight_grad_derivatives(grad, input, gg_weight, gg_bias, args, want_grad, want_input):
        """d/d(grad, input) of _depthwise_conv2d_backward_weight(grad, input) against
        (gg_weight, gg_bias) (None where not wanted)."""
        stride, padding, dilation = args
        d_grad = d_input = None
        if want_grad:
            d_grad = ops.depthwise_conv2d(input, gg_weight, gg_bias, stride, padding, dilation)
        if want_input:
            n, c, h, w = input.shape
            d_input = ops._depthwise_conv2d_backward_input(
                grad, gg_weight, n, c, h, w, stride, padding, dilation
            )
        return d_grad, d_input

    def setup_bw_input(ctx, inputs, output):
        grad, weight = inputs[:2]
        ctx.save_for_backward(grad, weight)
        ctx.args = tuple(inputs[6:9])

    def backward_bw_input(ctx, gg_input):
        grad, weight = ctx.saved_tensors
        d_grad, d_weight = input_grad_derivatives(
            grad, weight, gg_input, ctx.args, *ctx.needs_input_grad[:2]
        )
        return (d_grad, d_weight) + (None,) * 7

    torch.library.register_autograd(
        "cvops::_depthwise_conv2d_backward_input", backward_bw_input, setup_context=setup_bw_input
    )

    def setup_bw_weight(ctx, inputs, output):
        grad, input, kernel_h, kernel_w, stride, padding, dilation = inputs
        ctx.save_for_backward(grad, input)
        ctx.kernel = (kernel_h, kernel_w)
        ctx.args = (stride, padding, dilation)

    def backward_bw_weight(ctx, gg_weight, gg_bias):
        grad, input = ctx.saved_tensors
        if gg_weight is None:
            gg_weight = grad.new_zeros((grad.size(1), 1, *ctx.kernel))
        d_grad, d_input = weight_grad_derivatives(
            grad, input, gg_weight, gg_bias, ctx.args, *ctx.needs_input_grad[:2]
        )
        return (d_grad, d_input) + (None,) * 5

    torch.library.register_autograd(
        "cvops::_depthwise_conv2d_backward_weight",
        backward_bw_weight,
        setup_context=setup_bw_weight,
    )

    # Both gradients at once: the two ops' derivatives, summed where both reach `grad`.
    def setup_bw_both(ctx, inputs, output):
        grad, input, weight, stride, padding, dilation = inputs
        ctx.save_for_backward(grad, input, weight)
        ctx.args = (stride, padding, dilation)

    def backward_bw_both(ctx, gg_input, gg_weight, gg_bias):
        grad, input, weight = ctx.saved_tensors
        want_grad, want_input, want_weight = ctx.needs_input_grad[:3]
        parts, d_input, d_weight = [], None, None
        if gg_input is not None:
            d_grad, d_weight = input_grad_derivatives(
                grad, weight, gg_input, ctx.args, want_grad, want_weight
            )
            parts.append(d_grad)
        if gg_weight is not None or gg_bias is not None:
            d_grad, d_input = weight_grad_derivatives(
                grad,
                input,
                torch.zeros_like(weight) if gg_weight is None else gg_weight,
                gg_bias,
                ctx.args,
                want_grad,
                want_input and gg_weight is not None,
            )
            parts.append(d_grad)
        parts = [p for p in parts if p is not None]
        d_grad = sum(parts) if parts else None
        return d_grad, d_input, d_weight, None, None, None

    torch.library.register_autograd(
        "cvops::_depthwise_conv2d_backward", backward_bw_both, setup_context=setup_bw_both
    )


if extension.has_ops():
    _register()
