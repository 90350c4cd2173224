"""RoI Align's input contract: clear exceptions for bad input, empty and non-finite boxes."""

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
        (lambda x, r: (x, r, 2, {"sampling_ratio": -2}), ValueError, "sampling_ratio"),
        (lambda x, r: (x, r, 2, {"spatial_scale": float("nan")}), ValueError, "spatial_scale"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, exc, match):
    x, rois = ok_inputs()
    args = make(x, rois)
    with pytest.raises(exc, match=match):
        cvops.roi_align(*args[:3], **args[3])


@pytest.mark.parametrize("bad_index", BAD_BATCH_INDICES)
def test_bad_batch_index_raises(bad_index):
    x, rois = ok_inputs()
    rois[1, 0] = bad_index
    with pytest.raises(ValueError, match=BAD_BATCH_INDEX_MESSAGE):
        cvops.roi_align(x, rois, 2)


def test_bad_batch_index_raises_in_backward_op_too():
    x, rois = ok_inputs()
    rois[0, 0] = 5
    grad = torch.ones(2, 3, 2, 2)
    with pytest.raises(ValueError, match="valid batch index"):
        torch.ops.cvops._roi_align_backward(grad, rois, 1.0, 2, 2, 2, 3, 8, 8, -1, False)


def test_device_mismatch_raises():
    x, rois = ok_inputs()
    with pytest.raises(RuntimeError, match="same device"):
        cvops.roi_align(x, rois.to("meta"), 2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("boxes_format", ["tensor", "list"])
def test_empty_boxes_give_empty_output_and_zero_grad(device, boxes_format):
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    boxes = (
        torch.zeros(0, 5, device=device)
        if boxes_format == "tensor"
        else [torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)]
    )
    out = cvops.roi_align(x, boxes, (3, 4), 0.5, 2, True)
    assert out.shape == (0, 3, 3, 4)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", devices())
def test_zero_channels_and_zero_size_map(device):
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], device=device)
    assert cvops.roi_align(torch.randn(1, 0, 4, 4, device=device), rois, 2).shape == (1, 0, 2, 2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", [(1, 1, 0, 4), (1, 1, 4, 0), (2, 3, 0, 0)])
@pytest.mark.parametrize("aligned", [False, True])
def test_zero_area_map_gives_zeros_and_nan_for_invalid_boxes(device, shape, aligned):
    # A 0-high or 0-wide map has no sample inside it: every bin is 0 (it used to read row -1
    # and kill the process on the CPU). A non-finite box is NaN, as on any map.
    x = torch.randn(*shape, device=device, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.0, 0.0, 1.0, 1.0], [0, -3.0, -2.0, 9.0, 7.0], [0, float("nan"), 0.0, 1.0, 1.0]],
        device=device,
    )
    for sampling_ratio in (2, 0, -1):
        out = cvops.roi_align(x, rois, 2, 1.0, sampling_ratio, aligned)
        assert out.shape == (3, shape[1], 2, 2)
        assert torch.equal(out[:2], torch.zeros_like(out[:2]))
        assert torch.isnan(out[2]).all()
        out[:2].sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_box_gives_nan_output_and_no_gradient(device, bad):
    x = torch.randn(1, 2, 6, 6, device=device, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0], [0, 1.0, bad, 4.0, 4.0]], device=device)
    out = cvops.roi_align(x, rois, 2, 1.0, 2, True)
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1]).all()
    out[0].sum().backward()
    ref = torch.zeros_like(x, requires_grad=True)
    with torch.no_grad():
        ref.copy_(x)
    cvops.roi_align(ref, rois[:1], 2, 1.0, 2, True).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_huge_boxes_with_adaptive_sampling_finish():
    # ceil(1e9 / 2) samples per bin would never finish; the adaptive grid is capped.
    x = torch.randn(1, 1, 4, 4)
    rois = torch.tensor([[0, 0.0, 0.0, 1e9, 2.0]])
    out = cvops.roi_align(x, rois, 2, 1.0, 0, True)
    assert torch.isfinite(out).all()


def test_autocast_cpu_mixed_dtypes():
    x = torch.randn(2, 3, 8, 8).bfloat16()
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cvops.roi_align(x, rois, 2, 1.0, 2, True)
    assert out.dtype == torch.bfloat16
    ref = cvops.roi_align(x.float(), rois, 2, 1.0, 2, True)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)
