import pytest
import torch
import torch.nn.functional as F

import cvops
from cvops.train.seg_losses import LOSSES, build_loss
from tests.conftest import requires_ops


def _case(binary):
    g = torch.Generator().manual_seed(0)
    c = 1 if binary else 4
    logits = torch.randn(2, c, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 2 if binary else 4, (2, 8, 8), generator=g)
    target[:, :3] = 255
    target[1, 3:, :2] = 255
    return logits, target


def _needs_ops(name):
    return [] if name == "ce" else [requires_ops]


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=_needs_ops(n)) for n in LOSSES])
def test_ignored_pixels_get_zero_gradient(name, binary):
    loss_fn = build_loss(name, binary=binary, ignore_index=255)
    logits, target = _case(binary)
    loss = loss_fn(logits, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0
    assert logits.grad[~ignored].abs().max() > 0
    # The value does not depend on the ignored logits either.
    with torch.no_grad():
        changed = torch.where(ignored, torch.full_like(logits, 50.0), logits)
        assert float(loss_fn(changed, target)) == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=_needs_ops(n)) for n in LOSSES])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_at_ignored_pixels_change_nothing(name, binary, bad):
    # As F.cross_entropy: an ignored pixel is skipped whatever its logits hold.
    loss_fn = build_loss(name, binary=binary, ignore_index=255)
    logits, target = _case(binary)
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    clean = loss_fn(logits, target)
    poisoned = torch.where(ignored, torch.full_like(logits, bad), logits.detach())
    poisoned.requires_grad_()
    loss = loss_fn(poisoned, target)
    loss.backward()
    assert float(loss) == pytest.approx(float(clean), rel=1e-5)
    if name == "ce" and not binary:
        # F.cross_entropy itself: a finite loss, but log_softmax's backward gives the
        # ignored non-finite pixels NaN (exp(NaN) * 0); the other pixels are unaffected.
        torch.testing.assert_close(poisoned.grad[~ignored], _clean_grad(loss_fn, logits, target))
        return
    assert torch.isfinite(poisoned.grad).all() and poisoned.grad[ignored].abs().max() == 0


def _clean_grad(loss_fn, logits, target):
    x = logits.detach().clone().requires_grad_()
    loss_fn(x, target).backward()
    return x.grad[~(target == 255).unsqueeze(1).expand_as(x)]


@requires_ops
def test_values_match_the_functions():
    logits, target = _case(False)
    x = logits.detach()
    keep = target != 255
    ce = F.cross_entropy(x.permute(0, 2, 3, 1)[keep], target[keep])
    assert float(build_loss("ce")(x, target)) == pytest.approx(float(ce), rel=1e-6)
    ref = cvops.softmax_focal_loss(x, target, ignore_index=255)
    assert float(build_loss("focal")(x, target)) == pytest.approx(float(ref), rel=1e-6)
    ref = cvops.dice_loss(x, target, "multiclass", ignore_index=255)
    assert float(build_loss("dice")(x, target)) == pytest.approx(float(ref), rel=1e-6)
    ref = cvops.dice_focal_loss(x, target, "multiclass", ignore_index=255)
    assert float(build_loss("dice_focal")(x, target)) == pytest.approx(float(ref), rel=1e-6)


def test_binary_ce_is_bce_over_valid_pixels():
    logits, target = _case(True)
    x = logits.detach()
    keep = target != 255
    ref = F.binary_cross_entropy_with_logits(x[:, 0][keep], target[keep].float())
    assert float(build_loss("ce", binary=True)(x, target)) == pytest.approx(float(ref), rel=1e-6)


def test_bfloat16_logits_are_scored_in_float32():
    logits, target = _case(False)
    loss = build_loss("ce")(logits.detach().bfloat16(), target)
    assert loss.dtype == torch.float32


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("lovasz")
