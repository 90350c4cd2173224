"""RoI Align on CUDA: against the CPU kernel and torchvision's CUDA kernel (skip without GPU)."""

import pytest
import torch
import torchvision

import cvops
from tests.conftest import requires_cuda, requires_ops
from tests.ops.roi_cases import (
    BAD_BATCH_INDICES_UNDER_CAPTURE,
    capture,
    random_boxes,
    replay_with_bad_batch_index,
)

pytestmark = [requires_ops, requires_cuda, pytest.mark.cuda]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_cuda_matches_cpu_and_torchvision(dtype, sampling_ratio, aligned):
    x = torch.randn(2, 8, 25, 31)
    rois = random_boxes(200, 50, 62, 2)
    tol = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 2e-2}[
        dtype
    ]
    xc, rc = x.to(dtype), rois.to(dtype)
    cpu = cvops.roi_align(xc.requires_grad_(), rc, 5, 0.5, sampling_ratio, aligned)
    xg = xc.detach().cuda().requires_grad_()
    gpu = cvops.roi_align(xg, rc.cuda(), 5, 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(gpu.cpu().float(), cpu.float(), atol=tol * 4, rtol=tol)
    if dtype in (torch.float32, torch.float64):
        tv = torchvision.ops.roi_align(
            xc.detach().cuda(), rc.cuda(), 5, 0.5, sampling_ratio, aligned
        )
        torch.testing.assert_close(gpu, tv, atol=tol, rtol=tol)
    g = torch.randn(cpu.shape).to(dtype)
    cpu.backward(g)
    gpu.backward(g.cuda())
    torch.testing.assert_close(xg.grad.cpu().float(), xc.grad.float(), atol=tol * 20, rtol=tol * 4)


def test_cuda_channels_last_and_strided_grad():
    x = torch.randn(2, 16, 20, 20, device="cuda").contiguous(memory_format=torch.channels_last)
    rois = random_boxes(64, 40, 40, 2, device="cuda")
    xa = x.clone().requires_grad_()
    out = cvops.roi_align(xa, rois, 4, 0.5, 2, True)
    torch.testing.assert_close(out, torchvision.ops.roi_align(x, rois, 4, 0.5, 2, True))
    out.transpose(2, 3).sum().backward()  # strided incoming gradient
    xb = x.clone().requires_grad_()
    torchvision.ops.roi_align(xb, rois, 4, 0.5, 2, True).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)


def test_cuda_deterministic_backward_bitwise_and_close_to_default():
    x = torch.randn(2, 32, 50, 50, device="cuda")
    rois = random_boxes(2000, 100, 100, 2, device="cuda")
    grad = torch.randn(2000, 32, 7, 7, device="cuda")

    def run():
        xg = x.clone().requires_grad_()
        cvops.roi_align(xg, rois, 7, 0.5, 2, True).backward(grad)
        return xg.grad

    default = run()
    torch.use_deterministic_algorithms(True)
    try:
        a, b = run(), run()
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, default, atol=1e-4, rtol=1e-4)


def test_cuda_bad_batch_index_raises():
    x = torch.randn(1, 2, 5, 5, device="cuda")
    rois = torch.tensor([[3, 0.0, 0.0, 2.0, 2.0]], device="cuda")
    with pytest.raises(ValueError, match="valid batch index"):
        cvops.roi_align(x, rois, 2)


def test_cuda_autocast_half():
    x = torch.randn(2, 4, 10, 10, device="cuda")
    rois = random_boxes(16, 20, 20, 2, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = cvops.roi_align(x.half(), rois, 3, 0.5, 2, True)
    assert out.dtype == torch.float16
    torch.testing.assert_close(
        out.float(), cvops.roi_align(x.half().float(), rois, 3, 0.5, 2, True), atol=2e-3, rtol=2e-3
    )


def test_cuda_graph_capture_forward():
    x = torch.randn(2, 4, 10, 10, device="cuda")
    rois = random_boxes(16, 20, 20, 2, device="cuda")
    expected = cvops.roi_align(x, rois, 3, 0.5, 2, True)
    graph, out = capture(lambda: cvops.roi_align(x, rois, 3, 0.5, 2, True))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("bad", BAD_BATCH_INDICES_UNDER_CAPTURE)
def test_cuda_graph_capture_bad_batch_index_gives_nan_and_no_gradient(bad):
    # The batch-index check is skipped under capture; the kernels then apply the same rule
    # (it used to read image 0 for -0.5 and NaN).
    x = torch.randn(2, 4, 10, 10, device="cuda")
    rois = random_boxes(6, 20, 20, 2, device="cuda")
    expected = cvops.roi_align(x, rois, 3, 0.5, 2, True)
    grad = torch.randn_like(expected)
    args = (0.5, 3, 3, 2, 4, 10, 10, 2, True)
    graph, (out, gin) = capture(
        lambda: (
            cvops.roi_align(x, rois, 3, 0.5, 2, True),
            torch.ops.cvops._roi_align_backward(grad, rois, *args),
        )
    )
    keep = replay_with_bad_batch_index(graph, rois, bad)
    assert torch.isnan(out[2]).all()
    torch.testing.assert_close(out[keep], expected[keep])
    ref = torch.ops.cvops._roi_align_backward(grad[keep], rois[keep], *args)
    torch.testing.assert_close(gin, ref)


def test_cuda_fma_example_matches_cpu_and_torchvision():
    # The review's example: spatial scale 1/14, aligned, adaptive sampling. Fused into FMAs
    # the box is 7.0000019 wide and takes 2 samples per bin, unfused (CPU, torchvision)
    # exactly 7 and 1 (csrc/common/rounded_math.h).
    x = torch.randn(1, 3, 60, 60)
    scale = float(torch.tensor(1 / 14, dtype=torch.float32))
    boxes = torch.tensor([[0, 448.25, 448.25, 546.25, 546.25], [0, 14.0, 28.0, 112.5, 99.75]])
    for sampling_ratio in (0, -1):
        gpu = cvops.roi_align(x.cuda(), boxes.cuda(), 7, scale, sampling_ratio, True)
        cpu = cvops.roi_align(x, boxes, 7, scale, sampling_ratio, True)
        tv = torchvision.ops.roi_align(x, boxes, 7, scale, sampling_ratio, True)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cpu, tv, rtol=1e-5, atol=1e-6)


def test_cuda_deterministic_backward_of_zero_gradient_is_exactly_zero():
    # An all-zero gradient used to make the fixed-point scale 2^1077 = inf (0 * inf = NaN on
    # the way to 0).
    x = torch.randn(2, 4, 12, 12, device="cuda", requires_grad=True)
    rois = random_boxes(32, 24, 24, 2, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        out = cvops.roi_align(x, rois, 3, 0.5, 2, True)
        (g,) = torch.autograd.grad(out, x, torch.zeros_like(out))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(g, torch.zeros_like(g))


def test_cuda_deterministic_backward_precision_is_absolute():
    # Fixed point: each contribution is rounded to a multiple of 2^-e, e chosen so that
    # max|grad| * bound * 2^e <= 2^61 (bound = K * PH * PW). In float64 the error against the
    # CPU's exact-order float64 sum is at most (contributions per pixel) * 2^-e / 2.
    rois = random_boxes(50, 32, 32, 1, dtype=torch.float64)
    grad = torch.randn(50, 2, 4, 4, dtype=torch.float64)
    grad[0, 0, 0, 0] = 1e3  # one large value sets the scale for all
    args = (0.5, 4, 4, 1, 2, 16, 16, 2, True)
    cpu = torch.ops.cvops._roi_align_backward(grad, rois, *args)
    torch.use_deterministic_algorithms(True)
    try:
        gpu = torch.ops.cvops._roi_align_backward(grad.cuda(), rois.cuda(), *args).cpu()
    finally:
        torch.use_deterministic_algorithms(False)
    bound = 50 * 4 * 4
    quantum = grad.abs().max().item() * bound * 2.0**-60  # 2^-e, within a factor of 2
    contributions = bound * 2 * 2 * 4  # bins x samples per bin x corners, an upper bound
    assert (gpu - cpu).abs().max().item() <= contributions * quantum / 2
