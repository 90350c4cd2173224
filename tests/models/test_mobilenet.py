"""MobileNet v1 (timm names) and v2 (torchvision names): equivalence at several widths and
resolutions, the cvops depthwise kernel is what runs (forward and backward), training-mode
equivalence (unfolded BN path), a training step."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torch.utils._python_dispatch import TorchDispatchMode

import cvops
import cvops.models as cm

from ._equiv import ATOL, build_on_meta, max_abs_diff, randomize_constants_, transplant

pytestmark = pytest.mark.skipif(
    not (hasattr(cvops.ops, "DepthwiseConv2d") and cvops.has_ops()),
    reason="cvops.ops.DepthwiseConv2d (the depthwise kernel) is not available in this build",
)

# BN scales large enough that some activations pass 6, so ReLU6 vs ReLU shows (checked:
# swapping in ReLU then moves the outputs by > 0.4 for v2 and > 1000 for v1). V1 has no
# residuals and 27 BN layers; its float32 rounding grows with the scale, hence a smaller one.
RELU6_RANGE = (1.0, 3.0)
RELU6_RANGE_V1 = (1.0, 2.0)


def timm_mobilenet_v1(alpha):
    timm = pytest.importorskip("timm")
    if alpha == 1.0:
        return timm.create_model("mobilenetv1_100", pretrained=False)
    from timm.models.efficientnet import _gen_mobilenet_v1

    return _gen_mobilenet_v1("mobilenetv1_100", alpha, pretrained=False)


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def count_depthwise_modules(model):
    dw = sum(isinstance(m, cvops.ops.DepthwiseConv2d) for m in model.modules())
    grouped = sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    return dw, grouped


@pytest.mark.parametrize("width_mult", [1.0, 0.5])
def test_v2_equivalent_to_torchvision(width_mult):
    ref = randomize_constants_(
        tvm.mobilenet_v2(weights=None, width_mult=width_mult), bn_scale=RELU6_RANGE
    )
    ours = transplant(ref, build_on_meta(cm.mobilenet_v2, width_mult=width_mult))
    x = torch.randn(1, 3, 224, 224)
    diff, *_ = max_abs_diff(ref, ours, x)
    assert diff <= ATOL


@pytest.mark.parametrize("alpha, size", [(1.0, 224), (0.75, 224), (0.5, 160), (0.25, 128)])
def test_v1_equivalent_to_timm(alpha, size):
    ref = randomize_constants_(timm_mobilenet_v1(alpha), bn_scale=RELU6_RANGE_V1)
    ours = transplant(ref, build_on_meta(cm.mobilenet_v1, alpha=alpha))
    x = torch.randn(1, 3, size, size)
    diff, *_ = max_abs_diff(ref, ours, x)
    assert diff <= ATOL


def test_training_mode_matches_torchvision():
    # Training mode runs the unfolded layers with batch statistics.
    ref = randomize_constants_(tvm.mobilenet_v2(weights=None, width_mult=0.5, dropout=0.0))
    ours = cm.mobilenet_v2(width_mult=0.5, dropout=0.0)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.train()
    ours.train()
    x = torch.randn(4, 3, 96, 96)
    torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=1e-4)
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # running stats updated alike


@pytest.mark.parametrize(
    "builder, kwargs, expected",
    [(cm.mobilenet_v1, {"alpha": 0.25}, 13), (cm.mobilenet_v2, {"width_mult": 0.35}, 17)],
)
def test_uses_the_cvops_depthwise_kernel(builder, kwargs, expected):
    model = builder(num_classes=4, **kwargs)
    assert count_depthwise_modules(model) == (expected, 0)
    x = torch.randn(2, 3, 64, 64)

    model.train()
    with OpRecorder() as rec:
        model(x).sum().backward()
    assert rec.ops.count("cvops.depthwise_conv2d") == expected
    # each layer's gradients: both from the fused op, or one from each backward op
    both = rec.ops.count("cvops._depthwise_conv2d_backward")
    assert both + rec.ops.count("cvops._depthwise_conv2d_backward_input") == expected
    assert both + rec.ops.count("cvops._depthwise_conv2d_backward_weight") == expected
    assert "aten.convolution" in rec.ops  # the dense convs stay on PyTorch's

    model.eval()
    with torch.no_grad(), OpRecorder() as rec:
        model(x)
    assert rec.ops.count("cvops.depthwise_conv2d") == expected
    assert "aten.native_batch_norm" not in rec.ops  # BN folded into the convs


@pytest.mark.parametrize(
    "builder, kwargs", [(cm.mobilenet_v1, {"alpha": 0.5}), (cm.mobilenet_v2, {})]
)
def test_training_step(builder, kwargs):
    model = builder(num_classes=3, **kwargs).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    dw = next(m for m in model.modules() if isinstance(m, cvops.ops.DepthwiseConv2d))
    before = dw.weight.detach().clone()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and dw.weight.grad is not None
    opt.step()
    assert not torch.equal(before, dw.weight)


def test_width_validation():
    with pytest.raises(ValueError, match="alpha"):
        cm.mobilenet_v1(alpha=0)
    with pytest.raises(TypeError, match="width_mult"):
        cm.mobilenet_v2(width_mult="1")
