"""Depthwise conv2d forward and gradients against F.conv2d(groups=C), the nn.Module's
nn.Conv2d compatibility, and the error contract."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cvops
from cvops.ops import DepthwiseConv2d
from tests.conftest import devices, requires_ops, run_python
from tests.ops._depthwise_routes import assert_model_routes

pytestmark = requires_ops

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=2e-2, atol=5e-2),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
}


def _reference(x, w, b, stride, padding, dilation):
    return F.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[1])


def check_against_conv2d(
    shape,
    kernel,
    stride,
    padding,
    dilation,
    mult=1,
    bias=True,
    dtype=torch.float64,
    device="cpu",
    channels_last=False,
):
    n, c, h, w_ = shape
    x = torch.randn(shape, dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c * mult, 1, *kernel, dtype=dtype, device=device)
    b = torch.randn(c * mult, dtype=dtype, device=device) if bias else None
    # the reference in float64 on CPU (and exact inputs), compared at the dtype's tolerance
    args64 = [t.double().cpu().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref = _reference(*args64, stride, padding, dilation)
    ins = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = cvops.depthwise_conv2d(*ins, stride, padding, dilation)
    assert out.shape == ref.shape and out.dtype == dtype
    if channels_last and not x.is_contiguous():  # (C == 1 or 1x1 planes: both layouts)
        assert out.is_contiguous(memory_format=torch.channels_last)
    tol = TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), ref, **tol)
    g = torch.randn(ref.shape, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, [t for t in args64 if t is not None], g)
    grads = torch.autograd.grad(out, [t for t in ins if t is not None], g.to(dtype).to(device))
    # weight gradients sum over the batch and the plane: scale the tolerance
    for got, want in zip(grads, ref_grads):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(
            got.double().cpu() / scale, want / scale, rtol=tol["rtol"], atol=tol["atol"] * 4
        )


def check_weight_grad_with_infinities(x, g, stride, padding, finite):
    """The float32 weight gradient of float64 x (with infinities) and g against autograd on
    F.conv2d in float64, NaN for NaN, and want[finite] all finite: the kernel multiplies no
    input that the true sum does not contain."""
    c, k = x.shape[1], 3
    w = torch.zeros(c, 1, k, k, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(F.conv2d(x, w, None, stride, padding, 1, c), w, g)
    got = torch.ops.cvops._depthwise_conv2d_backward_weight(
        g.float(), x.float(), k, k, [stride, stride], [padding, padding], [1, 1]
    )[0].double()
    assert torch.isfinite(want[finite]).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3, equal_nan=True)


MOBILENET_LIKE = [
    # shape, kernel, stride, padding, dilation, mult
    ((2, 4, 9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 9, 10), (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 3, 11, 8), (5, 5), (1, 1), (2, 2), (1, 1), 1),
    ((1, 3, 11, 8), (5, 5), (2, 2), (2, 2), (1, 1), 1),
    ((3, 2, 13, 13), (7, 7), (1, 1), (3, 3), (1, 1), 1),
    ((3, 2, 13, 12), (7, 7), (2, 2), (3, 3), (1, 1), 2),
    ((2, 3, 8, 7), (2, 4), (3, 1), (0, 2), (2, 1), 2),
    ((1, 2, 6, 9), (1, 1), (1, 2), (0, 0), (1, 1), 1),
    ((2, 5, 10, 10), (3, 3), (1, 1), (2, 2), (2, 2), 1),
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", MOBILENET_LIKE, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d_float64(device, case, bias):
    shape, kernel, stride, padding, dilation, mult = case
    check_against_conv2d(shape, kernel, stride, padding, dilation, mult, bias, device=device)


@pytest.mark.usefixtures("default_depthwise_path")
@pytest.mark.parametrize("case", MOBILENET_LIKE, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_routes(case, dtype):
    # The CPU plan for these: multiplier 2 and float64 the blocked kernel; float32 the AVX-512
    # kernels' (or blocked without AVX-512).
    shape, kernel, stride, padding, dilation, mult = case
    weight_shape = (shape[1] * mult, 1) + kernel
    plan = assert_model_routes(shape, weight_shape, stride, padding, dilation, dtype=dtype)
    if mult > 1 or dtype == torch.float64:
        assert plan == dict(
            forward="blocked", input_grad="blocked", weight_grad="blocked", backward="separate"
        )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stride", [1, 2])
def test_low_precision_dtypes(device, dtype, stride):
    check_against_conv2d(
        (2, 8, 12, 12), (3, 3), (stride, stride), (1, 1), (1, 1), 1, True, dtype, device
    )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kernel,stride", [((3, 3), 1), ((5, 5), 2), ((3, 2), 3)])
def test_channels_last(device, kernel, stride):
    check_against_conv2d(
        (2, 16, 9, 11),
        kernel,
        (stride, stride),
        (1, 1),
        (1, 1),
        1,
        True,
        device=device,
        channels_last=True,
    )


@pytest.mark.parametrize("device", devices())
def test_wide_plane_and_large_batch(device):
    # rows longer than several vector widths and many (batch, channel) planes
    check_against_conv2d(
        (5, 3, 6, 67), (3, 3), (1, 1), (1, 1), (1, 1), dtype=torch.float32, device=device
    )
    check_against_conv2d(
        (1, 40, 5, 5), (3, 3), (1, 1), (1, 1), (1, 1), dtype=torch.float32, device=device
    )


@pytest.mark.parametrize("device", devices())
def test_empty_batch(device):
    x = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    out = cvops.depthwise_conv2d(x, w, b, 1, 1)
    assert out.shape == (0, 6, 8, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("device", devices())
def test_backward_is_deterministic(device):
    x = torch.randn(4, 8, 20, 20, device=device)
    w = torch.randn(8, 1, 3, 3, device=device)
    g = torch.randn(4, 8, 20, 20, device=device)
    grads = []
    for _ in range(3):
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        cvops.depthwise_conv2d(xg, wg, None, 1, 1).backward(g)
        grads.append((xg.grad, wg.grad))
    for gx, gw in grads[1:]:
        assert torch.equal(gx, grads[0][0]) and torch.equal(gw, grads[0][1])


@pytest.mark.parametrize(
    "shape, stride",
    [
        ((6, 8, 15, 15), 1),
        ((6, 21, 7, 7), 1),
        ((5, 3, 30, 30), 1),
        ((6, 8, 28, 28), 2),
        ((5, 3, 13, 17), 2),
    ],
)
def test_thread_count_does_not_change_the_weight_gradient(shape, stride):
    x = torch.randn(shape)
    oh, ow = ((size - 1) // stride + 1 for size in shape[2:])
    g = torch.randn(shape[0], shape[1], oh, ow)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(
                torch.ops.cvops._depthwise_conv2d_backward_weight(
                    g, x, 3, 3, [stride, stride], [1, 1], [1, 1]
                )
            )
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# --- nn.Module ---------------------------------------------------------------------------


@pytest.mark.parametrize("mult,bias", [(1, True), (2, False)])
def test_module_matches_nn_conv2d_state_dict(mult, bias):
    conv = nn.Conv2d(6, 6 * mult, 3, stride=2, padding=1, groups=6, bias=bias)
    layer = DepthwiseConv2d(6, 3, stride=2, padding=1, bias=bias, channel_multiplier=mult)
    sd = conv.state_dict()
    assert {k: v.shape for k, v in layer.state_dict().items()} == {
        k: v.shape for k, v in sd.items()
    }
    layer.load_state_dict(sd, strict=True)
    x = torch.randn(2, 6, 10, 10)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in conv.named_parameters()]


def test_module_init_matches_nn_conv2d_distribution():
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 32, 3, groups=32)
    torch.manual_seed(1)
    layer = DepthwiseConv2d(32, 3)
    torch.testing.assert_close(layer.weight, conv.weight)
    torch.testing.assert_close(layer.bias, conv.bias)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_module_padding_modes(mode):
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, padding_mode=mode)
    layer = DepthwiseConv2d.from_conv2d(conv)
    x = torch.randn(2, 3, 7, 8)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_torchvision_mobilenet_block_weights_load():
    tv = pytest.importorskip("torchvision")
    model = tv.models.mobilenet_v2(weights=None)
    dw = model.features[2].conv[1][0]  # 3x3 depthwise conv of the second block
    assert dw.groups == dw.in_channels
    layer = DepthwiseConv2d(dw.in_channels, 3, stride=dw.stride, padding=1, bias=False)
    layer.load_state_dict(dw.state_dict(), strict=True)
    x = torch.randn(1, dw.in_channels, 16, 16)
    torch.testing.assert_close(layer(x), dw(x), rtol=1e-5, atol=1e-5)


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="padding_mode"):
        DepthwiseConv2d(3, 3, padding_mode="bogus")
    with pytest.raises(ValueError, match="positive"):
        DepthwiseConv2d(0, 3)
    with pytest.raises(ValueError, match="depthwise"):
        DepthwiseConv2d.from_conv2d(nn.Conv2d(4, 4, 3))


@pytest.mark.parametrize("device", devices())
def test_non_contiguous_inputs(device):
    x = torch.randn(2, 6, 10, 12, dtype=torch.float64, device=device)[:, ::2, :, 1:-1]
    w = torch.randn(3, 1, 6, 3, dtype=torch.float64, device=device)[:, :, ::2, :]
    b = torch.randn(6, dtype=torch.float64, device=device)[::2]
    assert not (x.is_contiguous() or w.is_contiguous() or b.is_contiguous())
    ref = F.conv2d(x, w, b, 1, 1, 1, 3)
    torch.testing.assert_close(cvops.depthwise_conv2d(x, w, b, 1, 1), ref)


def test_module_fuses_with_batchnorm():
    layer = DepthwiseConv2d(4, 3, padding=1).eval()
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    fused = torch.nn.utils.fuse_conv_bn_eval(layer, bn)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(layer(x)), rtol=1e-5, atol=1e-5)


def test_baseline_cpu_loops_without_avx2():
    # The CPU row kernels have an AVX2+FMA clone picked at run time; CVOPS_DISABLE_AVX2=1
    # forces the baseline build of the same loops, which machines without AVX2 run.
    code = (
        "import torch, torch.nn.functional as F, cvops\n"
        "from tests.ops.test_depthwise_conv2d import check_against_conv2d\n"
        "for dt in (torch.float64, torch.float32, torch.bfloat16):\n"
        "    check_against_conv2d((2, 3, 9, 13), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, dt)\n"
        "    check_against_conv2d((1, 2, 11, 10), (5, 4), (2, 1), (2, 1), (1, 2), 2, True, dt)\n"
        "print('OK')\n"
    )
    run_python(code, CVOPS_DISABLE_AVX2="1")
