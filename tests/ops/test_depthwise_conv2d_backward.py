"""Depthwise conv2d: _depthwise_conv2d_backward, both gradients at once (the forward's autograd
calls it when it needs the input's and the weight's gradients and no graph of them). On
AVX-512 CPUs the plan runs a 3x3, stride-1, padding-1, undilated float32 NCHW call with rows
of at most 15 on the fused kernel, backward512 (depthwise_conv2d_backward512.cpp); every other
call runs the input- and weight-gradient kernels the plan picks for those directions
("separate"). Checked against autograd on F.conv2d(groups=C) in float64, for the rows the fused
kernel must get right (pairs, odd batches, the widest rows, one-row and one-column planes)
and the calls it hands on (their routes asserted through cpu_plan); forcing backward512;
opcheck and gradcheck/gradgradcheck of the op; infinities; thread counts."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import devices, requires_ops
from tests.ops._depthwise_routes import (
    assert_model_routes,
    assert_routes,
    cpu_plan,
    forced,
    requires_avx512_for,
)

pytestmark = [requires_ops, pytest.mark.usefixtures("default_depthwise_path")]

requires_avx512 = requires_avx512_for("backward512")

ops = torch.ops.cvops


def reference(x, w, g, stride, padding, dilation):
    """float64 autograd on F.conv2d: (grad_input, grad_weight, grad_bias)."""
    x, w, g = (t.detach().double() for t in (x, w, g))
    x.requires_grad_()
    w.requires_grad_()
    b = torch.zeros(w.size(0), dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, b, stride, padding, dilation, x.size(1))
    return torch.autograd.grad(y, (x, w, b), g)


def check(shape, kernel=3, stride=1, padding=1, dilation=1, dtype=torch.float32, device="cpu"):
    c = shape[1]
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(c, 1, kernel, kernel, dtype=torch.float64)
    out_h, out_w = (
        (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1 for size in shape[2:]
    )
    g = torch.randn(shape[0], c, out_h, out_w, dtype=torch.float64)
    want = reference(x, w, g, stride, padding, dilation)
    pair = [stride, stride], [padding, padding], [dilation, dilation]
    got = ops._depthwise_conv2d_backward(*(t.to(device, dtype) for t in (g, x, w)), *pair)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.device.type == torch.device(device).type
        torch.testing.assert_close(a.double().cpu(), b, **tol)


FUSED = [
    (8, 16, 7, 7),  # MobileNet's 7x7: two images per vector
    (3, 5, 7, 7),  # odd batch: the last pair is one image
    (2, 3, 14, 14),  # rows of 9-15: one image per vector
    (3, 2, 5, 15),  # the widest rows the kernel takes
    (2, 3, 9, 8),  # 8 wide: one image per vector (a pair needs a zero lane per row)
    (2, 3, 1, 1),  # every tap but the centre is padding
    (3, 2, 1, 7),  # one row: each tap row meets at most one gradient row
    (2, 2, 2, 5),
    (2, 3, 6, 1),  # one column
    (1, 4, 11, 3),
]


@requires_avx512
@pytest.mark.parametrize("shape", FUSED, ids=str)
def test_fused_shapes_match_conv2d(shape):
    assert_routes(shape, (shape[1], 1, 3, 3), 1, 1, 1, {"backward": "backward512"})
    check(shape)


@pytest.mark.parametrize("kernel", ["blocked", pytest.param("masked", marks=requires_avx512)])
@pytest.mark.parametrize("shape", [(8, 16, 7, 7), (3, 5, 7, 7), (2, 3, 14, 14)], ids=str)
def test_fused_shapes_with_another_kernel_forced(kernel, shape):
    # a forced kernel other than backward512: the two gradients run separately, on it
    with forced(kernel):
        assert_routes(
            shape,
            (shape[1], 1, 3, 3),
            1,
            1,
            1,
            dict(input_grad=kernel, weight_grad=kernel, backward="separate"),
        )
        check(shape)


HANDED_ON = [
    # shape, kernel, stride, padding, dilation
    ((2, 3, 7, 16), 3, 1, 1, 1),  # rows of 16: no zero lane
    ((2, 3, 7, 7), 3, 1, 0, 1),
    ((2, 3, 7, 7), 3, 2, 1, 1),
    ((2, 3, 7, 7), 3, 1, 2, 2),
    ((2, 3, 7, 7), 5, 1, 2, 1),
]


@pytest.mark.parametrize("case", HANDED_ON, ids=str)
def test_other_calls_match_conv2d(case):
    shape, kernel, stride, padding, dilation = case
    plan = assert_model_routes(shape, (shape[1], 1, kernel, kernel), stride, padding, dilation)
    assert plan["backward"] == "separate"
    check(shape, kernel, stride, padding, dilation)


@requires_avx512
def test_forced_backward512():
    # The forward (and the separate gradient ops) follow the plan; the fused op runs
    # backward512 where it applies and raises where it does not.
    shape, w = (3, 5, 7, 7), (5, 1, 3, 3)
    default = cpu_plan(shape, w, 1, 1, 1)
    with forced("backward512"):
        plan = cpu_plan(shape, w, 1, 1, 1)
        assert plan["backward"] == "backward512"
        assert {k: plan[k] for k in ("forward", "input_grad", "weight_grad")} == {
            k: default[k] for k in ("forward", "input_grad", "weight_grad")
        }
        check(shape)
        x = torch.randn(2, 3, 7, 7)
        out = torch.ops.cvops.depthwise_conv2d(
            x, torch.randn(3, 1, 5, 5), None, [1, 1], [2, 2], [1, 1]
        )  # not an error: the forward's kernel
        assert out.shape == (2, 3, 7, 7)
        for case in HANDED_ON:
            with pytest.raises(RuntimeError, match="does not apply"):
                check(*case)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_match_conv2d(dtype):
    if dtype == torch.bfloat16:
        x = torch.randn(2, 3, 7, 7).bfloat16()
        w = torch.randn(3, 1, 3, 3).bfloat16()
        g = torch.randn(2, 3, 7, 7).bfloat16()
        got = ops._depthwise_conv2d_backward(g, x, w, [1, 1], [1, 1], [1, 1])
        want = reference(x, w, g, 1, 1, 1)
        for a, b in zip(got, want):
            assert a.dtype == torch.bfloat16
            torch.testing.assert_close(a.double(), b, rtol=2e-2, atol=5e-2)
    else:
        check((2, 3, 7, 7), dtype=dtype)
    assert_routes((2, 3, 7, 7), (3, 1, 3, 3), 1, 1, 1, {"backward": "separate"}, dtype=dtype)


def test_channels_last_matches_conv2d():
    x = torch.randn(2, 3, 7, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 1, 3, 3)
    g = torch.randn(2, 3, 7, 7).contiguous(memory_format=torch.channels_last)
    got = ops._depthwise_conv2d_backward(g, x, w, [1, 1], [1, 1], [1, 1])
    for a, b in zip(got, reference(x, w, g, 1, 1, 1)):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    assert_routes((2, 3, 7, 7), (3, 1, 3, 3), 1, 1, 1, {"backward": "separate"}, channels_last=True)


@pytest.mark.parametrize("device", devices())
def test_matches_the_two_backward_ops(device):
    x = torch.randn(3, 4, 7, 7, device=device)
    w = torch.randn(4, 1, 3, 3, device=device)
    g = torch.randn(3, 4, 7, 7, device=device)
    args = [1, 1], [1, 1], [1, 1]
    grad_input, grad_weight, grad_bias = ops._depthwise_conv2d_backward(g, x, w, *args)
    torch.testing.assert_close(
        grad_input, ops._depthwise_conv2d_backward_input(g, w, 3, 4, 7, 7, *args)
    )
    want_weight, want_bias = ops._depthwise_conv2d_backward_weight(g, x, 3, 3, *args)
    torch.testing.assert_close(grad_weight, want_weight)
    torch.testing.assert_close(grad_bias, want_bias)


@pytest.mark.parametrize("shape", [(5, 3, 7, 7), (3, 3, 14, 14)], ids=str)
def test_thread_count_does_not_change_the_weight_gradient(shape):
    x, g, w = torch.randn(shape), torch.randn(shape), torch.randn(shape[1], 1, 3, 3)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(ops._depthwise_conv2d_backward(g, x, w, [1, 1], [1, 1], [1, 1]))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("width", [7, 14])
def test_weight_gradient_has_no_product_outside_its_sums(width):
    # Tap column 2 never reads input column 0, tap column 0 never the last column, tap row 2
    # never input row 0 and tap row 0 never the last row. With those infinite, the true sums
    # of those taps stay finite; the kernel must multiply no gradient lane that is no output
    # (a rotated shift's unused lane holds a real input) and no gradient row outside the plane.
    last = width - 1
    for index, finite in (
        ((Ellipsis, 0), (Ellipsis, 2)),
        ((Ellipsis, last), (Ellipsis, 0)),
        ((slice(None), slice(None), 0), (slice(None), 0, 2)),
        ((slice(None), slice(None), last), (slice(None), 0, 0)),
    ):
        x = torch.randn(3, 2, width, width, dtype=torch.float64)
        x[index] = float("inf")
        g = torch.randn(3, 2, width, width, dtype=torch.float64)
        w = torch.randn(2, 1, 3, 3, dtype=torch.float64)
        _, want, _ = reference(x, w, g, 1, 1, 1)
        _, got, _ = ops._depthwise_conv2d_backward(
            g.float(), x.float(), w.float(), [1, 1], [1, 1], [1, 1]
        )
        assert torch.isfinite(want[finite]).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    x = torch.randn(2, 3, 7, 7, device=device, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, device=device, requires_grad=True)
    g = torch.randn(2, 3, 7, 7, device=device, requires_grad=True)
    torch.library.opcheck(ops._depthwise_conv2d_backward.default, (g, x, w, [1, 1], [1, 1], [1, 1]))
    g2 = torch.randn(2, 3, 4, 3, device=device, requires_grad=True)
    torch.library.opcheck(
        ops._depthwise_conv2d_backward.default, (g2, x, w, [2, 2], [1, 0], [1, 1])
    )


@pytest.mark.parametrize("device", devices())
def test_gradcheck_and_gradgradcheck(device):
    # its own derivative (the forward's double backward when both gradients are wanted)
    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    g, x, w = t(2, 2, 5, 4), t(2, 2, 5, 4), t(2, 1, 3, 3)
    fn = lambda g, x, w: ops._depthwise_conv2d_backward(g, x, w, [1, 1], [1, 1], [1, 1])
    assert torch.autograd.gradcheck(fn, (g, x, w))
    assert torch.autograd.gradgradcheck(fn, (g, x, w))


def test_checks_its_arguments():
    g, x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(4, 1, 3, 3)
    args = [1, 1], [1, 1], [1, 1]
    with pytest.raises(ValueError, match="_depthwise_conv2d_backward: expected weight of shape"):
        ops._depthwise_conv2d_backward(g, x, torch.randn(4, 3, 3), *args)
    with pytest.raises(ValueError, match=r"weight.size\(0\) \(6\) must equal grad.size\(1\)"):
        ops._depthwise_conv2d_backward(g, x, torch.randn(6, 1, 3, 3), *args)
    with pytest.raises(TypeError, match="same dtype"):
        ops._depthwise_conv2d_backward(g, x, w.double(), *args)
    with pytest.raises(ValueError, match="expected grad of shape"):
        ops._depthwise_conv2d_backward(torch.randn(2, 4, 7, 8), x, w, *args)
    with pytest.raises(ValueError, match="stride must be positive"):
        ops._depthwise_conv2d_backward(g, x, w, [0, 1], [1, 1], [1, 1])
