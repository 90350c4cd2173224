"""RoI Align: torchvision-compatible function, dispatcher registrations and nn.Module."""

from typing import List, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .. import extension
from ._errors import call_op
from ._utils import BoxesArg, boxes_to_rois, check_tensor, pair


# fx.wrap: torch.fx.symbolic_trace records a call to roi_align as one node instead of tracing
# into its argument checks (as torchvision does for its RoI ops).
@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align (Mask R-CNN), with exactly the semantics of ``torchvision.ops.roi_align``.

    Args:
        input: feature map ``[N, C, H, W]`` (float32/float64/float16/bfloat16, NCHW or
            channels_last).
        boxes: ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` or a list of
            ``Tensor[L, 4]`` boxes, one per image, in input-image coordinates.
        output_size: ``int`` or ``(height, width)`` of each pooled RoI.
        spatial_scale: feature-map size over input-image size (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; ``-1`` or ``0`` means adaptive,
            ``ceil(roi_size / output_size)`` (capped at 16384 for absurdly large boxes).
        aligned: shift boxes by -0.5 pixel so that samples align with pixel centres.

    Returns:
        ``Tensor[K, C, output_size[0], output_size[1]]`` (contiguous).

    Bad input raises ``ValueError``/``TypeError`` naming the argument, including batch
    indices that are out of range or not integers; boxes of the wrong shape raise an error
    that is also an ``AssertionError``, the op's other checks one that is also a
    ``RuntimeError`` (torchvision's types). A RoI whose coordinates are not finite yields
    NaN output and receives no gradient. No boxes give an empty output. Scriptable with
    ``torch.jit.script`` and a leaf of ``torch.fx.symbolic_trace``.
    """
    if not torch.jit.is_scripting():
        extension.require_ops()
        if not isinstance(input, Tensor):  # inline: the per-call cost of tiny RoI calls
            check_tensor(input, "input")
        pooled_h, pooled_w = pair(output_size, "output_size")
        return call_op(
            torch.ops.cvops.roi_align,
            input,
            boxes_to_rois(boxes),
            float(spatial_scale),
            pooled_h,
            pooled_w,
            int(sampling_ratio),
            bool(aligned),
        )
    return torch.ops.cvops.roi_align(
        input,
        boxes_to_rois(boxes),
        spatial_scale,
        output_size[0],
        output_size[1],
        sampling_ratio,
        aligned,
    )


class RoIAlign(nn.Module):
    """``nn.Module`` form of :func:`roi_align` (same arguments as torchvision's RoIAlign)."""

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int], List[int]],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ):
        super().__init__()
        self.output_size: Tuple[int, int] = pair(output_size, "output_size")
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return "output_size=%s, spatial_scale=%s, sampling_ratio=%s, aligned=%s" % (
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )


def _register():
    @torch.library.register_fake("cvops::roi_align")
    def _roi_align_fake(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
    ):
        torch._check(input.dim() == 4, lambda: "roi_align: input must be [N, C, H, W]")
        torch._check(
            rois.dim() == 2 and rois.size(1) == 5, lambda: "roi_align: boxes must be [K, 5]"
        )
        torch._check(
            input.dtype == rois.dtype, lambda: "roi_align: input and boxes must have the same dtype"
        )
        torch._check(
            input.device == rois.device,
            lambda: "roi_align: input and boxes must be on the same device",
        )
        return input.new_empty((rois.size(0), input.size(1), pooled_height, pooled_width))

    @torch.library.register_fake("cvops::_roi_align_backward")
    def _roi_align_backward_fake(
        grad,
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        height,
        width,
        sampling_ratio,
        aligned,
    ):
        return grad.new_empty((batch_size, channels, height, width))

    def setup_context(ctx, inputs, output):
        input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.input_shape = tuple(input.shape)
        ctx.args = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)

    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = ctx.args
        n, c, h, w = ctx.input_shape
        grad_input = torch.ops.cvops._roi_align_backward(
            grad, rois, spatial_scale, pooled_h, pooled_w, n, c, h, w, sampling_ratio, aligned
        )
        return grad_input, None, None, None, None, None, None

    torch.library.register_autograd("cvops::roi_align", backward, setup_context=setup_context)

    # The backward is linear in grad, and its own gradient is the forward op: this gives
    # double backward (gradgradcheck) at no extra kernel cost.
    def setup_context_bw(ctx, inputs, output):
        grad, rois, spatial_scale, pooled_h, pooled_w = inputs[:5]
        ctx.save_for_backward(rois)
        ctx.args = (spatial_scale, pooled_h, pooled_w, inputs[9], inputs[10])

    def backward_bw(ctx, grad_grad_input):
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = ctx.args
        grad_grad = torch.ops.cvops.roi_align(
            grad_grad_input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
        )
        return (grad_grad,) + (None,) * 10

    torch.library.register_autograd(
        "cvops::_roi_align_backward", backward_bw, setup_context=setup_context_bw
    )


if extension.has_ops():
    _register()
