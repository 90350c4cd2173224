"""Winograd F(2x2, 3x3) (models/_winograd.py and its transform ops) against float64
convolutions, its argument checks, and where models/_fused_layers.py runs it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvops.models import _fused_layers, _winograd

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)"
)


def _winograd_conv(conv, x, residual=None, relu=False):
    weights = _winograd.packed_weights(conv.weight)
    return _winograd.conv3x3(
        x.contiguous(memory_format=torch.channels_last), weights, conv.bias, residual, relu
    )


def _errors(conv, x, out, residual=None, relu=False):
    """Max error of ``out`` and of PyTorch's float32 convolution against float64."""
    exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    plain = F.conv2d(x, conv.weight, conv.bias, padding=1)
    if residual is not None:
        exact, plain = exact + residual.double(), plain + residual
    if relu:
        exact, plain = F.relu(exact), F.relu(plain)
    return (out.double() - exact).abs().max().item(), (plain.double() - exact).abs().max().item()


@pytest.mark.parametrize(
    "shape",
    [(1, 64, 8, 8), (2, 96, 7, 9), (1, 128, 1, 1), (3, 64, 2, 5), (1, 80, 13, 16), (1, 64, 33, 3)],
)
@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, True), (True, False)])
def test_matches_float64_convolution(shape, relu, with_residual):
    torch.manual_seed(0)
    n, c, h, w = shape
    conv = nn.Conv2d(c, c + 16, 3, padding=1)
    x = torch.randn(shape)
    residual = torch.randn(n, c + 16, h, w) if with_residual else None
    with torch.no_grad():
        out = _winograd_conv(conv, x, residual, relu)
    assert out.shape == (n, c + 16, h, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    ours, plain = _errors(conv, x, out, residual, relu)
    # float32 rounding only: within 4x PyTorch's own float32 error (measured: below it)
    assert ours <= 4 * plain + 1e-7, (ours, plain)


def test_weight_transform_is_g_g_gt():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    g = torch.tensor(_winograd._G, dtype=torch.float64)
    u = _winograd.transform_weight(w)
    for k in range(5):
        for c in range(3):
            expected = g @ w[k, c] @ g.T
            assert torch.allclose(u[:, k, c].reshape(4, 4), expected)


def test_nan_and_inf_propagate():
    conv = nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(1, 64, 6, 6)
    x[0, 3, 2, 2] = float("nan")
    with torch.no_grad():
        out = _winograd_conv(conv, x, relu=True)
        ref = F.relu(conv(x))
    # ReLU keeps NaN (as F.relu does); the NaN reaches the same outputs' neighbourhood
    assert out.isnan().any() and ref.isnan().any()
    assert not out[..., 5:, :].isnan().any() and not ref[..., 5:, :].isnan().any()


def test_empty_inputs():
    conv = nn.Conv2d(64, 64, 3, padding=1)
    with torch.no_grad():
        assert _winograd_conv(conv, torch.randn(0, 64, 5, 5)).shape == (0, 64, 5, 5)
        assert _winograd_conv(conv, torch.randn(2, 64, 0, 5)).shape == (2, 64, 0, 5)


def test_transform_ops_check_their_arguments():
    ops = torch.ops.cvops
    with pytest.raises(ValueError, match="input must be 4-D"):
        ops._winograd_f2x3_input(torch.randn(64, 4, 4), 0, 4)
    with pytest.raises(ValueError, match="float32"):
        ops._winograd_f2x3_input(torch.randn(1, 64, 4, 4, dtype=torch.float64), 0, 4)
    with pytest.raises(ValueError, match=r"tiles \[tile_begin, tile_begin \+ tile_count\)"):
        ops._winograd_f2x3_input(torch.randn(1, 64, 4, 4), 1, 4)
    out = torch.empty(1, 8, 4, 4, memory_format=torch.channels_last)
    m = [torch.randn(4, 8) for _ in range(16)]
    with pytest.raises(ValueError, match="channels-last"):
        ops._winograd_f2x3_output_(torch.empty(1, 8, 4, 4), m, 0, None, None, False)
    with pytest.raises(ValueError, match="16 tensors"):
        ops._winograd_f2x3_output_(out, m[:15], 0, None, None, False)
    with pytest.raises(ValueError, match=r"m\[0\] must be \[tiles, 8\]"):
        ops._winograd_f2x3_output_(out, [torch.randn(4, 9)] * 16, 0, None, None, False)
    with pytest.raises(ValueError, match="must lie in"):
        ops._winograd_f2x3_output_(out, m, 1, None, None, False)
    with pytest.raises(ValueError, match="every tensor of m"):
        ops._winograd_f2x3_output_(out, m[:15] + [torch.randn(3, 8)], 0, None, None, False)
    with pytest.raises(ValueError, match="bias must be float32 with 8"):
        ops._winograd_f2x3_output_(out, m, 0, torch.randn(7), None, False)
    with pytest.raises(ValueError, match="residual must be"):
        ops._winograd_f2x3_output_(out, m, 0, None, torch.randn(1, 8, 4, 5), False)


def test_chunks_cover_every_tile(monkeypatch):
    # chunks of one tile up to all tiles give the same result
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(2, 64, 5, 7)
    with torch.no_grad():
        whole = _winograd_conv(conv, x)
        for chunk_tiles in (1, 5, 23):
            monkeypatch.setattr(_winograd, "CHUNK_BYTES", chunk_tiles * 16 * 4 * 64)
            torch.testing.assert_close(_winograd_conv(conv, x), whole, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), True),
        (dict(in_channels=32, out_channels=64, kernel_size=3, padding=1), False),
        (dict(in_channels=64, out_channels=63, kernel_size=3, padding=1), False),
        (dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, stride=2), False),
        (dict(in_channels=64, out_channels=64, kernel_size=3, padding=2, dilation=2), False),
        (dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, groups=2), False),
        (dict(in_channels=64, out_channels=64, kernel_size=1), False),
        (dict(in_channels=64, out_channels=64, kernel_size=3, padding=0), False),
    ],
)
def test_applies(kwargs, expected):
    assert _winograd.applies(nn.Conv2d(**kwargs)) == expected


def test_conv_block_runs_it_at_inference_only(monkeypatch):
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    bn = nn.BatchNorm2d(64).eval()
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 64, 10, 10)
    residual = torch.randn(2, 64, 10, 10)
    calls = []
    original = _winograd.conv3x3
    monkeypatch.setattr(_winograd, "conv3x3", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        out = _fused_layers.conv_block(conv, x, bn, relu=True, residual=residual)
    assert calls == [1]
    ref = F.relu(bn(conv(x)) + residual)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # autograd on: the reference ops
    out = _fused_layers.conv_block(conv, x, bn, relu=True, residual=residual)
    assert calls == [1] and out.requires_grad
    # the same module made strided in place repacks for the direct path, and back
    with torch.no_grad():
        assert _fused_layers._PACKED[conv][0][-1] == "winograd"
        conv.stride = (2, 2)
        out = _fused_layers.conv_block(conv, x, bn)
        assert _fused_layers._PACKED[conv][0][-1] == "conv"
        torch.testing.assert_close(out, bn(conv(x)), atol=1e-5, rtol=1e-5)
        conv.stride = (1, 1)
        out = _fused_layers.conv_block(conv, x, bn)
        assert _fused_layers._PACKED[conv][0][-1] == "winograd"
        torch.testing.assert_close(out, bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_cache_follows_weight_updates():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        first = _fused_layers.conv_block(conv, x)
        conv.weight.mul_(2)
        second = _fused_layers.conv_block(conv, x)
        torch.testing.assert_close(second, conv(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, second)
