"""Property tests: random shapes, modes and parameters of the fused losses against the
pure-PyTorch references (float64, values and gradients)."""

import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import cvops
from cvops.ops import _reference as ref
from tests.conftest import requires_ops

pytestmark = requires_ops

TOL = dict(rtol=1e-9, atol=1e-11)


def _value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), g


shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 9), st.integers(1, 13))


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    mode=st.sampled_from(["binary", "multilabel", "multiclass"]),
    ignore=st.sampled_from([None, 255, 0]),
    smooth=st.sampled_from([0.0, 1.0]),
    per_image=st.booleans(),
    log_loss=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dice_property(shape, mode, ignore, smooth, per_image, log_loss, seed):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    if mode == "binary":
        c = 1
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 3
    if mode == "multiclass":
        t = torch.randint(0, c, (n, h, w), generator=g)
    else:
        t = (torch.rand(n, c, h, w, generator=g) < 0.4).long()
    if ignore is not None:
        t = torch.where(torch.rand(t.shape, generator=g) < 0.2, torch.full_like(t, ignore), t)
    kw = dict(smooth=smooth, ignore_index=ignore, log_loss=log_loss, per_image=per_image)
    ours, g_ours = _value_and_grad(lambda x: cvops.dice_loss(x, t, mode, **kw), x)
    theirs, g_theirs = _value_and_grad(lambda x: ref.dice_loss_reference(x, t, mode, **kw), x)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(g_ours, g_theirs, **TOL)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    gamma=st.sampled_from([0.0, 1.0, 2.0, 2.5]),
    alpha=st.sampled_from([None, 0.25, "tensor"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_softmax_focal_property(shape, gamma, alpha, reduction, seed):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 4
    t = torch.randint(0, c, (n, h, w), generator=g)
    t = torch.where(torch.rand(t.shape, generator=g) < 0.1, torch.full_like(t, -100), t)
    t.view(-1)[0] = 0  # at least one valid pixel
    if alpha == "tensor":
        alpha = torch.rand(c, generator=g, dtype=torch.float64)
    ours, g_ours = _value_and_grad(
        lambda x: cvops.softmax_focal_loss(x, t, alpha, gamma, -100, reduction), x
    )
    theirs, g_theirs = _value_and_grad(
        lambda x: ref.softmax_focal_loss_reference(x, t, alpha, gamma, -100, reduction), x
    )
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(g_ours, g_theirs, **TOL)


@settings(max_examples=40, deadline=None)
@given(
    numel=st.integers(0, 9000),
    gamma=st.sampled_from([0.0, 1.0, 2.0, 3.0]),
    alpha=st.sampled_from([-1.0, 0.25, 0.9]),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_sigmoid_focal_property(numel, gamma, alpha, reduction, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=g, dtype=torch.float64) * 5
    t = (torch.rand(numel, generator=g) < 0.3).double()
    ours, g_ours = _value_and_grad(
        lambda x: cvops.sigmoid_focal_loss(x, t.to(dtype), alpha, gamma, reduction), x.to(dtype)
    )
    theirs, g_theirs = _value_and_grad(
        lambda x: torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma, reduction), x
    )
    tol = TOL if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    if reduction == "mean" and numel == 0:
        assert torch.isnan(ours)
        return
    torch.testing.assert_close(ours.double(), theirs, **tol)
    torch.testing.assert_close(g_ours.double(), g_theirs, **tol)
