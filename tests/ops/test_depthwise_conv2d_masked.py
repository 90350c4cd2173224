"""Depthwise conv2d CPU: the AVX-512 masked-load kernel (float32, NCHW, multiplier 1, stride
1 or 2; any kernel, padding and dilation), the plan's choice for such calls on AVX-512 CPUs
that backward512, stride2_512 and rows512 do not take. Every geometry runs twice: with the
plan's own kernels (the route each direction takes asserted: many of these shapes go to the
row, stride-2 or fused-backward kernels) and forced to the masked kernel with
force_cpu_kernel("masked"), so the masked kernel itself is checked on every geometry its
slot/mask tables, image groups (8, 4, 2, 1) and stride phases must get right. Against
F.conv2d(groups=C) in float64 for the output and all gradients."""

import pytest
import torch
import torch.nn.functional as F

import cvops
from tests.conftest import requires_ops, run_python
from tests.ops._depthwise_routes import (
    ENV,
    assert_model_routes,
    assert_routes,
    forced,
    requires_avx512_for,
)
from tests.ops.test_depthwise_conv2d import check_against_conv2d

pytestmark = [requires_ops, pytest.mark.usefixtures("default_depthwise_path")]

requires_avx512 = requires_avx512_for("masked")

# "plan": the plan's own kernels, each direction's route asserted; "masked": forced.
KERNELS = ["plan", pytest.param("masked", marks=requires_avx512)]
ALL_MASKED = dict(forward="masked", input_grad="masked", weight_grad="masked", backward="separate")


def run_case(kernel, shape, ksize, stride, padding, dilation, bias):
    weight_shape = (shape[1], 1) + tuple(ksize)
    if kernel == "plan":
        assert_model_routes(shape, weight_shape, stride, padding, dilation)
        check_against_conv2d(shape, ksize, stride, padding, dilation, 1, bias, torch.float32)
        return
    with forced(kernel):
        assert_routes(shape, weight_shape, stride, padding, dilation, ALL_MASKED)
        check_against_conv2d(shape, ksize, stride, padding, dilation, 1, bias, torch.float32)


GEOMETRIES = [
    # shape, kernel, padding, dilation: "same" planes run slots across row ends (flat), the
    # others row by row
    ((8, 16, 7, 7), (3, 3), (1, 1), (1, 1)),
    ((2, 5, 14, 14), (3, 3), (1, 1), (1, 1)),
    ((1, 3, 56, 56), (3, 3), (1, 1), (1, 1)),
    ((3, 4, 9, 37), (3, 3), (1, 1), (1, 1)),  # rows longer than two vectors
    ((2, 3, 40, 5), (3, 3), (1, 1), (1, 1)),  # rows shorter than a vector
    ((5, 6, 11, 13), (5, 5), (2, 2), (1, 1)),
    ((2, 4, 13, 12), (7, 7), (3, 3), (1, 1)),
    ((9, 3, 8, 8), (3, 3), (0, 0), (1, 1)),  # valid padding: row mode
    ((2, 3, 60, 40), (3, 3), (0, 0), (1, 1)),  # many row-mode slots
    ((3, 2, 10, 21), (3, 3), (3, 3), (1, 1)),  # wider than the input: row mode
    ((2, 3, 12, 17), (2, 4), (0, 2), (1, 1)),  # even, non-square kernel
    ((2, 3, 12, 12), (3, 3), (2, 2), (2, 2)),  # dilation
    ((1, 2, 15, 16), (3, 5), (3, 1), (3, 2)),
    # image groups (forced; by default these two run rows512 and backward512)
    ((17, 2, 6, 6), (3, 3), (1, 1), (1, 1)),  # 8 + 8 + 1
    ((7, 2, 5, 5), (3, 3), (1, 1), (1, 1)),  # 4 + 2 + 1
    ((8, 4, 6, 6), (3, 5), (1, 2), (1, 1)),  # one group of 8, masked by default too
    ((17, 3, 5, 7), (2, 2), (0, 1), (1, 1)),  # 8 + 8 + 1, masked by default too
    ((9, 2, 9, 9), (3, 3), (2, 2), (2, 2)),  # 8 + 1, dilated: masked by default too
    ((2, 3, 1, 1), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 1, 1), (3, 3), (1, 1), (1, 1)),  # every tap but the centre is padding
    ((1, 1, 4, 3), (4, 3), (0, 0), (1, 1)),  # kernel covering the whole input
    ((2, 2, 6, 33), (13, 1), (6, 0), (1, 1)),  # more taps than a register pass
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", GEOMETRIES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d(kernel, case, bias):
    shape, ksize, padding, dilation = case
    run_case(kernel, shape, ksize, (1, 1), padding, dilation, bias)


STRIDED = [
    # shape, kernel, stride, padding, dilation: even widths split as one stream, odd ones
    # row by row; rows longer than 32 take several vector pairs
    ((8, 16, 28, 28), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((3, 5, 14, 14), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 3, 13, 15), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 3, 9, 70), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 3, 67, 9), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 3, 60, 61), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((5, 4, 11, 12), (5, 5), (2, 2), (2, 2), (1, 1)),
    ((2, 3, 15, 16), (7, 7), (2, 2), (3, 3), (1, 1)),
    ((3, 2, 12, 11), (3, 3), (2, 1), (1, 1), (1, 1)),
    ((3, 2, 11, 12), (3, 3), (1, 2), (1, 1), (1, 1)),
    ((2, 3, 12, 12), (3, 3), (2, 2), (0, 0), (1, 1)),
    ((2, 3, 13, 12), (2, 4), (2, 2), (1, 2), (1, 1)),  # even, non-square kernel
    ((2, 3, 15, 14), (3, 3), (2, 2), (2, 2), (2, 2)),  # dilation
    ((2, 2, 9, 9), (1, 1), (2, 2), (0, 0), (1, 1)),  # input phases with no taps
    ((9, 2, 6, 7), (3, 3), (2, 2), (1, 1), (1, 1)),  # image groups 8 + 1 (by default stride2_512)
    ((8, 3, 9, 9), (5, 5), (2, 2), (2, 2), (1, 1)),  # a group of 8, masked by default too
    ((17, 2, 7, 8), (3, 3), (2, 1), (1, 1), (1, 1)),  # 8 + 8 + 1, masked by default too
    ((1, 1, 2, 2), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 2, 8, 33), (13, 1), (2, 2), (6, 0), (1, 1)),  # more taps than a register pass
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", STRIDED, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_strided_matches_conv2d(kernel, case, bias):
    shape, ksize, stride, padding, dilation = case
    run_case(kernel, shape, ksize, stride, padding, dilation, bias)


# Calls the plan itself sends to the masked kernel, with image groups of 8 (the issue: no CPU
# test reached the masked kernel with 8-image groups): non-square or even kernels, dilation,
# stride 2 with a kernel other than 3x3, mixed strides, stride-2 outputs past 32 wide.
DEFAULT_MASKED = [
    # shape, kernel, stride, padding, dilation
    ((8, 4, 6, 6), (3, 5), (1, 1), (1, 2), (1, 1)),
    ((17, 3, 5, 7), (2, 2), (1, 1), (0, 1), (1, 1)),
    ((9, 2, 9, 9), (3, 3), (1, 1), (2, 2), (2, 2)),
    ((8, 3, 9, 9), (5, 5), (2, 2), (2, 2), (1, 1)),
    ((17, 2, 7, 8), (3, 3), (2, 1), (1, 1), (1, 1)),
    ((8, 2, 3, 70), (3, 3), (2, 2), (1, 1), (1, 1)),  # 35 outputs: past stride2_512's 32
]


@requires_avx512
@pytest.mark.parametrize("case", DEFAULT_MASKED, ids=str)
def test_plan_sends_image_groups_of_8_to_masked(case):
    shape, ksize, stride, padding, dilation = case
    weight_shape = (shape[1], 1) + ksize
    assert_routes(shape, weight_shape, stride, padding, dilation, ALL_MASKED)
    check_against_conv2d(shape, ksize, stride, padding, dilation, 1, True, torch.float32)


@pytest.mark.parametrize("kernel", KERNELS)
def test_expanded_and_strided_gradients(kernel):
    # autograd hands the backward an expanded gradient for .sum(); a transposed one here.
    # (the plan: rows512, and backward512 for both gradients)
    x = torch.randn(3, 5, 9, 9, requires_grad=True)
    w = torch.randn(5, 1, 3, 3, requires_grad=True)
    with forced(None if kernel == "plan" else kernel):
        _expanded_and_strided_gradients(x, w)


def _expanded_and_strided_gradients(x, w):
    cvops.depthwise_conv2d(x, w, None, 1, 1).sum().backward()
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    F.conv2d(xr, wr, None, 1, 1, 1, 5).sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), wr.grad, rtol=1e-5, atol=1e-4)
    g = torch.randn(3, 5, 9, 9).transpose(2, 3)
    gi = torch.ops.cvops._depthwise_conv2d_backward_input(g, w, 3, 5, 9, 9, [1, 1], [1, 1], [1, 1])
    ref = torch.nn.grad.conv2d_input((3, 5, 9, 9), w.double(), g.double(), 1, 1, 1, 5)
    torch.testing.assert_close(gi.double(), ref, rtol=1e-5, atol=1e-5)


def test_without_avx512_the_other_paths_run():
    # the plan picks blocked, small planes or large; forcing masked does not apply
    code = (
        "import importlib, pytest, torch\n"
        "from tests.ops.test_depthwise_conv2d import check_against_conv2d\n"
        "dw = importlib.import_module('cvops.ops.depthwise_conv2d')\n"
        "assert not dw.cpu_has_avx512()\n"
        "def plan(*a):\n"
        "    return sorted(set(dw.cpu_plan(*a).values()))\n"
        "assert plan((3, 5, 7, 7), (5, 1, 3, 3), 1, 1) == ['blocked', 'separate']\n"
        "assert plan((2, 3, 30, 31), (3, 1, 5, 5), 1, 2) == ['blocked', 'separate']\n"
        "with dw.force_cpu_kernel('masked'):\n"
        "    with pytest.raises(RuntimeError, match='does not apply'):\n"
        "        check_against_conv2d((3, 5, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True,\n"
        "                             torch.float32)\n"
        "check_against_conv2d((3, 5, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True,\n"
        "                     torch.float32)\n"
        "check_against_conv2d((2, 3, 30, 31), (5, 5), (1, 1), (2, 2), (1, 1), 1, True,\n"
        "                     torch.float32)\n"
        "print('OK')\n"
    )
    run_python(code, CVOPS_DISABLE_AVX512="1", **{ENV: None})


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "kernel, stride, size",
    [(3, 1, 128), (3, 1, 136), (5, 1, 136), (3, 1, 130), (7, 1, 130), (3, 2, 256)],
)
def test_large_outputs_streamed(threads, kernel, stride, size):
    # Outputs of at least 4 MiB per thread are written with non-temporal stores (whole aligned
    # lines). The row kernels' band walk streams rows a multiple of 16 wide in place (128) and
    # stages other rows in a scratch plane first (136; 130, whose planes start at every offset
    # within a line, so the copy has partial lines at both ends). By the plan: rows512 for the
    # stride-1 forward and input gradient, masked for their weight gradients (rows past 64)
    # and for all of the stride-2 call (outputs past stride2_512's 32).
    shape = (4, 32, size, size)
    pad = kernel // 2
    assert_model_routes(shape, (32, 1, kernel, kernel), stride, pad, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_against_conv2d(
            shape, (kernel, kernel), (stride, stride), (pad, pad), (1, 1), 1, True, torch.float32
        )
    finally:
        torch.set_num_threads(before)


# The shapes of the removed AVX-512 channel-blocked kernel (blocked512: stride 1, dilation 1,
# output planes up to 14x14, at least 16 channels): the plan sends those rows512 does not take
# (kernels other than square 3x3/5x5/7x7) to the masked kernel now, every direction; the
# square ones stay on rows512 (their 3x3 weight gradients too). Both with the plan's kernels
# and forced to masked.
EX_BLOCKED512 = [
    # shape, kernel, padding
    ((2, 20, 4, 40), (3, 3), (1, 1)),  # 3x3, 40 wide: rows512's band walk
    ((2, 16, 12, 6), (5, 5), (1, 2)),  # non-square padding, square kernel: rows512
    ((8, 16, 7, 7), (3, 3), (1, 1)),
    ((3, 40, 14, 14), (3, 3), (1, 1)),
    ((1, 32, 9, 11), (3, 3), (1, 1)),
    ((2, 16, 7, 7), (5, 5), (2, 2)),
    ((2, 17, 12, 13), (7, 7), (3, 3)),
    ((2, 16, 8, 8), (3, 3), (0, 0)),  # valid padding: output smaller than input
    ((2, 16, 6, 5), (3, 3), (3, 2)),  # padding past k - 1: the input gradient's is negative
    ((2, 16, 10, 9), (2, 4), (1, 2)),  # even, non-square kernel: masked
    ((2, 16, 9, 10), (1, 1), (0, 0)),  # masked
    ((5, 16, 1, 1), (3, 3), (1, 1)),
    ((1, 16, 14, 3), (3, 1), (1, 0)),  # masked
    ((1, 48, 1, 14), (1, 7), (0, 3)),  # masked
    ((8, 32, 14, 14), (3, 5), (1, 2)),  # masked, a group of 8 images
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", EX_BLOCKED512, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_former_blocked512_shapes_match_conv2d(kernel, case, bias):
    shape, ksize, padding = case
    run_case(kernel, shape, ksize, (1, 1), padding, (1, 1), bias)


@requires_avx512
@pytest.mark.parametrize(
    "case", [c for c in EX_BLOCKED512 if c[1][0] != c[1][1] or c[1][0] not in (3, 5, 7)], ids=str
)
def test_former_blocked512_shapes_now_masked(case):
    shape, ksize, padding = case
    assert_routes(shape, (shape[1], 1) + ksize, 1, padding, 1, ALL_MASKED)
