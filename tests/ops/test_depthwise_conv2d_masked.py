"""Depthwise conv2d CPU: the AVX-512 masked-load path (float32, NCHW, stride 1 or 2), the
default for such calls on AVX-512 CPUs, against F.conv2d(groups=C) in float64 for the output
and all gradients, over the geometries its slot/mask tables and stride phases must get
right."""

import pytest
import torch
import torch.nn.functional as F

import cvops
from tests.conftest import requires_ops, run_python
from tests.ops.test_depthwise_conv2d import check_against_conv2d

pytestmark = [requires_ops, pytest.mark.usefixtures("default_depthwise_path")]

ENV = "CVOPS_DEPTHWISE_CPU_PATH"


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
    ((17, 2, 6, 6), (3, 3), (1, 1), (1, 1)),  # image groups 8 + 8 + 1
    ((7, 2, 5, 5), (3, 3), (1, 1), (1, 1)),  # 4 + 2 + 1
    ((2, 3, 1, 1), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 1, 1), (3, 3), (1, 1), (1, 1)),  # every tap but the centre is padding
    ((1, 1, 4, 3), (4, 3), (0, 0), (1, 1)),  # kernel covering the whole input
    ((2, 2, 6, 33), (13, 1), (6, 0), (1, 1)),  # more taps than a register pass
]


@pytest.mark.parametrize("case", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d(case, bias):
    shape, kernel, padding, dilation = case
    check_against_conv2d(shape, kernel, (1, 1), padding, dilation, 1, bias, torch.float32)


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
    ((9, 2, 6, 7), (3, 3), (2, 2), (1, 1), (1, 1)),  # image groups 8 + 1
    ((1, 1, 2, 2), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 2, 8, 33), (13, 1), (2, 2), (6, 0), (1, 1)),  # more taps than a register pass
]


@pytest.mark.parametrize("case", STRIDED)
@pytest.mark.parametrize("bias", [True, False])
def test_strided_matches_conv2d(case, bias):
    shape, kernel, stride, padding, dilation = case
    check_against_conv2d(shape, kernel, stride, padding, dilation, 1, bias, torch.float32)


def test_expanded_and_strided_gradients():
    # autograd hands the backward an expanded gradient for .sum(); a transposed one here
    x = torch.randn(3, 5, 9, 9, requires_grad=True)
    w = torch.randn(5, 1, 3, 3, requires_grad=True)
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
    code = (
        "import torch\n"
        "from tests.ops.test_depthwise_conv2d import check_against_conv2d\n"
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
    # within a line, so the copy has partial lines at both ends).
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shape = (4, 32, size, size)
        pad = kernel // 2
        check_against_conv2d(
            shape, (kernel, kernel), (stride, stride), (pad, pad), (1, 1), 1, True, torch.float32
        )
    finally:
        torch.set_num_threads(before)


# The AVX-512 channel-blocked correlation (stride 1, dilation 1, planes up to 14x14, 16
# channels at a time; the channels past the last full 16 run the masked kernel). The forward
# and the stride-1 input gradient use it when the row kernels (square 3x3/5x5/7x7 kernels,
# outputs up to 32 wide: test_depthwise_conv2d_rows512.py) do not take the call; the input
# gradient only while its mirrored padding (k - 1 - pad) is not negative.
BLOCKED16 = [
    # shape, kernel, padding
    ((2, 20, 4, 40), (3, 3), (1, 1)),  # 3x3 but 40 wide: past the row kernels
    ((2, 16, 12, 6), (5, 5), (1, 2)),  # non-square padding, square kernel: row kernels
    ((8, 16, 7, 7), (3, 3), (1, 1)),
    ((3, 40, 14, 14), (3, 3), (1, 1)),  # 2 blocks + 8 channels on the masked kernel
    ((1, 32, 9, 11), (3, 3), (1, 1)),
    ((2, 16, 7, 7), (5, 5), (2, 2)),
    ((2, 17, 12, 13), (7, 7), (3, 3)),
    ((2, 16, 8, 8), (3, 3), (0, 0)),  # valid padding: output smaller than input
    ((2, 16, 6, 5), (3, 3), (3, 2)),  # padding past k - 1: input gradient not blocked
    ((2, 16, 10, 9), (2, 4), (1, 2)),  # even, non-square kernel
    ((2, 16, 9, 10), (1, 1), (0, 0)),
    ((5, 16, 1, 1), (3, 3), (1, 1)),
    ((1, 16, 14, 3), (3, 1), (1, 0)),
    ((1, 48, 1, 14), (1, 7), (0, 3)),
]


@pytest.mark.parametrize("case", BLOCKED16)
@pytest.mark.parametrize("bias", [True, False])
def test_channel_blocked_small_planes_match_conv2d(case, bias):
    shape, kernel, padding = case
    check_against_conv2d(shape, kernel, (1, 1), padding, (1, 1), 1, bias, torch.float32)
