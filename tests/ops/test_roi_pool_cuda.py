"""RoI Pool on CUDA: against the CPU kernel and torchvision's CUDA kernel (skip without GPU)."""

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
@pytest.mark.parametrize("ties", [False, True])
def test_cuda_matches_cpu_and_torchvision(dtype, ties):
    x = torch.randint(0, 3, (2, 8, 25, 31)).float() if ties else torch.randn(2, 8, 25, 31)
    rois = random_boxes(200, 50, 62, 2)
    xc, rc = x.to(dtype), rois.to(dtype)
    cpu_out, cpu_argmax = torch.ops.cvops.roi_pool(xc, rc, 0.5, 5, 4)
    gpu_out, gpu_argmax = torch.ops.cvops.roi_pool(xc.cuda(), rc.cuda(), 0.5, 5, 4)
    # The bin math is shared and the max is exact: identical results on both devices.
    assert torch.equal(gpu_out.cpu(), cpu_out)
    assert torch.equal(gpu_argmax.cpu(), cpu_argmax)
    if dtype == torch.float32:
        tv = torchvision.ops.roi_pool(xc.cuda(), rc.cuda(), (5, 4), 0.5)
        torch.testing.assert_close(gpu_out, tv)
    xa = xc.clone().requires_grad_()
    xg = xc.cuda().requires_grad_()
    g = torch.randn(cpu_out.shape).to(dtype)
    cvops.roi_pool(xa, rc, (5, 4), 0.5).backward(g)
    cvops.roi_pool(xg, rc.cuda(), (5, 4), 0.5).backward(g.cuda())
    tol = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 2e-2}
    torch.testing.assert_close(
        xg.grad.cpu().float(), xa.grad.float(), atol=tol[dtype] * 10, rtol=tol[dtype]
    )


def test_cuda_channels_last_and_strided_grad():
    x = torch.randn(2, 16, 20, 20, device="cuda").contiguous(memory_format=torch.channels_last)
    rois = random_boxes(64, 40, 40, 2, device="cuda")
    xa = x.clone().requires_grad_()
    out = cvops.roi_pool(xa, rois, 4, 0.5)
    torch.testing.assert_close(out, torchvision.ops.roi_pool(x, rois, 4, 0.5))
    out.transpose(2, 3).sum().backward()  # strided incoming gradient
    xb = x.clone().requires_grad_()
    torchvision.ops.roi_pool(xb, rois, 4, 0.5).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_deterministic_backward_bitwise_and_close_to_default(dtype):
    x = torch.randint(0, 4, (2, 32, 50, 50), device="cuda").to(dtype)  # shared argmaxes
    rois = random_boxes(2000, 100, 100, 2, dtype=dtype, device="cuda")
    grad = torch.randn(2000, 32, 7, 7, device="cuda").to(dtype)

    def run():
        xg = x.clone().requires_grad_()
        cvops.roi_pool(xg, rois, 7, 0.5).backward(grad)
        return xg.grad

    default = run()
    torch.use_deterministic_algorithms(True)
    try:
        a, b = run(), run()
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a, b)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(a.float(), default.float(), atol=tol, rtol=tol)
    # The CPU backward is deterministic too; all three agree.
    xc = x.cpu().requires_grad_()
    cvops.roi_pool(xc, rois.cpu(), 7, 0.5).backward(grad.cpu())
    torch.testing.assert_close(a.cpu().float(), xc.grad.float(), atol=tol, rtol=tol)


def test_cuda_bad_batch_index_raises():
    x = torch.randn(1, 2, 5, 5, device="cuda")
    rois = torch.tensor([[3, 0.0, 0.0, 2.0, 2.0]], device="cuda")
    with pytest.raises(ValueError, match="valid batch index"):
        cvops.roi_pool(x, rois, 2)


def test_cuda_autocast_half():
    x = torch.randn(2, 4, 10, 10, device="cuda")
    rois = random_boxes(16, 20, 20, 2, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = cvops.roi_pool(x.half(), rois, 3, 0.5)
    assert out.dtype == torch.float16
    assert torch.equal(out.float(), cvops.roi_pool(x.half().float(), rois, 3, 0.5))


def test_cuda_graph_capture_forward():
    x = torch.randn(2, 4, 10, 10, device="cuda")
    rois = random_boxes(16, 20, 20, 2, device="cuda")
    expected = cvops.roi_pool(x, rois, 3, 0.5)
    graph, out = capture(lambda: cvops.roi_pool(x, rois, 3, 0.5))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("bad", BAD_BATCH_INDICES_UNDER_CAPTURE)
def test_cuda_graph_capture_bad_batch_index_gives_nan_and_no_gradient(bad):
    # Same rule as RoI Align (csrc/common/roi_batch_index.h): -0.5 and 0.5 name no image.
    x = torch.randn(2, 4, 10, 10, device="cuda")
    rois = random_boxes(6, 20, 20, 2, device="cuda")
    expected, argmax = torch.ops.cvops.roi_pool(x, rois, 0.5, 3, 3)
    grad = torch.randn_like(expected)
    args = (0.5, 3, 3, 2, 4, 10, 10)
    graph, ((out, _), gin) = capture(
        lambda: (
            torch.ops.cvops.roi_pool(x, rois, 0.5, 3, 3),
            torch.ops.cvops._roi_pool_backward(grad, rois, argmax, *args),
        )
    )
    keep = replay_with_bad_batch_index(graph, rois, bad)
    assert torch.isnan(out[2]).all()
    torch.testing.assert_close(out[keep], expected[keep])
    ref = torch.ops.cvops._roi_pool_backward(grad[keep], rois[keep], argmax[keep], *args)
    torch.testing.assert_close(gin, ref)


def test_cuda_deterministic_backward_of_zero_gradient_is_exactly_zero():
    x = torch.randn(2, 4, 12, 12, device="cuda", requires_grad=True)
    rois = random_boxes(32, 24, 24, 2, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        out = cvops.roi_pool(x, rois, 3, 0.5)
        (g,) = torch.autograd.grad(out, x, torch.zeros_like(out))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(g, torch.zeros_like(g))
