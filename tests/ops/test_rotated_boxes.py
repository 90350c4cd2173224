"""Rotated boxes (torchvision 0.29's formats) in box_convert and box_iou, against torchvision,
plus hand-computed cases for the polygon intersection."""

import math

import pytest
import torch
import torchvision.ops as tvo

from cvops.ops import boxes as B
from cvops.ops.rotated_boxes import rotated_box_iou

ROTATED = ["xywhr", "cxcywhr", "xyxyxyxy"]


def _cxcywhr(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    size = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30 + 0.5
    angle = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 360
    return torch.cat([centre, size, angle], 1).to(dtype)


def _in_format(boxes, fmt):
    return boxes if fmt == "cxcywhr" else tvo.box_convert(boxes, "cxcywhr", fmt)


@pytest.mark.parametrize("in_fmt", ROTATED)
@pytest.mark.parametrize("out_fmt", ROTATED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_box_convert_matches_torchvision(in_fmt, out_fmt, dtype):
    boxes = _in_format(_cxcywhr(12, 0), in_fmt).to(dtype)
    got = B.box_convert(boxes, in_fmt, out_fmt)
    want = tvo.box_convert(boxes, in_fmt, out_fmt)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_box_convert_round_trip_and_batch_dims():
    boxes = _cxcywhr(10, 1).view(2, 5, 5)
    corners = B.box_convert(boxes, "cxcywhr", "xyxyxyxy")
    assert corners.shape == (2, 5, 8)
    back = B.box_convert(corners, "xyxyxyxy", "cxcywhr")
    # The angle comes back modulo 360 degrees.
    torch.testing.assert_close(back[..., :4], boxes[..., :4])
    turn = torch.remainder(back[..., 4] - boxes[..., 4] + 180, 360) - 180
    torch.testing.assert_close(turn, torch.zeros_like(turn), atol=1e-9, rtol=0)


def test_box_convert_checks_the_coordinate_count():
    with pytest.raises(ValueError, match=r"boxes must have shape \[\.\.\., 8\]"):
        B.box_convert(torch.zeros(2, 5), "xyxyxyxy", "xywhr")
    with pytest.raises(ValueError, match=r"boxes must have shape \[\.\.\., 5\]"):
        B.box_convert(torch.zeros(2, 4), "cxcywhr", "xywhr")


@pytest.mark.parametrize("fmt", ROTATED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_torchvision(fmt, dtype):
    a, b = _cxcywhr(25, 2, dtype), _cxcywhr(30, 3, dtype)
    a[0] = b[0]  # identical
    a[1] = b[1]  # the same box described as w/h swapped and turned by 90 degrees
    a[1, 2], a[1, 3], a[1, 4] = b[1, 3], b[1, 2], b[1, 4] + 90
    a[2] = b[2]  # nearly identical
    a[2, 0] += 1e-3
    a[3, 2] = 0  # no area
    a, b = _in_format(a, fmt), _in_format(b, fmt)
    got = B.box_iou(a, b, fmt)
    want = tvo.box_iou(a, b, fmt=fmt)
    # torchvision's rotated kernel always returns float32; cvops keeps float64 (as both do
    # for axis-aligned boxes), so float64 differs by float32 rounding only.
    assert got.dtype == dtype and want.dtype == torch.float32
    atol = 2e-5 if dtype == torch.float32 else 1e-6
    torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=atol)
    assert float(got[0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert float(got[1, 1]) == pytest.approx(1.0, abs=1e-6)
    assert bool((got[3] == 0).all())


def test_rotated_iou_hand_computed():
    # Unit square and the same square turned by 45 degrees about the same centre: the
    # intersection is a regular octagon of area 2 (sqrt(2) - 1) * 2 ... computed below.
    square = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    turned = torch.tensor([[0.0, 0.0, 2.0, 2.0, 45.0]], dtype=torch.float64)
    # Octagon with inradius 1: area = 8 * tan(pi / 8).
    inter = 8 * math.tan(math.pi / 8)
    expected = inter / (4 + 4 - inter)
    assert float(rotated_box_iou(square, turned)) == pytest.approx(expected, rel=1e-12)
    # Half overlap: shifted by half a width, any multiple of 90 degrees.
    shifted = torch.tensor([[1.0, 0.0, 2.0, 2.0, 90.0]], dtype=torch.float64)
    assert float(rotated_box_iou(square, shifted)) == pytest.approx(2 / 6, rel=1e-12)
    # Disjoint and far away: exactly 0; leading batch dimensions.
    far = torch.tensor([[100.0, 0.0, 2.0, 2.0, 30.0]], dtype=torch.float64)
    out = rotated_box_iou(torch.stack([square, square]), torch.stack([far, turned]))
    assert out.shape == (2, 1, 1) and float(out[0]) == 0.0


def test_rotated_iou_with_zero_angle_is_axis_aligned_iou():
    a, b = _cxcywhr(15, 4), _cxcywhr(9, 5)
    a[:, 4] = 0
    b[:, 4] = 0
    xyxy = B.box_iou(
        B.box_convert(a[:, :4], "cxcywh", "xyxy"), B.box_convert(b[:, :4], "cxcywh", "xyxy")
    )
    torch.testing.assert_close(B.box_iou(a, b, "cxcywhr"), xyxy, rtol=0, atol=1e-12)
