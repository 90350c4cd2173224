"""Depthwise conv2d CPU: the channel-blocked kernel, blocked (any dtype, memory format,
multiplier, stride and dilation: the plan's choice wherever the AVX-512 kernels do not take
the call), forced on small planes with force_cpu_kernel, against F.conv2d(groups=C) for the
output and all gradients; and the plan's choice of it (routes asserted through cpu_plan)."""

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


def routes(kernel, backward="separate"):
    return dict(forward=kernel, input_grad=kernel, weight_grad=kernel, backward=backward)


@pytest.fixture
def path(default_depthwise_path):
    with forced("blocked"):
        yield "blocked"


SMALL = [
    # shape, kernel, stride, padding, dilation
    ((2, 8, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 16, 14, 14), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 13, 14, 14), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 24, 28, 28), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 5, 9, 10), (3, 3), (1, 1), (0, 0), (1, 1)),
    ((1, 3, 9, 10), (3, 3), (2, 2), (0, 0), (1, 1)),
    ((2, 9, 11, 8), (5, 5), (1, 1), (2, 2), (1, 1)),
    ((2, 17, 11, 9), (5, 5), (2, 2), (2, 2), (1, 1)),
    ((2, 16, 13, 13), (7, 7), (1, 1), (3, 3), (1, 1)),
    ((1, 10, 13, 12), (7, 7), (2, 2), (3, 3), (1, 1)),
    ((2, 11, 8, 7), (2, 4), (3, 1), (0, 2), (2, 1)),
    ((2, 8, 9, 9), (4, 4), (1, 1), (1, 2), (1, 1)),
    ((2, 12, 10, 10), (3, 3), (1, 1), (2, 2), (2, 2)),
    ((1, 7, 12, 11), (3, 3), (2, 2), (2, 1), (2, 2)),
    ((1, 3, 6, 9), (1, 1), (1, 2), (0, 0), (1, 1)),
    ((1, 1, 5, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 8, 3, 3), (3, 3), (1, 1), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("case", SMALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_small_planes_match_conv2d(path, case, dtype, channels_last):
    shape, kernel, stride, padding, dilation = case
    weight_shape = (shape[1], 1) + kernel
    kw = dict(dtype=dtype, channels_last=channels_last)
    assert_routes(shape, weight_shape, stride, padding, dilation, routes(path), **kw)
    check_against_conv2d(*case, 1, True, dtype, channels_last=channels_last)


@pytest.mark.parametrize("case", SMALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_small_planes_plan(case, dtype, channels_last):
    # The plan: blocked outside the AVX-512 kernels' calls (float64, channels-last, no
    # AVX-512), else those (the model in _depthwise_routes).
    shape, kernel, stride, padding, dilation = case
    weight_shape = (shape[1], 1) + kernel
    if channels_last and shape[1] == 1:
        pytest.skip("one channel: channels-last and NCHW are the same layout")
    kw = dict(dtype=dtype, channels_last=channels_last)
    plan = assert_model_routes(shape, weight_shape, stride, padding, dilation, **kw)
    if dtype == torch.float64 or channels_last:
        assert plan == routes("blocked")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stride", [1, 2])
def test_low_precision(path, dtype, stride):
    check_against_conv2d((2, 12, 14, 14), (3, 3), (stride, stride), (1, 1), (1, 1), 1, True, dtype)


def test_no_bias(path):
    check_against_conv2d((2, 9, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("multiplier", [2, 3])
def test_multiplier(dtype, channels_last, multiplier):
    # multiplier > 1: blocked on the input with each channel repeated (the input gradient sums
    # the copies'), small or not, in every dtype and format
    for shape, stride in (((2, 3, 7, 7), 2), ((2, 5, 40, 33), 1)):
        w = (multiplier * shape[1], 1, 3, 3)
        kw = dict(dtype=dtype, channels_last=channels_last)
        assert_routes(shape, w, stride, 1, 1, routes("blocked"), **kw)
        check_against_conv2d(
            shape,
            (3, 3),
            (stride,) * 2,
            (1, 1),
            (1, 1),
            multiplier,
            True,
            dtype,
            channels_last=channels_last,
        )


def test_strided_views(path):
    # the blocked path reads any strides directly (no contiguous copy)
    base = torch.randn(2, 20, 9, 16, dtype=torch.float64)
    w = torch.randn(10, 1, 3, 3, dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64)
    for x in (base[:, ::2, :, :8], base[:, 1:11, :, ::2], base.transpose(2, 3)[:, :10]):
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
        xc, wc, bc = (t.clone().requires_grad_() for t in (x, w, b))
        ref = F.conv2d(xr, wr, br, 2, 1, 1, 10)
        out = cvops.depthwise_conv2d(xc, wc, bc, 2, 1)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(ref).transpose(2, 3).contiguous().transpose(2, 3)
        for got, want in zip(
            torch.autograd.grad(out, (xc, wc, bc), g), torch.autograd.grad(ref, (xr, wr, br), g)
        ):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck(path, stride):
    x = torch.randn(2, 9, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: cvops.depthwise_conv2d(x, w, b, stride, 1)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("stride", [1, 2])
def test_weight_gradient_independent_of_thread_count(path, stride):
    x = torch.randn(6, 21, 14, 14)
    g = torch.randn(6, 21, 14 // stride, 14 // stride)
    s = [stride, stride]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            results.append(
                torch.ops.cvops._depthwise_conv2d_backward_weight(g, x, 3, 3, s, [1, 1], [1, 1])
            )
    finally:
        torch.set_num_threads(before)
    for gw, gb in results[1:]:
        assert torch.equal(gw, results[0][0]) and torch.equal(gb, results[0][1])


# "masked" and "rows512" are AVX-512 kernels (float32 NCHW calls); rows512 takes this 3x3
# weight gradient by default there.
@pytest.mark.parametrize(
    "chosen",
    [
        pytest.param("masked", marks=requires_avx512_for("masked")),
        pytest.param("rows512", marks=requires_avx512_for("rows512")),
    ],
)
def test_the_paths_differ(chosen):
    # The kernels sum the weight gradient in different orders: with float32 data their
    # results differ in the last bits, which shows that forcing selects the kernel.
    x = torch.randn(4, 16, 14, 14)
    g = torch.randn(4, 16, 14, 14)
    got = {}
    for p in (chosen, "blocked"):
        with forced(p):
            assert_routes(x.shape, (16, 1, 3, 3), 1, 1, 1, {"weight_grad": p})
            got[p] = torch.ops.cvops._depthwise_conv2d_backward_weight(
                g, x, 3, 3, [1, 1], [1, 1], [1, 1]
            )
    for a, b in zip(got[chosen], got["blocked"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.equal(got[chosen][0], got["blocked"][0])


# Larger planes outside the AVX-512 kernels' calls: blocked too, at any size.
LARGE = [
    # shape, stride, padding
    ((1, 9, 40, 40), 1, 1),
    ((1, 5, 113, 112), 2, 1),
    ((1, 3, 200, 200), 3, 1),
]


@pytest.mark.parametrize("case", LARGE, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_large_planes(case, dtype):
    shape, stride, padding = case
    w = (shape[1], 1, 3, 3)
    for channels_last in (False, True):
        kw = dict(dtype=dtype, channels_last=channels_last)
        assert_routes(shape, w, stride, padding, 1, routes("blocked"), **kw)
        assert_model_routes(shape, w, stride, padding, 1, **kw)
    check_against_conv2d(shape, (3, 3), (stride,) * 2, (padding,) * 2, (1, 1), 1, True, dtype)


def test_default_selection_float32():
    # float32 NCHW: the AVX-512 kernels where they apply, else blocked
    for shape in ((2, 16, 7, 7), (1, 9, 40, 40)):
        assert_model_routes(shape, (shape[1], 1, 3, 3), 1, 1, 1)
        check_against_conv2d(shape, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, torch.float32)


def test_blocked_baseline_loops_without_avx2():
    code = (
        "import torch\n"
        "from tests.ops.test_depthwise_conv2d import check_against_conv2d\n"
        "for dt in (torch.float64, torch.float32, torch.bfloat16):\n"
        "    for cl in (False, True):\n"
        "        check_against_conv2d((2, 11, 9, 13), (3, 3), (1, 1), (1, 1), (1, 1), 1, True,\n"
        "                             dt, channels_last=cl)\n"
        "        check_against_conv2d((2, 11, 9, 13), (3, 3), (2, 2), (1, 1), (1, 1), 1, True,\n"
        "                             dt, channels_last=cl)\n"
        "        check_against_conv2d((1, 9, 11, 10), (5, 4), (2, 1), (2, 1), (1, 2), 1, True,\n"
        "                             dt, channels_last=cl)\n"
        "        check_against_conv2d((2, 3, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 2, True,\n"
        "                             dt, channels_last=cl)\n"
        "print('OK')\n"
    )
    run_python(code, CVOPS_DISABLE_AVX2="1", **{ENV: "blocked"})
