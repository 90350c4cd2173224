"""RoI Align on CUDA: against the CPU kernel and torchvision's CUDA kernel (skip without GPU)."""

import pytest
import torch
import torchvision

import cvops
from tests.conftest import requires_cuda, requires_ops
from tests.ops.roi_cases import random_boxes

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
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cvops.roi_align(x, rois, 3, 0.5, 2, True)  # warm-up outside capture
        with torch.cuda.graph(graph):
            out = cvops.roi_align(x, rois, 3, 0.5, 2, True)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)
