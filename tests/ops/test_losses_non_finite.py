"""Non-finite logits where the loss must not look: ignored positions and masked classes.

F.cross_entropy skips an ignored pixel whatever its logits hold (NaN included) and stays
finite when a class is masked out with a -inf logit. The fused losses do the same on every
backend: a masked-out term is selected away, never multiplied by 0 (0 * inf = NaN).
"""

import pytest
import torch
import torch.nn.functional as F

import cvops
from tests.conftest import devices, requires_ops

pytestmark = requires_ops

IGNORE = 255


def _logits(device, n=2, c=4, h=5, w=6):
    return torch.randn(n, c, h, w, dtype=torch.float64, device=device)


def _grad(loss_fn, x):
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_minus_inf_non_target_logit_matches_cross_entropy(device, reduction):
    x = _logits(device)
    x[:, 2] = -float("inf")  # class 2 masked out; never a target
    t = torch.tensor([0, 1, 3], device=device)[torch.randint(0, 3, (2, 5, 6), device=device)]
    ours, g = _grad(lambda x: cvops.softmax_focal_loss(x, t, gamma=0, reduction=reduction), x)
    ref, g_ref = _grad(lambda x: F.cross_entropy(x, t, reduction=reduction), x)
    assert torch.isfinite(ours) and torch.isfinite(g).all()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("device", devices())
def test_minus_inf_non_target_logit_focal_equals_focal_without_that_class(device):
    # With a -inf logit the class has probability 0: the focal loss (gamma 2, per-class
    # alpha) equals the loss over the other classes, and so does its gradient.
    x = _logits(device)
    x[:, 2] = -float("inf")
    keep = torch.tensor([0, 1, 3], device=device)
    t_small = torch.randint(0, 3, (2, 5, 6), device=device)
    t = keep[t_small]
    alpha = torch.tensor([0.2, 0.3, 0.9, 0.4], dtype=torch.float64)
    ours, g = _grad(lambda x: cvops.softmax_focal_loss(x, t, alpha=alpha, gamma=2.0), x)
    ref, g_ref = _grad(
        lambda x: cvops.softmax_focal_loss(x[:, keep], t_small, alpha=alpha[[0, 1, 3]], gamma=2.0),
        x,
    )
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g, g_ref)
    assert torch.isfinite(g).all()


def _with_ignored_nan(device, binary=False):
    x = _logits(device)
    if binary:
        t = (torch.rand(x.shape, device=device) < 0.4).to(x.dtype)
        ignored = torch.rand(x.shape, device=device) < 0.2
        t[ignored] = IGNORE
        poisoned = x.clone()
        poisoned[ignored] = float("nan")
        poisoned[ignored & (torch.rand(x.shape, device=device) < 0.5)] = float("inf")
    else:
        t = torch.randint(0, 4, (2, 5, 6), device=device)
        ignored = torch.rand(t.shape, device=device) < 0.2
        t[ignored] = IGNORE
        poisoned = x.clone()
        poisoned.permute(0, 2, 3, 1)[ignored] = float("nan")
    return x, poisoned, t, ignored


@pytest.mark.parametrize("device", devices())
def test_nan_logits_at_ignored_pixels_match_cross_entropy(device):
    x, poisoned, t, ignored = _with_ignored_nan(device)
    ours, g = _grad(
        lambda x: cvops.softmax_focal_loss(x, t, gamma=0, ignore_index=IGNORE), poisoned
    )
    ref, g_ref = _grad(lambda x: F.cross_entropy(x, t, ignore_index=IGNORE), poisoned)
    assert torch.isfinite(ref)  # PyTorch's own loss stays finite here ...
    torch.testing.assert_close(ours, ref)
    g, g_ref = g.permute(0, 2, 3, 1), g_ref.permute(0, 2, 3, 1)
    torch.testing.assert_close(g[~ignored], g_ref[~ignored])
    # ... its gradient at the ignored NaN pixels is NaN (log_softmax's backward multiplies
    # exp(NaN) by 0); ours is 0 there, as for any ignored pixel.
    assert torch.equal(g[ignored], torch.zeros_like(g[ignored]))


LOSSES = {
    "dice multiclass": lambda x, t: cvops.dice_loss(x, t, "multiclass", ignore_index=IGNORE),
    "dice_focal multiclass": lambda x, t: cvops.dice_focal_loss(
        x, t, "multiclass", ignore_index=IGNORE
    ),
    "focal gamma 2": lambda x, t: cvops.softmax_focal_loss(x, t, gamma=2, ignore_index=IGNORE),
}
BINARY_LOSSES = {
    "dice multilabel": lambda x, t: cvops.dice_loss(x, t, "multilabel", ignore_index=IGNORE),
    "dice_focal multilabel": lambda x, t: cvops.dice_focal_loss(
        x, t, "multilabel", alpha=0.25, ignore_index=IGNORE
    ),
    "dice binary": lambda x, t: cvops.dice_loss(x[:, :1], t[:, :1], "binary", ignore_index=IGNORE),
}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", list(LOSSES) + list(BINARY_LOSSES))
def test_non_finite_logits_at_ignored_positions_change_nothing(device, name):
    # Ignored positions holding NaN or inf give the loss and gradient of the same input with
    # finite values there (the CPU used to return NaN).
    binary = name in BINARY_LOSSES
    fn = (BINARY_LOSSES if binary else LOSSES)[name]
    x, poisoned, t, ignored = _with_ignored_nan(device, binary=binary)
    clean, g_clean = _grad(lambda x: fn(x, t), x)
    ours, g = _grad(lambda x: fn(x, t), poisoned)
    assert torch.isfinite(ours) and torch.isfinite(g).all()
    torch.testing.assert_close(ours, clean)
    torch.testing.assert_close(g, g_clean)
