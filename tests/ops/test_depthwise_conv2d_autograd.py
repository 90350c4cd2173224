"""Depthwise conv2d: float64 gradcheck/gradgradcheck, opcheck, torch.compile, autocast and
hypothesis property tests against F.conv2d(groups=C)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import cvops
from tests.conftest import devices, requires_ops
from tests.ops.test_depthwise_conv2d import check_against_conv2d

pytestmark = requires_ops


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,mult",
    [((3, 3), 1, 1, 1, 1), ((3, 2), (2, 1), (1, 0), (1, 2), 2), ((5, 5), 2, 2, 1, 1)],
)
def test_gradcheck_float64(device, kernel, stride, padding, dilation, mult):
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2 * mult, 1, *kernel, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2 * mult, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, w, b: cvops.depthwise_conv2d(x, w, b, stride, padding, dilation)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    ops = torch.ops.cvops
    x = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    torch.library.opcheck(ops.depthwise_conv2d.default, (x, w, b, [1, 1], [1, 1], [1, 1]))
    torch.library.opcheck(ops.depthwise_conv2d.default, (x, w, None, [2, 1], [0, 2], [1, 2]))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(ops.depthwise_conv2d.default, (xc, w, b, [2, 2], [1, 1], [1, 1]))
    g = torch.randn(2, 6, 9, 8, device=device, requires_grad=True)
    torch.library.opcheck(
        ops._depthwise_conv2d_backward_input.default,
        (g, w, 2, 3, 9, 8, [1, 1], [1, 1], [1, 1]),
    )
    torch.library.opcheck(
        ops._depthwise_conv2d_backward_weight.default,
        (g, x, 3, 3, [1, 1], [1, 1], [1, 1]),
    )


@pytest.mark.slow
@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    layer = cvops.ops.DepthwiseConv2d(4, 3, stride=2, padding=1).to(device)

    def block(x):
        return F.relu6(layer(x)).mean(dim=(2, 3))

    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    x = torch.randn(2, 4, 10, 10, device=device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = compiled(xa), block(xb)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    wa = layer.weight.grad.clone()
    layer.weight.grad = None
    ref.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(wa, layer.weight.grad)


@pytest.mark.parametrize("device", devices())
def test_autocast(device):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    x = torch.randn(2, 4, 8, 8, device=device)
    w = torch.randn(4, 1, 3, 3, device=device)
    b = torch.randn(4, device=device)
    with torch.autocast(device, dtype=dtype):
        out = cvops.depthwise_conv2d(x, w, b, 1, 1)
        ref = F.conv2d(x, w, b, 1, 1, 1, 4)
    assert out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=5e-2)


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    # an input at least as large as the dilated kernel minus the padding
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 20))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 20))
    n, c, mult = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 2))
    bias = draw(st.booleans())
    channels_last = draw(st.booleans())
    return (n, c, h, w), (kh, kw), stride, padding, dilation, mult, bias, channels_last


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_property_matches_conv2d(case):
    shape, kernel, stride, padding, dilation, mult, bias, cl = case
    check_against_conv2d(shape, kernel, stride, padding, dilation, mult, bias, channels_last=cl)


def test_autograd_only_where_a_gradient_is_wanted():
    # With no input requiring a gradient, or under no_grad, the op skips its autograd node;
    # any one of input, weight and bias requiring it gets the node and its gradient.
    x, w, b = torch.randn(2, 3, 7, 7), torch.randn(3, 1, 3, 3), torch.randn(3)
    assert cvops.depthwise_conv2d(x, w, b, 1, 1).grad_fn is None
    for i in range(3):
        args = [x.clone(), w.clone(), b.clone()]
        args[i].requires_grad_()
        with torch.no_grad():
            assert not cvops.depthwise_conv2d(*args, 1, 1).requires_grad
        out = cvops.depthwise_conv2d(*args, 1, 1)
        assert out.grad_fn is not None
        out.sum().backward()
        want = [t.detach().double().requires_grad_(j == i) for j, t in enumerate(args)]
        F.conv2d(*want, 1, 1, 1, 3).sum().backward()
        torch.testing.assert_close(args[i].grad.double(), want[i].grad, rtol=1e-4, atol=1e-4)
