"""Winograd F(2x2, 3x3) (Lavin & Gray, CVPR 2016, arXiv:1509.09308) for the 3x3 convolutions
of the CPU inference path of :mod:`._fused_layers`, which decides when it runs.

Each 2x2 block of outputs is computed from the 4x4 input tile around it as
``A^T [(G g G^T) * (B^T d B)] A``: the element-wise product of the transformed weight and tile
becomes, summed over input channels, 16 matrix products ``V[p] @ U[p]^T`` (``T`` tiles x ``C``
channels by ``C`` x ``K``), 16 multiply-adds per tile and channel pair against the direct
convolution's 36: 2.25x fewer. The input and output transforms (additions only) are cvops'
``_winograd_f2x3_input`` / ``_winograd_f2x3_output_`` (the output one also adds the bias and
the residual and applies the ReLU), the 16 products oneDNN's linear with packed weights.

The weight transform runs once per weight (cached by the caller) in float64. The float32
result is more accurate than oneDNN's direct channels-last convolution on the detectors'
layers (max error against float64 1.4e-6 to 2.5e-6 against 2.7e-6 to 5.9e-6, 64 to 512
channels): the transformed sums have fewer terms. docs/models.md, "Speed and rounding".
"""

from typing import List, Optional

import torch
from torch import Tensor, nn

# G of F(2x2, 3x3): U = G g G^T is the 4x4 transformed 3x3 kernel.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

# Narrower layers stay on the direct convolution (see applies).
MIN_CHANNELS = 64

# Bytes of transformed tiles (V, and likewise the products M) per chunk of tiles: under
# glibc's largest mmap threshold (32 MiB), so that with its default settings they come from
# the heap instead of a fresh, page-faulting mmap on every call. Smaller chunks were slower
# (1 and 4 MiB: 1.27x and 1.10x the time at 256 channels on 128x128, one thread).
CHUNK_BYTES = 16 << 20


def applies(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a convolution F(2x2, 3x3) computes: 3x3, stride 1, padding 1,
    undilated, ungrouped, at least ``MIN_CHANNELS`` input and output channels: the layers it
    was measured on against oneDNN's direct convolution (64 to 512 channels, 1.3x to 1.8x
    faster down to 16x16 planes, even at 8x8); narrower ones were not measured."""
    return (
        tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.in_channels >= MIN_CHANNELS
        and conv.out_channels >= MIN_CHANNELS
    )


def transform_weight(weight: Tensor) -> Tensor:
    """``[K, C, 3, 3]`` to the 16 transformed matrices ``U[4i + j] = (G g G^T)[i][j]`` as
    ``[16, K, C]``, computed in float64 and rounded once to ``weight``'s dtype."""
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ij,kcjl,ml->imkc", g, weight.detach().double(), g)
    return u.reshape(16, weight.shape[0], weight.shape[1]).to(weight.dtype)


def packed_weights(weight: Tensor) -> List[Tensor]:
    """The transformed matrices, each in oneDNN's linear layout."""
    u = transform_weight(weight)
    return [torch.ops.mkldnn._reorder_linear_weight(u[p].contiguous(), None) for p in range(16)]


def conv3x3(
    x: Tensor,
    weights: List[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    relu: bool,
) -> Tensor:
    """``relu(conv3x3(x) + bias + residual)`` (padding 1) for a channels-last float32 ``x``,
    from :func:`packed_weights`; the result is channels-last."""
    n, c, h, w = x.shape
    out = torch.empty(
        (n, weights[0].size(0), h, w), dtype=x.dtype, memory_format=torch.channels_last
    )
    tiles = n * ((h + 1) // 2) * ((w + 1) // 2)
    chunk = max(1, CHUNK_BYTES // (16 * 4 * max(c, out.size(1))))
    for begin in range(0, tiles, chunk):
        count = min(chunk, tiles - begin)
        v = torch.ops.cvops._winograd_f2x3_input(x, begin, count)
        m = [
            torch.ops.mkldnn._linear_pointwise(v[p], weights[p], None, "none", [], "")
            for p in range(16)
        ]
        torch.ops.cvops._winograd_f2x3_output_(out, m, begin, bias, residual, relu)
    return out
