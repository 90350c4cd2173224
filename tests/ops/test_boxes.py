"""Box utilities against torchvision.ops (bitwise on the same inputs)."""

import pytest
import torch
import torchvision.ops as tvo

import cvops
from cvops.ops import boxes as B


def _boxes(n, seed, dtype=torch.float32, batch=()):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*batch, n, 2, generator=g) * 200 - 100
    wh = torch.rand(*batch, n, 2, generator=g) * 50
    return torch.cat([xy, xy + wh], -1).to(dtype)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]
)
def test_pairwise_matches_torchvision(name, dtype):
    a, b = _boxes(30, 0, dtype), _boxes(20, 1, dtype)
    # Identical and degenerate boxes too.
    a[0] = b[0]
    a[1, 2] = a[1, 0]
    torch.testing.assert_close(
        getattr(B, name)(a, b), getattr(tvo, name)(a, b), rtol=0, atol=0, equal_nan=True
    )


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "complete_box_iou"])
def test_pairwise_batched_dims(name):
    a, b = _boxes(7, 2, batch=(3,)), _boxes(5, 3, batch=(3,))
    out = getattr(B, name)(a, b)
    assert out.shape == (3, 7, 5)
    for i in range(3):
        torch.testing.assert_close(out[i], getattr(tvo, name)(a[i], b[i]))


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_iou_and_area_formats(fmt):
    a, b = _boxes(10, 4), _boxes(12, 5)
    a_f, b_f = tvo.box_convert(a, "xyxy", fmt), tvo.box_convert(b, "xyxy", fmt)
    torch.testing.assert_close(B.box_iou(a_f, b_f, fmt), tvo.box_iou(a_f, b_f, fmt=fmt))
    torch.testing.assert_close(B.box_area(a_f, fmt), tvo.box_area(a_f, fmt=fmt))


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert(in_fmt, out_fmt):
    x = _boxes(16, 6, torch.float64)
    got = B.box_convert(x, in_fmt, out_fmt)
    torch.testing.assert_close(got, tvo.box_convert(x, in_fmt, out_fmt), rtol=0, atol=0)
    assert got.data_ptr() != x.data_ptr()


def test_box_area_integer_and_half():
    x = torch.tensor([[0, 0, 300, 300]], dtype=torch.int16)
    assert B.box_area(x).tolist() == tvo.box_area(x).tolist() == [90000]
    h = _boxes(5, 7, torch.float16)
    assert B.box_area(h).dtype == torch.float32
    torch.testing.assert_close(B.box_area(h), tvo.box_area(h))


def test_clip_and_remove_small():
    x = _boxes(40, 8)
    torch.testing.assert_close(
        B.clip_boxes_to_image(x, (30, 50)), tvo.clip_boxes_to_image(x, (30, 50))
    )
    torch.testing.assert_close(B.remove_small_boxes(x, 20.0), tvo.remove_small_boxes(x, 20.0))


def test_gradients_flow_like_torchvision():
    a = _boxes(6, 9, torch.float64).requires_grad_()
    b = _boxes(4, 10, torch.float64)
    B.complete_box_iou(a, b).sum().backward()
    g_ours = a.grad.clone()
    a.grad = None
    tvo.complete_box_iou(a, b).sum().backward()
    torch.testing.assert_close(g_ours, a.grad)


def test_bad_input():
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., 4\]"):
        B.box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="boxes must be a Tensor"):
        B.box_area([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="in_fmt must be one of"):
        B.box_convert(torch.zeros(1, 4), "polygon", "xyxy")
    with pytest.raises(ValueError, match="fmt must be one of"):
        B.box_area(torch.zeros(1, 4), "polygon")
    with pytest.raises(ValueError, match="size must be"):
        B.clip_boxes_to_image(torch.zeros(1, 4), 5)


def test_exported_at_top_level():
    assert cvops.box_iou is B.box_iou and cvops.ops.complete_box_iou is B.complete_box_iou
