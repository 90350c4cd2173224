"""RoI Align forward and backward against torchvision (CPU) over random configurations."""

import pytest
import torch
import torchvision

import cvops
from tests.conftest import devices, requires_ops
from tests.ops.roi_cases import random_boxes, rois_to_list

pytestmark = requires_ops

CONFIGS = [
    # (N, C, H, W, output_size, spatial_scale)
    (2, 3, 10, 12, 3, 1.0),
    (1, 5, 17, 9, (2, 4), 0.5),
    (3, 4, 24, 20, 7, 0.25),
    (2, 16, 13, 19, 5, 1 / 16),
    (1, 1, 1, 1, 2, 1.0),
]


def _inputs(N, C, H, W, spatial_scale, num_rois=40, dtype=torch.float64, device="cpu"):
    x = torch.randn(N, C, H, W, dtype=dtype, device=device)
    rois = random_boxes(num_rois, H / spatial_scale, W / spatial_scale, N, dtype, device)
    return x, rois


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 4])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_torchvision(config, sampling_ratio, aligned, dtype):
    N, C, H, W, output_size, scale = config
    x, rois = _inputs(N, C, H, W, scale, dtype=dtype)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ours = cvops.roi_align(x1, rois, output_size, scale, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(x2, rois, output_size, scale, sampling_ratio, aligned)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours, ref, **tol)
    grad = torch.randn_like(ref)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, **tol)


@pytest.mark.parametrize("aligned", [False, True])
def test_list_of_boxes_format(aligned):
    x, rois = _inputs(3, 4, 15, 15, 0.5, num_rois=30)
    boxes, order = rois_to_list(rois, 3)
    ours = cvops.roi_align(x, boxes, 3, 0.5, 2, aligned)
    ref = torchvision.ops.roi_align(x, boxes, 3, 0.5, 2, aligned)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours, cvops.roi_align(x, rois[order], 3, 0.5, 2, aligned))


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous", "expanded_rois"])
def test_memory_layouts(layout):
    x, rois = _inputs(2, 8, 16, 12, 1.0)
    if layout == "channels_last":
        xin = x.contiguous(memory_format=torch.channels_last)
        rin = rois
    elif layout == "non_contiguous":
        xin = torch.randn(2, 12, 16, 16, dtype=x.dtype).transpose(1, 3)[:, :8, :, :12]
        xin.copy_(x)
        rin = rois
    else:
        xin = x
        rin = torch.cat([rois, rois], 1)[:, :5]  # rows with stride 10
    assert not (xin.is_contiguous() and rin.is_contiguous())
    xa = xin.detach().requires_grad_()
    ours = cvops.roi_align(xa, rin, 4, 1.0, -1, True)
    ref = torchvision.ops.roi_align(x, rois, 4, 1.0, -1, True)
    torch.testing.assert_close(ours, ref)
    ours.backward(torch.ones_like(ours))
    xb = x.clone().requires_grad_()
    torchvision.ops.roi_align(xb, rois, 4, 1.0, -1, True).backward(torch.ones_like(ref))
    torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.parametrize("num_rois,sampling_ratio", [(2, 2), (300, 2), (300, 0)])
def test_both_cpu_layouts_agree(num_rois, sampling_ratio):
    # Few RoIs take the planar path, many take the channels-last path; both must be exact.
    x, rois = _inputs(2, 32, 40, 40, 0.5, num_rois=num_rois, dtype=torch.float32)
    xa = x.clone().requires_grad_()
    ours = cvops.roi_align(xa, rois, 7, 0.5, sampling_ratio, True)
    ref = torchvision.ops.roi_align(x, rois, 7, 0.5, sampling_ratio, True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ours)
    ours.backward(g)
    xb = x.clone().requires_grad_()
    torchvision.ops.roi_align(xb, rois, 7, 0.5, sampling_ratio, True).backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("device", devices())
def test_reduced_precision_within_tolerance(dtype, tol, device):
    # Stated tolerance: the kernel accumulates in float32, so the only error is rounding of
    # the input/boxes/output to the reduced type: max abs error <= tol * max|x|.
    x, rois = _inputs(2, 8, 20, 20, 0.5, dtype=torch.float32, device=device)
    xr, rr = x.to(dtype), rois.to(dtype)
    ours = cvops.roi_align(xr, rr, 5, 0.5, 2, True)
    assert ours.dtype == dtype
    ref = torchvision.ops.roi_align(xr.float(), rr.float(), 5, 0.5, 2, True)
    torch.testing.assert_close(ours.float(), ref, atol=tol * x.abs().max().item(), rtol=0)
    xg = xr.clone().requires_grad_()
    cvops.roi_align(xg, rr, 5, 0.5, 2, True).sum().backward()
    assert xg.grad.dtype == dtype
    xf = xr.float().requires_grad_()
    torchvision.ops.roi_align(xf, rr.float(), 5, 0.5, 2, True).sum().backward()
    torch.testing.assert_close(xg.grad.float(), xf.grad, atol=tol * 8, rtol=tol)


def test_large_case_matches_torchvision():
    # The benchmark's FPN-level shape (reduced channels) exercises the channels-last path.
    x = torch.randn(2, 32, 100, 136)
    K = 256
    xy = torch.rand(K, 2) * torch.tensor([136 * 8.0, 100 * 8.0])
    wh = torch.rand(K, 2) * 200 + 16
    rois = torch.cat([torch.randint(0, 2, (K, 1)).float(), xy, xy + wh], 1)
    for sr in (2, 0):
        torch.testing.assert_close(
            cvops.roi_align(x, rois, 7, 1 / 8, sr, True),
            torchvision.ops.roi_align(x, rois, 7, 1 / 8, sr, True),
        )


def test_module_matches_function_and_has_repr():
    m = cvops.ops.RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    assert (
        repr(m)
        == "RoIAlign(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)"
    )
    x, rois = _inputs(2, 4, 20, 20, 0.25)
    torch.testing.assert_close(m(x, rois), cvops.roi_align(x, rois, 7, 0.25, 2, True))
    tv = torchvision.ops.RoIAlign((7, 7), 0.25, 2, True)
    torch.testing.assert_close(m(x, rois), tv(x, rois))
