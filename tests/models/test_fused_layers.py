"""models/_fused_layers.py: the oneDNN inference path of conv_block (folded BN, packed weight,
fused add and ReLU, channels-last) against the reference ops, when it runs and when it must
not, and the packed-weight cache's invalidation."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cvops.models as cm
from cvops.models import _fused_layers as fc
from cvops.models._conv_bn import FrozenBatchNorm2d

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="needs a PyTorch build with oneDNN"
)


def _bn(c, frozen):
    bn = FrozenBatchNorm2d(c) if frozen else nn.BatchNorm2d(c).eval()
    g = torch.Generator().manual_seed(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


def _reference(conv, x, bn, relu, residual):
    out = conv(x)
    if bn is not None:
        out = bn(out)
    if residual is not None:
        out = out + residual
    return F.relu(out) if relu else out


class _Counter:
    """Counts the calls of the oneDNN path."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = fc._onednn_conv_block

        def counted(*args):
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(fc, "_onednn_conv_block", counted)


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("stride,groups,dilation", [(1, 1, 1), (2, 1, 1), (1, 4, 2)])
def test_onednn_path_matches_the_reference_ops(
    monkeypatch, frozen, relu, with_residual, stride, groups, dilation
):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride, padding=dilation, dilation=dilation, groups=groups)
    bn = _bn(16, frozen)
    x = torch.randn(2, 8, 19, 23)
    out_hw = ((19 - 1) // stride + 1, (23 - 1) // stride + 1)
    residual = torch.randn(2, 16, *out_hw) if with_residual else None
    counter = _Counter(monkeypatch)
    with torch.no_grad():
        expected = _reference(conv, x, bn, relu, residual)
        actual = fc.conv_block(conv, x, bn, relu=relu, residual=residual)
        again = fc.conv_block(conv, x, bn, relu=relu, residual=residual)  # cached weight
    assert counter.calls == 2
    assert actual.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(actual, again)


def test_reference_ops_run_when_the_onednn_path_must_not(monkeypatch):
    conv, bn = nn.Conv2d(4, 4, 3, padding=1), _bn(4, frozen=True)
    x = torch.randn(1, 4, 8, 8)
    counter = _Counter(monkeypatch)
    fc.conv_block(conv, x, bn, relu=True)  # autograd on
    with torch.no_grad():
        fc.conv_block(copy.deepcopy(conv).double(), x.double(), copy.deepcopy(bn).double())
        fc.conv_block(conv, x, nn.BatchNorm2d(4).train(), relu=True)  # batch statistics
        fc.conv_block(nn.Conv2d(4, 4, 3, padding="same"), x)  # string padding
        fc.conv_block(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), x)
        monkeypatch.setattr(fc, "ONEDNN", False)
        fc.conv_block(conv, x, bn)
    assert counter.calls == 0


def test_gradients_flow_through_the_reference_path():
    conv, bn = nn.Conv2d(4, 4, 3, padding=1), _bn(4, frozen=True)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    fc.conv_block(conv, x, bn, relu=True, residual=torch.randn(1, 4, 8, 8)).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_the_packed_weight_follows_parameter_and_buffer_changes():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1), _bn(6, frozen=True)
    x = torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        before = fc.conv_block(conv, x, bn)
        conv.weight.mul_(2)  # in place: a new version
        torch.testing.assert_close(fc.conv_block(conv, x, bn), _reference(conv, x, bn, False, None))
        bn.running_var.add_(1.0)
        torch.testing.assert_close(fc.conv_block(conv, x, bn), _reference(conv, x, bn, False, None))
        conv.load_state_dict({"weight": torch.randn(6, 4, 3, 3), "bias": torch.zeros(6)})
        torch.testing.assert_close(fc.conv_block(conv, x, bn), _reference(conv, x, bn, False, None))
        bn.eps = 0.5
        torch.testing.assert_close(fc.conv_block(conv, x, bn), _reference(conv, x, bn, False, None))
    assert not torch.equal(before, fc.conv_block(conv, x, bn))


def test_models_copy_and_pickle_after_inference():
    model = cm.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        out = model(x)
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    assert not any("packed" in k for k in model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(clone(x), out)
        torch.testing.assert_close(restored(x), out)


def test_resnet_and_detector_run_the_onednn_path_at_inference(monkeypatch):
    counter = _Counter(monkeypatch)
    model = cm.fasterrcnn_resnet50_fpn(
        num_classes=3, min_size=64, max_size=64, norm_layer=FrozenBatchNorm2d
    ).eval()
    with torch.inference_mode():
        model([torch.rand(3, 64, 64)])
    # the stem, 16 blocks (3 convs each, 4 downsamples), the FPN's 8 convs, the RPN's 3 per
    # level (5 levels)
    assert counter.calls == 1 + 16 * 3 + 4 + 8 + 3 * 5


@pytest.mark.parametrize("relu", [True, False])
def test_linear_block_matches_the_reference_and_follows_weight_changes(relu):
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(10, 64)

    def reference():
        out = F.linear(x, linear.weight, linear.bias)
        return F.relu(out) if relu else out

    with torch.no_grad():
        torch.testing.assert_close(fc.linear_block(linear, x, relu), reference())
        linear.weight.mul_(-1)
        torch.testing.assert_close(fc.linear_block(linear, x, relu), reference())
        # another number of rows than the packed weight was first used with
        x = torch.randn(3, 64)
        torch.testing.assert_close(fc.linear_block(linear, x, relu), reference())
    out = fc.linear_block(linear, x, relu)  # autograd on: the reference path
    assert out.requires_grad
