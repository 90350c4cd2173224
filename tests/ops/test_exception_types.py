"""Argument errors are catchable as torchvision's exception types too, eager and scripted,
and batched_nms keeps torchvision's empty-input semantics."""

import warnings

import pytest
import torch

import cvops
from cvops.ops import boxes as B
from cvops.ops._errors import ArgumentError, ArgumentTypeError, BoxesShapeError
from tests.conftest import requires_ops

pytestmark = requires_ops


def test_error_classes_are_both_types():
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentError, RuntimeError)
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, RuntimeError)
    assert issubclass(BoxesShapeError, ValueError) and issubclass(BoxesShapeError, AssertionError)


# The cases where torchvision's test_ops.py expects RuntimeError from nms.
NMS_BAD = [
    (torch.rand(4), torch.rand(3), r"boxes of shape \[N, 4\]"),
    (torch.rand(3, 5), torch.rand(3), r"boxes of shape \[N, 4\]"),
    (torch.rand(3, 4), torch.rand(3, 2), r"scores of shape \[N\]"),
    (torch.rand(3, 4), torch.rand(4), "same length"),
]


@pytest.mark.parametrize("boxes,scores,match", NMS_BAD)
@pytest.mark.parametrize("exc", [ValueError, RuntimeError])
def test_nms_shape_errors(boxes, scores, match, exc):
    boxes = torch.cat([boxes[..., :2], boxes[..., :2] + 1, boxes[..., 4:]], -1)
    with pytest.raises(exc, match=match):
        cvops.nms(boxes, scores, 0.5)
    idxs = torch.zeros(len(boxes), dtype=torch.int64)
    with pytest.raises(exc, match=match):
        cvops.batched_nms(boxes, scores, idxs, 0.5)


def test_dtype_errors_are_type_and_runtime_errors():
    boxes, scores = torch.rand(3, 4), torch.rand(3, dtype=torch.float64)
    for exc in (TypeError, RuntimeError):
        with pytest.raises(exc, match="same dtype"):
            cvops.nms(boxes, scores, 0.5)
        with pytest.raises(exc, match="same dtype"):
            cvops.roi_align(torch.rand(1, 1, 4, 4), torch.zeros(1, 5, dtype=torch.float64), 2)


@pytest.mark.parametrize("op", [cvops.roi_align, cvops.roi_pool])
@pytest.mark.parametrize("exc", [ValueError, AssertionError])
def test_roi_boxes_shape_errors(op, exc):
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(exc, match=r"boxes must be a Tensor\[K, 5\]"):
        op(x, torch.tensor([[0.0, 0, 3, 3]]), output_size=(2, 2))
    with pytest.raises(exc, match=r"boxes\[0\] must be a Tensor\[L, 4\]"):
        op(x, [torch.tensor([[0.0, 0, 3]])], output_size=(2, 2))
    module = cvops.ops.RoIAlign(2, 1.0, 2) if op is cvops.roi_align else cvops.ops.RoIPool(2, 1.0)
    with pytest.raises(exc, match="boxes must be"):
        module(x, torch.zeros(2, 4))


def test_other_op_errors_are_runtime_errors():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        cvops.roi_align(x, torch.zeros(1, 5), 0)
    with pytest.raises(RuntimeError, match="valid batch index"):
        cvops.roi_pool(x, torch.tensor([[3.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(RuntimeError, match=r"input of shape \[N, C, H, W\]"):
        cvops.depthwise_conv2d(x[0], torch.rand(1, 1, 3, 3))
    with pytest.raises(RuntimeError, match="iou_threshold"):
        cvops.soft_nms(torch.rand(3, 4).sort(1).values, torch.rand(3), 1.5)
    with pytest.raises(RuntimeError, match="same shape"):
        cvops.sigmoid_focal_loss(torch.rand(3, 2), torch.rand(2, 3))


def test_box_convert_between_families_is_not_implemented():
    for exc in (ValueError, NotImplementedError):
        with pytest.raises(exc, match="axis-aligned and the rotated"):
            B.box_convert(torch.rand(2, 4), "xyxy", "cxcywhr")


def test_scripted_errors():
    # Under TorchScript an error of a compiled op reaches Python as RuntimeError (the C++ type
    # is lost, as for torchvision's ops), and a Python raise as torch.jit.Error, whatever its
    # class (torchvision's scripted `assert` gives the same).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nms = torch.jit.script(cvops.nms)
        roi_align = torch.jit.script(cvops.roi_align)
    with pytest.raises(RuntimeError, match=r"boxes of shape \[N, 4\]"):
        nms(torch.rand(3, 5), torch.rand(3), 0.5)
    with pytest.raises(torch.jit.Error, match=r"BoxesShapeError: boxes must be a Tensor\[K, 5\]"):
        roi_align(torch.rand(1, 1, 8, 8), torch.zeros(1, 4), 2)


def test_batched_nms_empty_boxes_like_torchvision():
    from torchvision.ops import batched_nms as tv_batched_nms

    empty = torch.empty((0,), dtype=torch.int64)
    for boxes in (empty, torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.float64)):
        got = cvops.batched_nms(boxes, None, None, None)
        torch.testing.assert_close(got, tv_batched_nms(boxes, None, None, None))
        assert got.dtype == torch.int64 and got.shape == (0,)
    # Non-empty boxes still get their arguments checked.
    with pytest.raises(TypeError, match="scores must be a Tensor"):
        cvops.batched_nms(torch.zeros(1, 4), None, None, None)
