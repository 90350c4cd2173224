"""Depthwise conv2d CPU: the AVX-512 row kernels, rows512 (float32, NCHW, multiplier 1,
stride 1, dilation 1, square kernels; rows up to 32 wide walk column chunks of several
images, wider rows bands of chunks of one image), the plan's choice for such calls on
AVX-512 CPUs (after the fused backward, backward512). The correlation (3x3, 5x5, 7x7)
computes the forward and the input gradient (the output gradient correlated with the flipped
taps, its padding mirrored: k - 1 - pad, negative when pad > k - 1); the weight gradient runs
for 3x3 with output rows up to 64 wide (else masked). Each case's routes are asserted
through cpu_plan; the cases whose two gradients the plan fuses (backward512) also run with
rows512 forced, so that its gradients are checked on them too. Checked against
F.conv2d(groups=C) in float64, output and all gradients, over the groupings, column chunks
and paddings the kernels must get right."""

import pytest
import torch

from tests.conftest import requires_ops
from tests.ops._depthwise_routes import (
    assert_routes,
    expected_routes,
    forced,
    requires_avx512_for,
)
from tests.ops.test_depthwise_conv2d import (
    check_against_conv2d,
    check_weight_grad_with_infinities,
)

pytestmark = [
    requires_ops,
    requires_avx512_for("rows512"),
    pytest.mark.usefixtures("default_depthwise_path"),
]


def routes(shape, kernel, padding):
    """The plan's routes for a case: rows512 for the forward and the input gradient, for the
    weight gradient while 3x3 with output rows up to 64 (else masked)."""
    weight_shape = (shape[1], 1, kernel, kernel)
    want = expected_routes(shape, weight_shape, 1, padding, 1)
    assert want["forward"] == want["input_grad"] == "rows512"  # (the table below is for rows512)
    return weight_shape, want


ROWS = [
    # shape, kernel, padding
    ((8, 16, 7, 7), 3, 1),  # rows of <= 8: two images per vector, 8 images per group
    ((9, 5, 7, 7), 3, 1),  # a group of 8, then one image alone
    ((3, 4, 8, 8), 3, 1),  # 8 wide (still paired); a short group, one image at a time
    ((11, 3, 14, 14), 3, 1),  # 9-16 wide, unpaired: 4 + 4 + 3
    ((2, 3, 9, 16), 3, 1),  # one full chunk
    ((2, 3, 9, 17), 3, 1),  # two chunks, the second one column
    ((3, 2, 5, 32), 3, 1),  # two full chunks
    ((4, 4, 12, 12), 5, 2),
    ((5, 3, 7, 7), 5, 2),  # paired 5x5: groups of 4, then one
    ((5, 2, 13, 11), 7, 3),
    ((3, 2, 6, 6), 7, 3),
    ((2, 3, 8, 8), 3, 0),  # valid padding: smaller output
    ((2, 3, 6, 5), 3, (3, 2)),  # padding past k - 1: the input gradient's mirrored padding < 0
    ((2, 3, 9, 9), 5, (0, 4)),
    ((2, 3, 1, 1), 3, 1),  # every tap but the centre is padding
    ((2, 3, 1, 9), 3, 1),  # a single row
    ((2, 3, 20, 3), 5, (2, 1)),
    ((1, 2, 3, 3), 7, 3),  # a kernel larger than the plane
    # Paired rows served by rotating one loaded row pair (a row and the zero lanes above it
    # fill 8 lanes): the reads past either end must land on zeros, never the other image.
    ((3, 2, 6, 6), 3, 2),  # 6 wide, padding 2: the zero lanes exactly cover both ends
    ((3, 2, 5, 5), 3, 1),
    ((4, 2, 4, 4), 5, 2),  # 5x5 on 4 wide fits too (8 wide, or 5x5 on 7: masked loads)
    # Rows wider than 32: one image at a time, bands of up to 4 (3x3) or 2 (5x5, 7x7) chunks
    # walking down the plane together, each chunk with its own masks; the 3x3 weight
    # gradient too while one band covers the row (up to 64 wide).
    ((2, 3, 5, 33), 3, 1),  # 3 chunks, the last one column
    ((2, 2, 6, 64), 3, 1),  # one full band
    ((2, 2, 4, 65), 3, 1),  # a band of 4, then a band of 1
    ((1, 2, 9, 112), 3, 1),  # 4 + 3
    ((1, 2, 5, 90), 3, 1),  # 4 + 2
    ((2, 2, 7, 40), 3, 0),  # valid padding: 38 outputs
    ((2, 2, 5, 36), 3, (1, 3)),  # padding past k - 1: the input gradient's is negative
    ((2, 2, 6, 40), 5, 2),  # 5x5: a band of 2, then 1
    ((1, 2, 3, 70), 5, (2, 0)),  # 66 outputs: 2 + 2 + 1
    ((2, 2, 9, 40), 7, 3),  # 7x7: a band of 2, then 1
    ((1, 2, 5, 64), 7, (3, 1)),  # 7x7, 60 outputs: 2 + 2
]


@pytest.mark.parametrize("case", ROWS, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d(case, bias):
    shape, kernel, padding = case
    pad = padding if isinstance(padding, tuple) else (padding, padding)
    weight_shape, want = routes(shape, kernel, pad)
    assert_routes(shape, weight_shape, 1, pad, 1, want)
    check_against_conv2d(shape, (kernel, kernel), (1, 1), pad, (1, 1), 1, bias, torch.float32)


@pytest.mark.parametrize("case", ROWS, ids=str)
def test_weight_gradient_route(case):
    shape, kernel, padding = case
    pad = padding if isinstance(padding, tuple) else (padding, padding)
    out_w = shape[3] + 2 * pad[1] - kernel + 1
    want = "rows512" if kernel == 3 and out_w <= 64 else "masked"
    assert_routes(shape, (shape[1], 1, kernel, kernel), 1, pad, 1, {"weight_grad": want})


# The 3x3 padding-1 cases with rows under 16 take backward512 for both gradients through
# autograd; forced to rows512 their gradients run the row kernels instead.
FUSED_BY_DEFAULT = [c for c in ROWS if c[1] == 3 and c[2] == 1 and c[0][3] < 16]


@pytest.mark.parametrize("case", FUSED_BY_DEFAULT, ids=str)
def test_gradients_the_plan_fuses_match_conv2d_forced(case):
    shape, kernel, padding = case
    weight_shape = (shape[1], 1, kernel, kernel)
    assert_routes(shape, weight_shape, 1, padding, 1, {"backward": "backward512"})
    with forced("rows512"):
        assert_routes(
            shape,
            weight_shape,
            1,
            padding,
            1,
            dict(
                forward="rows512", input_grad="rows512", weight_grad="rows512", backward="separate"
            ),
        )
        check_against_conv2d(
            shape, (kernel, kernel), (1, 1), (padding, padding), (1, 1), 1, True, torch.float32
        )


@pytest.mark.parametrize("width", [7, 40])  # 40: the band walk of rows wider than 32
def test_weight_gradient_has_no_product_with_rows_outside_the_gradient(width):
    # Kernel row 2 reads input row 0 only for output row -1, and kernel row 0 reads input
    # row 6 only for output row 7: the true sums have no such terms, so an infinite input
    # row there leaves those kernel rows' gradients finite.
    assert_routes((2, 3, 7, width), (3, 1, 3, 3), 1, 1, 1, {"weight_grad": "rows512"})
    for row, finite_kernel_row in ((0, 2), (6, 0)):
        x = torch.randn(2, 3, 7, width, dtype=torch.float64)
        x[:, :, row] = float("inf")
        g = torch.randn(2, 3, 7, width, dtype=torch.float64)
        check_weight_grad_with_infinities(x, g, 1, 1, (slice(None), 0, finite_kernel_row))


def test_rotated_weight_gradient_has_no_product_outside_its_sums():
    # Rows of 7 (padding 1) are rotated, not loaded per tap column: tap column 2's vector
    # has the other image's column 0 in the unused lane 7, tap column 0's its column 6 in
    # lane 15. Tap column 2 never reads input column 0 and tap column 0 never column 6, so
    # with those columns infinite the true sums of those tap columns stay finite (3 images:
    # the last pair is one image alone).
    assert_routes((3, 2, 7, 7), (2, 1, 3, 3), 1, 1, 1, {"weight_grad": "rows512"})
    for column, finite_tap_column in ((0, 2), (6, 0)):
        x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
        x[:, :, :, column] = float("inf")
        g = torch.randn(3, 2, 7, 7, dtype=torch.float64)
        check_weight_grad_with_infinities(x, g, 1, 1, (Ellipsis, finite_tap_column))
