"""Depthwise conv2d CPU: the AVX-512 stride-2 row kernels (float32, NCHW, 3x3, stride 2,
dilation 1, outputs up to 32 wide), which the masked path tries first for the forward and
all gradients. Checked against F.conv2d(groups=C) in float64 over the paddings (their parity
picks the even/odd column split), widths and heights (input rows no tap reaches), column
chunks and image groupings the kernels must get right."""

import pytest
import torch

from tests.conftest import requires_ops
from tests.ops.test_depthwise_conv2d import (
    check_against_conv2d,
    check_weight_grad_with_infinities,
)

pytestmark = [requires_ops, pytest.mark.usefixtures("default_depthwise_path")]


STRIDE2 = [
    # shape, padding
    ((8, 16, 28, 28), (1, 1)),  # MobileNetV2's 28 -> 14
    ((3, 5, 14, 14), (1, 1)),  # two images, then one
    ((2, 3, 13, 15), (1, 1)),  # odd sizes
    ((2, 3, 12, 12), (0, 0)),  # even padding: the other column split
    ((2, 3, 11, 13), (0, 0)),  # input rows and columns no tap reaches (zero gradient)
    ((2, 3, 10, 11), (2, 2)),
    ((2, 3, 9, 9), (3, 3)),  # padding past the kernel
    ((2, 3, 9, 10), (1, 0)),
    ((2, 3, 10, 9), (0, 1)),
    ((2, 3, 6, 40), (1, 1)),  # two column chunks (20 outputs)
    ((1, 2, 5, 64), (1, 1)),  # two full chunks (32 outputs)
    ((2, 2, 5, 66), (2, 2)),  # 34 outputs: past the kernels' width, the masked path
    ((5, 2, 1, 1), (1, 1)),
    ((2, 2, 2, 3), (1, 1)),
    ((1, 1, 3, 3), (0, 0)),  # a single output
]


@pytest.mark.parametrize("case", STRIDE2)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d(case, bias):
    shape, padding = case
    check_against_conv2d(shape, (3, 3), (2, 2), padding, (1, 1), 1, bias, torch.float32)


def test_weight_gradient_short_chunk_has_no_stray_products():
    # A chunk of at most 15 outputs takes its shifted tap columns from the same two loads;
    # their unused lane 15 must not multiply an input the sum does not contain. With padding
    # 0, input column 0 is read only by tap column 0, so an infinite column 0 leaves the
    # other tap columns' gradients finite.
    x = torch.randn(2, 3, 9, 13, dtype=torch.float64)
    x[:, :, :, 0] = float("inf")
    g = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    check_weight_grad_with_infinities(x, g, 2, 0, (Ellipsis, slice(1, None)))
