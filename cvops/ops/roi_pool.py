"""RoI Pool: torchvision-compatible function, dispatcher registrations and nn.Module."""

from typing import List, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .. import extension
from ._errors import call_op
from ._utils import BoxesArg, boxes_to_rois, check_tensor, pair


@torch.fx.wrap  # one node in torch.fx graphs (see roi_align)
def roi_pool(
    input: Tensor,
    boxes: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI (max) Pool (Fast R-CNN), with the semantics of ``torchvision.ops.roi_pool``.

    Box corners are scaled by ``spatial_scale`` and rounded to feature-map pixels; the RoI
    (both ends inclusive, at least 1x1) is split into ``output_size`` bins with
    ``floor``/``ceil`` bounds clamped to the map, and each output is the maximum of its bin.

    Args:
        input: feature map ``[N, C, H, W]`` (float32/float64/float16/bfloat16, NCHW or
            channels_last).
        boxes: ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` or a list of
            ``Tensor[L, 4]`` boxes, one per image, in input-image coordinates.
        output_size: ``int`` or ``(height, width)`` of each pooled RoI.
        spatial_scale: feature-map size over input-image size (e.g. 1/16).

    Returns:
        ``Tensor[K, C, output_size[0], output_size[1]]`` (contiguous).

    Empty bins (RoIs outside the map) give 0 and no gradient. On ties the first maximum in
    row-major order wins and receives the gradient. A NaN in a bin propagates to the output
    (the first NaN receives the gradient; torchvision skips NaNs). Bad input raises
    ``ValueError``/``TypeError`` naming the argument, including batch indices that are out of
    range or not integers (boxes of the wrong shape: also an ``AssertionError``; the op's other
    checks: also a ``RuntimeError``, as in torchvision). A RoI whose coordinates are not finite
    yields NaN output and receives no gradient. No boxes give an empty output. The backward is
    deterministic. Scriptable, and a leaf of ``torch.fx.symbolic_trace``.
    """
    if not torch.jit.is_scripting():
        extension.require_ops()
        if not isinstance(input, Tensor):  # inline: the per-call cost of tiny RoI calls
            check_tensor(input, "input")
        pooled_h, pooled_w = pair(output_size, "output_size")
        rois = boxes_to_rois(boxes)
        op = torch.ops.cvops.roi_pool
        return call_op(op, input, rois, float(spatial_scale), pooled_h, pooled_w)[0]
    rois = boxes_to_rois(boxes)
    return torch.ops.cvops.roi_pool(input, rois, spatial_scale, output_size[0], output_size[1])[0]


class RoIPool(nn.Module):
    """``nn.Module`` form of :func:`roi_pool` (same arguments as torchvision's RoIPool)."""

    def __init__(self, output_size: Union[int, Tuple[int, int], List[int]], spatial_scale: float):
        super().__init__()
        self.output_size: Tuple[int, int] = pair(output_size, "output_size")
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return "output_size=%s, spatial_scale=%s" % (self.output_size, self.spatial_scale)


def _gather_by_argmax(grad_input: Tensor, rois: Tensor, argmax: Tensor) -> Tensor:
    """Adjoint of the backward: out[k, c, b] = grad_input[batch(k), c, argmax[k, c, b]]."""
    k, c, ph, pw = argmax.shape
    if k == 0 or grad_input.numel() == 0:
        return grad_input.new_zeros((k, c, ph, pw))
    n = grad_input.size(0)
    batch = rois[:, 0].to(torch.int64).clamp(0, n - 1)
    planes = grad_input.flatten(2)[batch]  # [K, C, H * W]
    idx = argmax.to(torch.int64).flatten(2)
    valid = (idx >= 0) & (idx < planes.size(2))
    picked = planes.gather(2, idx.clamp(0, planes.size(2) - 1))
    return torch.where(valid, picked, torch.zeros_like(picked)).view(k, c, ph, pw)


def _register():
    @torch.library.register_fake("cvops::roi_pool")
    def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
        torch._check(input.dim() == 4, lambda: "roi_pool: input must be [N, C, H, W]")
        torch._check(
            rois.dim() == 2 and rois.size(1) == 5, lambda: "roi_pool: boxes must be [K, 5]"
        )
        torch._check(
            input.dtype == rois.dtype, lambda: "roi_pool: input and boxes must have the same dtype"
        )
        torch._check(
            input.device == rois.device,
            lambda: "roi_pool: input and boxes must be on the same device",
        )
        shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
        return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)

    @torch.library.register_fake("cvops::_roi_pool_backward")
    def _roi_pool_backward_fake(
        grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch, channels, h, w
    ):
        return grad.new_empty((batch, channels, h, w))

    def setup_context(ctx, inputs, output):
        input, rois, spatial_scale, pooled_h, pooled_w = inputs
        _, argmax = output
        ctx.save_for_backward(rois, argmax)
        ctx.input_shape = tuple(input.shape)
        ctx.args = (spatial_scale, pooled_h, pooled_w)

    def backward(ctx, grad, _grad_argmax):
        rois, argmax = ctx.saved_tensors
        spatial_scale, pooled_h, pooled_w = ctx.args
        n, c, h, w = ctx.input_shape
        grad_input = torch.ops.cvops._roi_pool_backward(
            grad, rois, argmax, spatial_scale, pooled_h, pooled_w, n, c, h, w
        )
        return grad_input, None, None, None, None

    torch.library.register_autograd("cvops::roi_pool", backward, setup_context=setup_context)

    # The backward is linear in grad (a scatter through argmax); its own gradient is the
    # matching gather, which gives double backward (gradgradcheck).
    def setup_context_bw(ctx, inputs, output):
        ctx.save_for_backward(inputs[1], inputs[2])

    def backward_bw(ctx, grad_grad_input):
        rois, argmax = ctx.saved_tensors
        return (_gather_by_argmax(grad_grad_input, rois, argmax),) + (None,) * 9

    torch.library.register_autograd(
        "cvops::_roi_pool_backward", backward_bw, setup_context=setup_context_bw
    )


if extension.has_ops():
    _register()
