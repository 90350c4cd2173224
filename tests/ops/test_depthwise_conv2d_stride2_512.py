"""Depthwise conv2d CPU: the AVX-512 stride-2 row kernels, stride2_512 (float32, NCHW,
multiplier 1, 3x3, stride 2, dilation 1, outputs up to 32 wide), the plan's choice for such
calls on AVX-512 CPUs, for the forward and both gradients (wider outputs go to masked). Each
case's routes are asserted through cpu_plan. Checked against F.conv2d(groups=C) in float64
over the paddings (their parity picks the even/odd column split), widths and heights (input
rows no tap reaches), column chunks and image groupings the kernels must get right."""

import pytest
import torch

from tests.conftest import requires_ops
from tests.ops._depthwise_routes import assert_routes, forced, requires_avx512_for
from tests.ops.test_depthwise_conv2d import (
    check_against_conv2d,
    check_weight_grad_with_infinities,
)

pytestmark = [
    requires_ops,
    requires_avx512_for("stride2_512"),
    pytest.mark.usefixtures("default_depthwise_path"),
]


def routes(kernel):
    return dict(forward=kernel, input_grad=kernel, weight_grad=kernel, backward="separate")


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
    ((2, 2, 5, 66), (2, 2)),  # 34 outputs: past the kernels' width, the masked kernel
    ((5, 2, 1, 1), (1, 1)),
    ((2, 2, 2, 3), (1, 1)),
    ((1, 1, 3, 3), (0, 0)),  # a single output
]


def out_w(shape, padding):
    return (shape[3] + 2 * padding[1] - 3) // 2 + 1


@pytest.mark.parametrize("case", STRIDE2, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d(case, bias):
    shape, padding = case
    kernel = "stride2_512" if out_w(shape, padding) <= 32 else "masked"
    assert_routes(shape, (shape[1], 1, 3, 3), 2, padding, 1, routes(kernel))
    check_against_conv2d(shape, (3, 3), (2, 2), padding, (1, 1), 1, bias, torch.float32)


def test_the_width_limit():
    # 32 outputs: the kernels; 33: masked
    assert_routes((2, 8, 8, 64), (8, 1, 3, 3), 2, 1, 1, routes("stride2_512"))
    assert_routes((2, 8, 8, 66), (8, 1, 3, 3), 2, 1, 1, routes("masked"))


def test_forced_past_its_width_does_not_apply():
    with forced("stride2_512"):
        assert_routes((2, 3, 9, 9), (3, 1, 3, 3), 2, 1, 1, routes("stride2_512"))
        with pytest.raises(RuntimeError, match="does not apply"):
            check_against_conv2d(
                (2, 2, 5, 66), (3, 3), (2, 2), (2, 2), (1, 1), 1, True, torch.float32
            )


def test_weight_gradient_short_chunk_has_no_stray_products():
    # A chunk of at most 15 outputs takes its shifted tap columns from the same two loads;
    # their unused lane 15 must not multiply an input the sum does not contain. With padding
    # 0, input column 0 is read only by tap column 0, so an infinite column 0 leaves the
    # other tap columns' gradients finite.
    assert_routes((2, 3, 9, 13), (3, 1, 3, 3), 2, 0, 1, {"weight_grad": "stride2_512"})
    x = torch.randn(2, 3, 9, 13, dtype=torch.float64)
    x[:, :, :, 0] = float("inf")
    g = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    check_weight_grad_with_infinities(x, g, 2, 0, (Ellipsis, slice(1, None)))
