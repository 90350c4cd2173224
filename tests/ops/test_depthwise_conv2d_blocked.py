"""Depthwise conv2d CPU: the channel-blocked path (small planes) and the plane path on the same
shapes, forced through CVOPS_DEPTHWISE_CPU_PATH (read on every call), against
F.conv2d(groups=C) for the output and all gradients."""

import pytest
import torch
import torch.nn.functional as F

import cvops
from tests.conftest import requires_ops, run_python
from tests.ops.test_depthwise_conv2d import check_against_conv2d

pytestmark = requires_ops

ENV = "CVOPS_DEPTHWISE_CPU_PATH"


@pytest.fixture(params=["blocked", "plane"])
def path(request, monkeypatch):
    monkeypatch.setenv(ENV, request.param)
    return request.param


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
    check_against_conv2d(*case, 1, True, dtype, channels_last=channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stride", [1, 2])
def test_low_precision(path, dtype, stride):
    check_against_conv2d((2, 12, 14, 14), (3, 3), (stride, stride), (1, 1), (1, 1), 1, True, dtype)


def test_no_bias_and_multiplier_two(path):
    check_against_conv2d((2, 9, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, False)
    # multiplier > 1 always runs the plane path
    check_against_conv2d((2, 3, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1), 2, True)


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


HAS_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


# "masked" is the AVX-512 path's name (float32, stride 1, NCHW: these tensors' default there).
@pytest.mark.parametrize(
    "chosen",
    [
        "blocked",
        pytest.param(
            "masked", marks=pytest.mark.skipif(not HAS_AVX512, reason="needs an AVX-512 CPU")
        ),
    ],
)
def test_the_paths_differ(monkeypatch, chosen):
    # The paths sum the weight gradient in different orders: with float32 data their results
    # differ in the last bits, which shows that the variable selects the path.
    x = torch.randn(4, 16, 14, 14)
    g = torch.randn(4, 16, 14, 14)
    got = {}
    for p in (chosen, "plane"):
        monkeypatch.setenv(ENV, p)
        got[p] = torch.ops.cvops._depthwise_conv2d_backward_weight(
            g, x, 3, 3, [1, 1], [1, 1], [1, 1]
        )
    for a, b in zip(got[chosen], got["plane"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.equal(got[chosen][0], got["plane"][0])


def test_default_selection_small_and_large(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    check_against_conv2d((2, 16, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, torch.float32)
    check_against_conv2d((1, 9, 40, 40), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, torch.float32)


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
        "print('OK')\n"
    )
    run_python(code, CVOPS_DISABLE_AVX2="1", **{ENV: "blocked"})
