"""RoI Pool's input contract: clear exceptions for bad input, empty and non-finite boxes."""

import pytest
import torch

import cvops
from tests.conftest import devices, requires_ops
from tests.ops._roi_contract import (
    BAD_ARGUMENTS,
    BAD_BATCH_INDEX_MESSAGE,
    BAD_BATCH_INDICES,
    ok_inputs,
)

pytestmark = requires_ops


@pytest.mark.parametrize(
    "make,exc,match",
    BAD_ARGUMENTS
    + [
        (lambda x, r: (x, r, 2, {"spatial_scale": float("inf")}), ValueError, "spatial_scale"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, exc, match):
    x, rois = ok_inputs()
    args = make(x, rois)
    with pytest.raises(exc, match=match):
        cvops.roi_pool(*args[:3], **args[3])


@pytest.mark.parametrize("bad_index", BAD_BATCH_INDICES)
def test_bad_batch_index_raises(bad_index):
    x, rois = ok_inputs()
    rois[1, 0] = bad_index
    with pytest.raises(ValueError, match=BAD_BATCH_INDEX_MESSAGE):
        cvops.roi_pool(x, rois, 2)


def test_backward_op_checks_its_arguments():
    x, rois = ok_inputs()
    out, argmax = torch.ops.cvops.roi_pool(x, rois, 1.0, 2, 2)
    grad = torch.ones_like(out)
    bw = torch.ops.cvops._roi_pool_backward
    bad_rois = rois.clone()
    bad_rois[0, 0] = 5
    with pytest.raises(ValueError, match="valid batch index"):
        bw(grad, bad_rois, argmax, 1.0, 2, 2, 2, 3, 8, 8)
    with pytest.raises(TypeError, match="int32 argmax"):
        bw(grad, rois, argmax.long(), 1.0, 2, 2, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="expected argmax of shape"):
        bw(grad, rois, argmax[:1], 1.0, 2, 2, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="expected grad of shape"):
        bw(grad[:, :2], rois, argmax[:, :2], 1.0, 2, 2, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="input sizes must be non-negative"):
        bw(grad, rois, argmax, 1.0, 2, 2, 2, 3, -8, 8)


def test_backward_ignores_argmax_outside_the_plane():
    # A hand-made argmax must never write out of bounds.
    x, rois = ok_inputs()
    out, argmax = torch.ops.cvops.roi_pool(x, rois, 1.0, 2, 2)
    argmax = argmax.clone()
    argmax[0, 0, 0, 0] = 64  # one past the 8 x 8 plane
    argmax[0, 0, 0, 1] = -7
    gi = torch.ops.cvops._roi_pool_backward(
        torch.ones_like(out), rois, argmax, 1.0, 2, 2, 2, 3, 8, 8
    )
    assert gi.sum().item() == out.numel() - 2


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_backward_op_gives_no_gradient_to_non_finite_boxes(device, bad):
    # Called directly with an argmax that points inside the plane, the backward still gives
    # a RoI with a non-finite box no gradient, on both backends (roi_pool.h: roi_image).
    x, rois = ok_inputs()
    x, rois = x.to(device), rois.to(device)
    out, argmax = torch.ops.cvops.roi_pool(x, rois, 1.0, 2, 2)
    bad_rois = rois.clone()
    bad_rois[1, 3] = bad
    gi = torch.ops.cvops._roi_pool_backward(
        torch.ones_like(out), bad_rois, argmax, 1.0, 2, 2, 2, 3, 8, 8
    )
    assert gi[1].sum().item() == 0 and gi[0].sum().item() == out[0].numel()


def test_device_mismatch_raises():
    x, rois = ok_inputs()
    with pytest.raises(RuntimeError, match="same device"):
        cvops.roi_pool(x, rois.to("meta"), 2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("boxes_format", ["tensor", "list"])
def test_empty_boxes_give_empty_output_and_zero_grad(device, boxes_format):
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    boxes = (
        torch.zeros(0, 5, device=device)
        if boxes_format == "tensor"
        else [torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)]
    )
    out = cvops.roi_pool(x, boxes, (3, 4), 0.5)
    assert out.shape == (0, 3, 3, 4)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", devices())
def test_zero_channels_and_zero_size_map(device):
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0], [0, float("nan"), 0.0, 3.0, 3.0]], device=device)
    assert cvops.roi_pool(torch.randn(1, 0, 4, 4, device=device), rois, 2).shape == (2, 0, 2, 2)
    x = torch.randn(1, 2, 0, 5, device=device, requires_grad=True)
    out, argmax = torch.ops.cvops.roi_pool(x, rois, 1.0, 2, 2)
    assert torch.equal(out[0], torch.zeros(2, 2, 2, device=device))
    assert torch.isnan(out[1]).all() and (argmax == -1).all()
    out[0].sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_box_gives_nan_output_and_no_gradient(device, bad):
    x = torch.randn(1, 2, 6, 6, device=device, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0], [0, 1.0, bad, 4.0, 4.0]], device=device)
    out = cvops.roi_pool(x, rois, 2, 1.0)
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1]).all()
    out.nan_to_num().sum().backward()
    xb = x.detach().clone().requires_grad_()
    cvops.roi_pool(xb, rois[:1], 2, 1.0).sum().backward()
    assert torch.equal(x.grad, xb.grad)


@pytest.mark.parametrize("device", devices())
def test_nan_in_a_bin_propagates(device):
    x = torch.arange(16.0, device=device).view(1, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], device=device)
    out, argmax = torch.ops.cvops.roi_pool(x, rois, 1.0, 2, 2)
    assert torch.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0].item() == 5  # first NaN wins
    assert torch.isnan(out[0, 0, 0, 1]) and argmax[0, 0, 0, 1].item() == 6
    assert out[0, 0, 1, 1].item() == 15.0


def test_huge_boxes_are_well_defined():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, -1e30, -1e30, 1e30, 1e30], [0, 0.0, 0.0, 1e300, 4.0]], dtype=x.dtype)
    out = cvops.roi_pool(x, rois, 2, 1.0)
    assert torch.isfinite(out).all()


def test_autocast_cpu_mixed_dtypes():
    x = torch.randn(2, 3, 8, 8).bfloat16()
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cvops.roi_pool(x, rois, 2, 1.0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), cvops.roi_pool(x.float(), rois, 2, 1.0))


def test_nan_rule_is_the_same_in_both_cpu_layouts():
    # 20 channels: the vectorised channels-last path (16 + a scalar tail) and the planar path
    # must pick the same first NaN, or the first maximum where there is none.
    x = torch.randint(0, 3, (1, 20, 12, 12)).float()  # RoIs cover little: planar for NCHW
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.15
    x[mask] = float("nan")
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 5.0], [0, 1.0, 2.0, 4.0, 5.0]])
    planar = torch.ops.cvops.roi_pool(x, rois, 1.0, 3, 2)  # few RoIs: planar NCHW path
    cl = torch.ops.cvops.roi_pool(x.contiguous(memory_format=torch.channels_last), rois, 1.0, 3, 2)
    assert torch.equal(planar[1], cl[1])
    torch.testing.assert_close(planar[0], cl[0], equal_nan=True, atol=0, rtol=0)
    assert torch.isnan(cl[0]).any() and not torch.isnan(cl[0]).all()
    # The chosen index holds the output (the NaN itself where the bin has one).
    flat = x.flatten(2)[0]  # [C, H * W]
    picked = flat.gather(1, cl[1].flatten(2)[0].long()).view_as(cl[0][0])
    torch.testing.assert_close(picked, cl[0][0], equal_nan=True, atol=0, rtol=0)
