"""Bad input to depthwise conv2d raises ValueError/TypeError naming the argument."""

import pytest
import torch

import cvops
from tests.conftest import requires_ops

pytestmark = requires_ops


def _args(**over):
    args = dict(
        input=torch.randn(2, 4, 8, 8),
        weight=torch.randn(4, 1, 3, 3),
        bias=None,
        stride=1,
        padding=1,
        dilation=1,
    )
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,exc,match",
    [
        (dict(input=torch.randn(4, 8, 8)), ValueError, "input of shape"),
        (dict(weight=torch.randn(4, 3, 3)), ValueError, "weight of shape"),
        (dict(weight=torch.randn(4, 2, 3, 3)), ValueError, "weight of shape"),
        (dict(weight=torch.randn(6, 1, 3, 3)), ValueError, "multiple of the input channels"),
        (dict(weight=torch.randn(4, 1, 11, 3)), ValueError, "larger than the padded input"),
        (dict(dilation=5, padding=0), ValueError, "larger than the padded input"),
        (dict(stride=0), ValueError, "stride must be positive"),
        (dict(stride=(1, -1)), ValueError, "stride must be positive"),
        (dict(dilation=0), ValueError, "dilation must be positive"),
        (dict(padding=-1), ValueError, "padding must be non-negative"),
        (dict(stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
        (dict(stride=1.5), TypeError, "stride must be an int or a pair"),
        (dict(padding=True), TypeError, "padding must be an int or a pair"),  # not an int
        (dict(weight=torch.randn(4, 1, 3, 3).double()), TypeError, "same dtype"),
        (dict(bias=torch.randn(4).double()), TypeError, "same dtype"),
        (dict(bias=torch.randn(5)), ValueError, "bias of shape"),
        (dict(bias=[1.0]), TypeError, "bias must be a Tensor"),
        (
            dict(
                input=torch.ones(2, 4, 8, 8, dtype=torch.long),
                weight=torch.ones(4, 1, 3, 3, dtype=torch.long),
            ),
            TypeError,
            "floating-point",
        ),
        (
            dict(input=torch.randn(2, 0, 8, 8), weight=torch.randn(0, 1, 3, 3)),
            ValueError,
            "at least one channel",
        ),
        (dict(input=[1.0]), TypeError, "input must be a Tensor"),
        (dict(weight=None), TypeError, "weight must be a Tensor"),
    ],
)
def test_bad_arguments(over, exc, match):
    with pytest.raises(exc, match=match):
        cvops.depthwise_conv2d(**_args(**over))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_mismatch():
    with pytest.raises(RuntimeError, match="same device"):
        cvops.depthwise_conv2d(**_args(weight=torch.randn(4, 1, 3, 3, device="cuda")))


def test_backward_ops_check_their_arguments():
    ops = torch.ops.cvops
    g = torch.randn(2, 4, 8, 8)
    w = torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="expected grad of shape"):
        ops._depthwise_conv2d_backward_input(g, w, 2, 4, 9, 8, [1, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="stride must be positive"):
        ops._depthwise_conv2d_backward_input(g, w, 2, 4, 8, 8, [0, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="expected grad of shape"):
        ops._depthwise_conv2d_backward_weight(
            g, torch.randn(2, 4, 9, 9), 3, 3, [1, 1], [1, 1], [1, 1]
        )
    with pytest.raises(TypeError, match="same dtype"):
        ops._depthwise_conv2d_backward_weight(
            g.double(), torch.randn(2, 4, 8, 8), 3, 3, [1, 1], [1, 1], [1, 1]
        )
