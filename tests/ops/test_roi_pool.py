"""RoI Pool forward and backward against torchvision (CPU) over random configurations."""

import pytest
import torch
import torchvision

import cvops
from tests.conftest import devices, requires_ops, run_python
from tests.ops.roi_cases import random_boxes, rois_to_list

pytestmark = requires_ops

CONFIGS = [
    # (N, C, H, W, output_size, spatial_scale)
    (2, 3, 10, 12, 3, 1.0),
    (1, 5, 17, 9, (2, 4), 0.5),
    (3, 4, 24, 20, 7, 0.25),
    (2, 16, 13, 19, 5, 1 / 16),
    (2, 20, 11, 9, (3, 5), 0.3),  # 20 channels: vector chunks plus a scalar tail
    (1, 1, 1, 1, 2, 1.0),
]


def _inputs(N, C, H, W, spatial_scale, num_rois=40, dtype=torch.float64, ties=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many ties for the maximum inside a bin
        x = torch.randint(0, 3, (N, C, H, W), generator=g).to(dtype)
    else:
        x = torch.randn(N, C, H, W, dtype=dtype, generator=g)
    rois = random_boxes(num_rois, H / spatial_scale, W / spatial_scale, N, dtype, generator=g)
    return x, rois


def _tv_with_argmax(x, rois, output_size, scale):
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    return torch.ops.torchvision.roi_pool(x, rois, scale, ph, pw)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_forward_and_backward_match_torchvision(config, dtype, ties, layout):
    N, C, H, W, output_size, scale = config
    x, rois = _inputs(N, C, H, W, scale, dtype=dtype, ties=ties)
    xin = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    x1 = xin.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ours = cvops.roi_pool(x1, rois, output_size, scale)
    ref = torchvision.ops.roi_pool(x2, rois, output_size, scale)
    # Max pooling is exact: same values, and the same argmax (first maximum on ties).
    assert torch.equal(ours, ref)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, argmax = torch.ops.cvops.roi_pool(xin, rois, scale, ph, pw)
    assert torch.equal(argmax, _tv_with_argmax(x, rois, output_size, scale)[1])
    grad = torch.randn_like(ref)
    ours.backward(grad)
    ref.backward(grad)
    # Summed in the same order as torchvision's serial loop: bitwise equal.
    assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize("num_rois", [2, 300])
def test_both_cpu_layouts_agree_with_torchvision(num_rois):
    # Few RoIs take the planar path, many take the channels-last path.
    x, rois = _inputs(2, 32, 40, 40, 0.5, num_rois=num_rois, dtype=torch.float32)
    xa = x.clone().requires_grad_()
    ours = cvops.roi_pool(xa, rois, 7, 0.5)
    xb = x.clone().requires_grad_()
    ref = torchvision.ops.roi_pool(xb, rois, 7, 0.5)
    assert torch.equal(ours, ref)
    g = torch.randn_like(ours)
    ours.backward(g)
    ref.backward(g)
    assert torch.equal(xa.grad, xb.grad)


def test_list_of_boxes_format():
    x, rois = _inputs(3, 4, 15, 15, 0.5, num_rois=30)
    boxes, order = rois_to_list(rois, 3)
    ours = cvops.roi_pool(x, boxes, 3, 0.5)
    assert torch.equal(ours, torchvision.ops.roi_pool(x, boxes, 3, 0.5))
    assert torch.equal(ours, cvops.roi_pool(x, rois[order], 3, 0.5))


@pytest.mark.parametrize("layout", ["non_contiguous", "expanded_rois", "strided_grad"])
def test_memory_layouts(layout):
    x, rois = _inputs(2, 8, 16, 12, 1.0)
    xin, rin = x, rois
    if layout == "non_contiguous":
        xin = torch.randn(2, 12, 16, 16, dtype=x.dtype).transpose(1, 3)[:, :8, :, :12]
        xin.copy_(x)
        assert not xin.is_contiguous()
    elif layout == "expanded_rois":
        rin = torch.cat([rois, rois], 1)[:, :5]  # rows with stride 10
        assert not rin.is_contiguous()
    xa = xin.detach().requires_grad_()
    ours = cvops.roi_pool(xa, rin, 4, 1.0)
    xb = x.clone().requires_grad_()
    ref = torchvision.ops.roi_pool(xb, rois, 4, 1.0)
    assert torch.equal(ours, ref)
    if layout == "strided_grad":
        g = torch.randn(ref.shape[0], 8, 4, 4, dtype=x.dtype).transpose(2, 3)
    else:
        g = torch.randn_like(ref)
    ours.backward(g)
    ref.backward(g)
    assert torch.equal(xa.grad, xb.grad)


def test_empty_bins_and_boxes_outside_the_map():
    x = torch.randn(1, 3, 6, 6)
    rois = torch.tensor(
        [
            [0, 100.0, 100.0, 120.0, 120.0],  # wholly outside: every bin empty
            [0, -10.0, -10.0, 2.0, 2.0],  # partly outside
            [0, 1.0, 1.0, 1.0, 1.0],  # a single pixel pooled into 3x3 bins
            [0, 5.0, 5.0, 1.0, 1.0],  # flipped: forced to 1x1
            [0, 3.0, 3.0, 10.0, 10.0],  # the last bin row and column lie past the map
        ]
    )
    out, argmax = torch.ops.cvops.roi_pool(x, rois, 1.0, 3, 3)
    ref, ref_argmax = torch.ops.torchvision.roi_pool(x, rois, 1.0, 3, 3)
    assert torch.equal(out, ref) and torch.equal(argmax, ref_argmax)
    assert torch.equal(out[0], torch.zeros(3, 3, 3)) and (argmax[0] == -1).all()
    assert (argmax[2] == 7).all()  # every bin holds the same single pixel
    assert (argmax[4, :, 2, :] == -1).all() and (argmax[4, :, :2, :2] >= 0).all()
    assert torch.equal(out[4, :, 2, :], torch.zeros(3, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", devices())
def test_reduced_precision(dtype, device):
    # Max pooling only selects values, so it is exact in any dtype given the same boxes.
    x, rois = _inputs(2, 24, 20, 20, 0.5, dtype=torch.float32)
    xr, rr = x.to(dtype).to(device), rois.to(dtype).to(device)
    xg = xr.clone().requires_grad_()
    ours = cvops.roi_pool(xg, rr, 5, 0.5)
    assert ours.dtype == dtype
    xf = xr.float().requires_grad_()
    ref = torchvision.ops.roi_pool(xf.cpu(), rr.float().cpu(), 5, 0.5)
    assert torch.equal(ours.float().cpu(), ref)
    g = torch.randn(ref.shape).to(dtype)
    ours.backward(g.to(device))
    ref.backward(g.float())
    assert xg.grad.dtype == dtype
    torch.testing.assert_close(xg.grad.float().cpu(), xf.grad.cpu().to(dtype).float())


def test_large_case_matches_torchvision():
    # The benchmark's shape (reduced channels) exercises the channels-last path.
    x = torch.randn(2, 32, 100, 136)
    K = 256
    xy = torch.rand(K, 2) * torch.tensor([136 * 8.0, 100 * 8.0])
    wh = torch.rand(K, 2) * 200 + 16
    rois = torch.cat([torch.randint(0, 2, (K, 1)).float(), xy, xy + wh], 1)
    assert torch.equal(
        cvops.roi_pool(x, rois, 7, 1 / 8), torchvision.ops.roi_pool(x, rois, 7, 1 / 8)
    )


def test_module_matches_function_and_has_repr():
    m = cvops.ops.RoIPool((7, 7), spatial_scale=0.25)
    assert repr(m) == "RoIPool(output_size=(7, 7), spatial_scale=0.25)"
    x, rois = _inputs(2, 4, 20, 20, 0.25)
    assert torch.equal(m(x, rois), cvops.roi_pool(x, rois, 7, 0.25))
    assert torch.equal(m(x, rois), torchvision.ops.RoIPool((7, 7), 0.25)(x, rois))


def test_baseline_cpu_body_without_avx2():
    # The channels-last forward has an AVX2 body and a baseline (SSE2) body picked at run time;
    # CVOPS_DISABLE_AVX2=1 forces the baseline one, which this machine would otherwise skip.
    code = (
        "import torch, torchvision, cvops\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for dtype in (torch.float32, torch.float64, torch.bfloat16):\n"
        "    x = torch.randint(0, 5, (2, 37, 20, 20), generator=g).to(dtype)\n"
        "    x = x.contiguous(memory_format=torch.channels_last)\n"
        "    r = torch.rand(60, 4, generator=g, dtype=torch.float64) * 30\n"
        "    r = torch.cat([torch.randint(0, 2, (60, 1), generator=g), r[:, :2],\n"
        "                   r[:, :2] + r[:, 2:]], 1).to(dtype)\n"
        "    out, am = torch.ops.cvops.roi_pool(x, r, 0.5, 4, 3)\n"
        "    ref, ref_am = torch.ops.torchvision.roi_pool(x.float(), r.float(), 0.5, 4, 3)\n"
        "    assert torch.equal(out.float(), ref) and torch.equal(am, ref_am), dtype\n"
        "    y = x.clone()\n"
        "    y[0, 3, 5, 5] = float('nan')\n"
        "    o2, a2 = torch.ops.cvops.roi_pool(y, r, 0.5, 4, 3)\n"
        "    o3, a3 = torch.ops.cvops.roi_pool(y.contiguous(), r[:1], 0.5, 4, 3)\n"
        "    assert torch.equal(a2[:1], a3), dtype\n"
        "print('OK')\n"
    )
    run_python(code, CVOPS_DISABLE_AVX2="1")
