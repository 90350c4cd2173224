"""Fused focal / Dice losses against torchvision, segmentation_models_pytorch and the
pure-PyTorch references: values, gradients, dtypes, edge cases, bad input."""

import importlib.util
import sys

import pytest
import torch
import torchvision

import cvops
from cvops.ops import _reference as ref
from tests.conftest import devices, requires_ops, run_python

pytestmark = requires_ops

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float16: dict(rtol=1e-2, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
}


def _smp_losses():
    """segmentation_models_pytorch.losses; loaded on its own when the package's __init__
    cannot import (it pulls timm and huggingface_hub, which the losses do not need)."""
    try:
        import segmentation_models_pytorch.losses as losses

        return losses
    except Exception:
        pass
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("segmentation_models_pytorch is not installed")
    base = list(spec.submodule_search_locations)[0] + "/losses"
    name = "_cvops_test_smp_losses"
    if name not in sys.modules:
        sub = importlib.util.spec_from_file_location(
            name, base + "/__init__.py", submodule_search_locations=[base]
        )
        mod = importlib.util.module_from_spec(sub)
        sys.modules[name] = mod
        sub.loader.exec_module(mod)
    return sys.modules[name]


def _grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * w.to(out.device, out.dtype)).sum().backward()
    return out.detach(), x.grad


# ---------------------------------------------------------------------------------------
# sigmoid focal loss vs torchvision
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gamma", [0, 1, 2, 5, 1.5])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_matches_torchvision(device, gamma, alpha, reduction):
    x = (torch.randn(37, 19, dtype=torch.float64) * 4).to(device)
    t = (torch.rand(37, 19, dtype=torch.float64) < 0.2).double().to(device)
    ours, g_ours = _grad(cvops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    theirs, g_theirs = _grad(torchvision.ops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    torch.testing.assert_close(ours, theirs, **TOL[torch.float64])
    torch.testing.assert_close(g_ours, g_theirs, **TOL[torch.float64])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sigmoid_focal_dtypes(device, dtype):
    x = (torch.randn(1000, 13) * 3).to(device)
    t = (torch.rand(1000, 13) < 0.3).float().to(device)
    ours, g_ours = _grad(cvops.sigmoid_focal_loss, x.to(dtype), t.to(dtype))
    assert ours.dtype == dtype and g_ours.dtype == dtype
    theirs, g_theirs = _grad(torchvision.ops.sigmoid_focal_loss, x.double(), t.double())
    torch.testing.assert_close(ours.double(), theirs, **TOL[dtype])
    torch.testing.assert_close(g_ours.double(), g_theirs, **TOL[dtype])
    # Reductions accumulate in float32 (float64 for the cross-chunk sums).
    total = cvops.sigmoid_focal_loss(x.to(dtype), t.to(dtype), reduction="sum")
    torch.testing.assert_close(total.double(), theirs.sum(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("gamma", [0, 1, 2, 5])
def test_sigmoid_focal_extreme_logits(device, gamma):
    x = torch.tensor([-100.0, 100.0, -100.0, 100.0, -30.0, 30.0, 0.0, 88.8, -88.8]).to(device)
    t = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]).to(device)
    ours, g_ours = _grad(cvops.sigmoid_focal_loss, x, t, 0.25, gamma)
    assert torch.isfinite(ours).all() and torch.isfinite(g_ours).all()
    theirs, g_theirs = _grad(
        torchvision.ops.sigmoid_focal_loss, x.double(), t.double(), 0.25, gamma
    )
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours.double(), g_theirs, rtol=1e-5, atol=1e-6)


def _sigmoid_focal_float64(x, t, alpha, gamma):
    # torchvision's formula without its two cancellations, which in the tails make even
    # float64 less accurate than the float32 kernels under test: PyTorch's float64
    # binary_cross_entropy_with_logits takes log(1 + e) (~1e-2 off once e < 1e-13), and
    # 1 - p_t loses everything once p < 1e-16. Here 1 - p_t = p (1 - t) + sigmoid(-x) t.
    ce = x.clamp_min(0) - x * t + torch.log1p(torch.exp(-x.abs()))
    m = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
    return (alpha * t + (1 - alpha) * (1 - t)) * ce * m**gamma


@pytest.mark.parametrize("gamma", [2, 1.5])
def test_sigmoid_focal_fast_math_accuracy_dense_sweep(gamma):
    # The CPU kernels' exp / reciprocal / log1p are polynomial and Newton-step forms: sweep
    # the whole logit range densely (both signs, underflowing tails, the 0.414 switch of
    # log1p) against an accurate float64 formula, to a few float32 ulp.
    x = torch.cat([torch.linspace(-100, 100, 200001), torch.linspace(-1.5, 1.5, 30001)])
    for t in (torch.zeros_like(x), torch.ones_like(x), torch.full_like(x, 0.3)):
        ours, g_ours = _grad(cvops.sigmoid_focal_loss, x, t, 0.25, gamma)
        theirs, g_theirs = _grad(_sigmoid_focal_float64, x.double(), t.double(), 0.25, gamma)
        # atol: below float32's normal range relative error means nothing; gradients are
        # O(1) and cross zero for soft targets.
        torch.testing.assert_close(ours.double(), theirs, rtol=4e-6, atol=1e-37)
        torch.testing.assert_close(g_ours.double(), g_theirs, rtol=4e-6, atol=1e-8)


def test_sigmoid_focal_soft_and_bool_targets():
    x = torch.randn(64, 7, dtype=torch.float64)
    soft = torch.rand(64, 7, dtype=torch.float64)
    torch.testing.assert_close(
        cvops.sigmoid_focal_loss(x, soft, 0.4, 1.5, "none"),
        torchvision.ops.sigmoid_focal_loss(x, soft, 0.4, 1.5, "none"),
    )
    hard = soft > 0.5
    torch.testing.assert_close(
        cvops.sigmoid_focal_loss(x, hard, reduction="sum"),
        torchvision.ops.sigmoid_focal_loss(x, hard.double(), reduction="sum"),
    )


def test_sigmoid_focal_empty():
    x = torch.zeros(0, 80, requires_grad=True)
    t = torch.zeros(0, 80)
    assert cvops.sigmoid_focal_loss(x, t).shape == (0, 80)
    s = cvops.sigmoid_focal_loss(x, t, reduction="sum")
    assert s.item() == 0
    s.backward()
    assert x.grad.shape == (0, 80)
    assert torch.isnan(cvops.sigmoid_focal_loss(x, t, reduction="mean"))


def test_sigmoid_focal_noncontiguous():
    x = torch.randn(40, 30, dtype=torch.float64)[:, ::3]
    t = (torch.rand(40, 30) < 0.3).double()[:, ::3]
    torch.testing.assert_close(
        cvops.sigmoid_focal_loss(x, t), torchvision.ops.sigmoid_focal_loss(x, t)
    )


# ---------------------------------------------------------------------------------------
# softmax focal loss vs the composed reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("alpha", [None, 0.5, "tensor"])
@pytest.mark.parametrize("gamma", [0, 2, 1.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_focal_matches_reference(device, alpha, gamma, reduction):
    x = (torch.randn(3, 6, 9, 11, dtype=torch.float64) * 3).to(device)
    t = torch.randint(0, 6, (3, 9, 11)).to(device)
    t[0, :2] = -100
    if alpha == "tensor":
        alpha = torch.rand(6, dtype=torch.float64).to(device)
    ours, g_ours = _grad(cvops.softmax_focal_loss, x, t, alpha, gamma, -100, reduction)
    theirs, g_theirs = _grad(ref.softmax_focal_loss_reference, x, t, alpha, gamma, -100, reduction)
    torch.testing.assert_close(ours, theirs, **TOL[torch.float64])
    torch.testing.assert_close(g_ours, g_theirs, **TOL[torch.float64])


def test_softmax_focal_2d_logits_and_ignore_inside_range():
    x = torch.randn(50, 4, dtype=torch.float64)
    t = torch.randint(0, 4, (50,))
    for ignore in (0, -100):
        torch.testing.assert_close(
            cvops.softmax_focal_loss(x, t, 0.25, 2, ignore),
            ref.softmax_focal_loss_reference(x, t, 0.25, 2, ignore),
        )


# ---------------------------------------------------------------------------------------
# Dice vs segmentation_models_pytorch
# ---------------------------------------------------------------------------------------


def _dice_inputs(mode, device, dtype=torch.float64, ignore=None, from_logits=True):
    c = 1 if mode == "binary" else 4
    x = torch.randn(3, c, 7, 9, dtype=dtype)
    if not from_logits:
        x = x.softmax(1) if mode == "multiclass" else x.sigmoid()
    if mode == "multiclass":
        t = torch.randint(0, c, (3, 7, 9))
        t[:, :, 0] = 2  # class 3 may be absent, class 2 present
        if ignore is not None:
            t[0, 0, :4] = ignore
    else:
        t = (torch.rand(3, c, 7, 9) < 0.3).long()
        if ignore is not None:
            t[0, 0, 0, :4] = ignore
    return x.to(device), t.to(device)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("log_loss", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
def test_dice_matches_smp(device, mode, ignore, log_loss, from_logits):
    smp = _smp_losses()
    x, t = _dice_inputs(mode, device, ignore=ignore, from_logits=from_logits)
    kw = dict(log_loss=log_loss, from_logits=from_logits, smooth=0.5, ignore_index=ignore)
    theirs, g_theirs = _grad(smp.DiceLoss(mode, **kw), x, t)
    ours, g_ours = _grad(cvops.dice_loss, x, t, mode, **kw)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_dice_matches_smp_float32_default_args(mode):
    smp = _smp_losses()
    x, t = _dice_inputs(mode, "cpu", dtype=torch.float32)
    theirs, g_theirs = _grad(smp.DiceLoss(mode), x, t)
    ours, g_ours = _grad(cvops.dice_loss, x, t, mode)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dice_per_image_matches_reference(device, mode, reduction):
    x, t = _dice_inputs(mode, device, ignore=255)
    kw = dict(ignore_index=255, per_image=True, reduction=reduction, smooth=1.0)
    ours, g_ours = _grad(cvops.dice_loss, x, t, mode, **kw)
    theirs, g_theirs = _grad(ref.dice_loss_reference, x, t, mode, **kw)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, **TOL[torch.float64])
    torch.testing.assert_close(g_ours, g_theirs, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_dice_reduced_precision(dtype, mode):
    x, t = _dice_inputs(mode, "cpu", dtype=torch.float64)
    theirs, g_theirs = _grad(ref.dice_loss_reference, x, t, mode)
    ours, g_ours = _grad(cvops.dice_loss, x.to(dtype), t, mode)
    assert ours.dtype == dtype and g_ours.dtype == dtype
    torch.testing.assert_close(ours.double(), theirs, **TOL[dtype])
    torch.testing.assert_close(g_ours.double(), g_theirs, **TOL[dtype])


# ---------------------------------------------------------------------------------------
# Dice + focal in one pass
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_dice_focal_is_the_sum_of_both(device, mode, gamma):
    x, t = _dice_inputs(mode, device)
    alpha = 0.3
    kw = dict(smooth=0.1, per_image=True)

    def separate(x):
        dice = ref.dice_loss_reference(x, t, mode, **kw)
        if mode == "multiclass":
            focal = ref.softmax_focal_loss_reference(x, t, alpha, gamma)
        else:
            focal = torchvision.ops.sigmoid_focal_loss(x, t.to(x.dtype), alpha, gamma, "mean")
        return 0.7 * dice + 1.3 * focal

    ours, g_ours = _grad(
        cvops.dice_focal_loss, x, t, mode, 0.7, 1.3, alpha=alpha, gamma=gamma, **kw
    )
    theirs, g_theirs = _grad(separate, x)
    torch.testing.assert_close(ours, theirs, **TOL[torch.float64])
    torch.testing.assert_close(g_ours, g_theirs, **TOL[torch.float64])


def test_dice_focal_with_ignore_matches_smp_focal_binary():
    smp = _smp_losses()
    x, t = _dice_inputs("binary", "cpu", ignore=255)
    # smp's FocalLoss (binary, ignore_index) is the mean over non-ignored elements.
    focal = smp.FocalLoss("binary", alpha=0.25, gamma=2.0, ignore_index=255)(x, t)
    dice = smp.DiceLoss("binary", ignore_index=255)(x, t)
    ours = cvops.dice_focal_loss(x, t, "binary", alpha=0.25, gamma=2.0, ignore_index=255)
    torch.testing.assert_close(ours, dice + focal, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Autograd, opcheck, torch.compile, determinism
# ---------------------------------------------------------------------------------------


def test_gradcheck_all_ops():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    tc = torch.randint(0, 3, (2, 4, 5))
    tc[0, 0] = -1
    tb = (torch.rand(2, 3, 4, 5) < 0.4).double()
    a = torch.rand(3, dtype=torch.float64)
    checks = [
        lambda x: torch.ops.cvops.sigmoid_focal_loss(x, tb, 0.3, 1.5, 1),
        lambda x: cvops.sigmoid_focal_loss(x, tb, 0.3, 1.5, "none"),
        lambda x: cvops.sigmoid_focal_loss(x, tb, -1, 2, "mean"),
        lambda x: cvops.softmax_focal_loss(x, tc, a, 2.0, ignore_index=-1),
        lambda x: cvops.softmax_focal_loss(x, tc, 0.5, 1.5, ignore_index=-1, reduction="sum"),
        lambda x: cvops.dice_loss(x, tc, "multiclass", ignore_index=-1, log_loss=True),
        lambda x: cvops.dice_loss(x, tb, "multilabel", smooth=1.0, per_image=True),
        lambda x: cvops.dice_loss(
            x.softmax(1), tc, "multiclass", from_logits=False, ignore_index=-1
        ),
        lambda x: cvops.dice_focal_loss(x, tc, "multiclass", alpha=a, ignore_index=-1),
        lambda x: cvops.dice_focal_loss(x, tb, "multilabel", alpha=0.25, gamma=1.5),
    ]
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (x,))


def test_opcheck():
    x = torch.randn(2, 3, 10)
    tb = (torch.rand(2, 3, 10) < 0.4).float()
    tc = torch.randint(0, 3, (2, 10))
    a1 = torch.tensor([0.25])
    ac = torch.ones(3)
    ops = torch.ops.cvops
    for red in (0, 1, 2):
        torch.library.opcheck(ops.sigmoid_focal_loss.default, (x, tb, 0.25, 2.0, red))
    for red in (0, 1, 2):
        torch.library.opcheck(ops._sigmoid_focal_loss_fused.default, (x, tb, 0.25, 1.5, red))
    torch.library.opcheck(ops._loss_stats.default, (x, tb, a1, 1, True, False, 0, 2.0, True))
    torch.library.opcheck(ops._loss_stats.default, (x, tc, ac, 2, True, True, -100, 2.0, True))
    g = torch.randn(2, 3, 5)
    torch.library.opcheck(
        ops._loss_stats_backward.default, (g, x, tc, ac, 2, True, True, -100, 1.5, True)
    )
    torch.library.opcheck(
        ops._sigmoid_focal_loss_backward.default, (torch.randn(()), x, tb, 0.25, 2.0, 2)
    )


def test_torch_compile_fullgraph():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    tc = torch.randint(0, 3, (2, 8, 8))
    tb = (torch.rand(2, 3, 8, 8) < 0.4).float()

    def f(x):
        return (
            cvops.sigmoid_focal_loss(x, tb, reduction="sum")
            + cvops.dice_loss(x, tc, "multiclass")
            + cvops.dice_focal_loss(x, tc, "multiclass")
            + cvops.softmax_focal_loss(x, tc)
            + cvops.dice_loss(x, tb, "multilabel", ignore_index=255)
            + cvops.softmax_focal_loss(x, tc, reduction="none").sum()
        )

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (g,) = torch.autograd.grad(out, x)
    out2 = f(x)
    (g2,) = torch.autograd.grad(out2, x)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(g, g2)


def test_bitwise_repeatable_across_thread_counts():
    x = torch.randn(4, 5, 67, 71)
    tc = torch.randint(0, 5, (4, 67, 71))
    tb = (torch.rand(4, 5, 67, 71) < 0.3).float()
    big = torch.randn(3000, 17)
    bt = (torch.rand(3000, 17) < 0.1).float()

    def run():
        outs = []
        for fn, args in [
            (cvops.dice_focal_loss, (tc, "multiclass")),
            (cvops.dice_loss, (tb, "multilabel")),
            (cvops.sigmoid_focal_loss, (tb, 0.25, 2, "sum")),
        ]:
            outs += list(_grad(fn, x, *args))
        outs += list(_grad(cvops.sigmoid_focal_loss, big, bt, 0.25, 2, "mean"))
        return outs

    prev = torch.get_num_threads()
    try:
        first = run()
        again = run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(prev)
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b) and torch.equal(a, c)


# ---------------------------------------------------------------------------------------
# Modules and bad input
# ---------------------------------------------------------------------------------------


def test_modules():
    x = torch.randn(2, 3, 5, 5)
    tc = torch.randint(0, 3, (2, 5, 5))
    tb = (torch.rand(2, 3, 5, 5) < 0.5).float()
    assert torch.equal(
        cvops.ops.FocalLoss("multiclass", alpha=None)(x, tc), cvops.softmax_focal_loss(x, tc)
    )
    assert torch.equal(
        cvops.ops.FocalLoss(reduction="sum")(x, tb),
        cvops.sigmoid_focal_loss(x, tb, reduction="sum"),
    )
    assert torch.equal(
        cvops.ops.DiceLoss("multiclass")(x, tc), cvops.dice_loss(x, tc, "multiclass")
    )
    assert torch.equal(cvops.ops.DiceFocalLoss()(x, tc), cvops.dice_focal_loss(x, tc))
    assert "multiclass" in repr(cvops.ops.DiceFocalLoss())


def test_bad_input():
    x = torch.randn(2, 3, 4, 4)
    tc = torch.randint(0, 3, (2, 4, 4))
    tb = (torch.rand(2, 3, 4, 4) < 0.5).float()
    with pytest.raises(ValueError, match="same shape"):
        cvops.sigmoid_focal_loss(x, tb[:1])
    with pytest.raises(TypeError, match="targets must have the dtype"):
        cvops.sigmoid_focal_loss(x, tb.double())
    with pytest.raises(TypeError, match="inputs must be a floating"):
        cvops.sigmoid_focal_loss(tc, tc)
    with pytest.raises(ValueError, match="reduction"):
        cvops.sigmoid_focal_loss(x, tb, reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        cvops.sigmoid_focal_loss(x, tb, gamma=-1)
    with pytest.raises(ValueError, match="reduction"):
        cvops.softmax_focal_loss(x, tc, reduction="max")
    with pytest.raises(ValueError, match="mode"):
        cvops.dice_loss(x, tb, "multi")
    with pytest.raises(ValueError, match="target must have shape"):
        cvops.dice_loss(x, tc[:, :2], "multiclass")
    with pytest.raises(TypeError, match="integer class indices"):
        cvops.softmax_focal_loss(x, tc.float())
    with pytest.raises(ValueError, match="not a class index"):
        cvops.softmax_focal_loss(x, torch.full_like(tc, 3))
    with pytest.raises(ValueError, match="not a class index"):
        cvops.dice_loss(x, torch.full_like(tc, -7), "multiclass", ignore_index=255)
    with pytest.raises(ValueError, match="outside"):
        cvops.softmax_focal_loss(x, torch.full_like(tc, 3), reduction="none")
    with pytest.raises(ValueError, match="alpha must be"):
        cvops.softmax_focal_loss(x, tc, alpha=torch.ones(4))
    with pytest.raises(ValueError, match="multilabel target"):
        cvops.dice_loss(x, tb.reshape(2, 4, 3, 4), "multilabel")
    with pytest.raises(ValueError, match="not exactly representable"):
        cvops.dice_loss(x.bfloat16(), tb.bfloat16(), "multilabel", ignore_index=257)
    with pytest.raises(TypeError, match="ignore_index"):
        cvops.dice_loss(x, tc, "multiclass", ignore_index=1.5)
    with pytest.raises(ValueError, match="needs logits"):
        torch.ops.cvops._loss_stats(
            x.reshape(2, 3, -1), tb.reshape(2, 3, -1), torch.ones(1), 1, False, False, 0, 2.0, True
        )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_fused_path_matches_plain(reduction):
    # requires_grad selects the fused loss+gradient kernel; both paths give the same loss.
    x = torch.randn(301, 29)
    t = (torch.rand(301, 29) < 0.2).float()
    plain = cvops.sigmoid_focal_loss(x, t, reduction=reduction)
    fused = cvops.sigmoid_focal_loss(x.clone().requires_grad_(), t, reduction=reduction)
    torch.testing.assert_close(fused.detach(), plain, rtol=1e-6, atol=1e-6)
    g_direct = torch.ops.cvops._sigmoid_focal_loss_backward(
        torch.ones_like(plain), x, t, 0.25, 2.0, {"none": 0, "mean": 1, "sum": 2}[reduction]
    )
    g_fused = torch.ops.cvops._sigmoid_focal_loss_fused(
        x, t, 0.25, 2.0, {"none": 0, "mean": 1, "sum": 2}[reduction]
    )[1]
    torch.testing.assert_close(g_fused, g_direct)


@pytest.mark.parametrize("disable", ["CVOPS_DISABLE_AVX2", "CVOPS_DISABLE_AVX512"])
def test_narrower_isa_paths_match_reference(disable):
    # The CPU kernels pick AVX-512, AVX2 or the SSE2 baseline at run time; the environment
    # variables force the narrower ones (a no-op where the CPU lacks the wider ISA anyway).
    code = (
        "import torch, torchvision, cvops\n"
        "from cvops.ops import _reference as ref\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(2, 5, 9, 13, requires_grad=True)\n"
        "t = torch.randint(0, 5, (2, 9, 13))\n"
        "tb = (torch.rand(2, 5, 9, 13) < 0.3).float()\n"
        "for f, r in [(lambda x: cvops.dice_focal_loss(x, t, 'multiclass', alpha=0.5),\n"
        "              lambda x: ref.dice_loss_reference(x, t, 'multiclass')\n"
        "              + ref.softmax_focal_loss_reference(x, t, 0.5)),\n"
        "             (lambda x: cvops.sigmoid_focal_loss(x, tb, reduction='sum'),\n"
        "              lambda x: torchvision.ops.sigmoid_focal_loss(x, tb, reduction='sum')),\n"
        "             (lambda x: cvops.dice_loss(x, tb, 'multilabel', ignore_index=1),\n"
        "              lambda x: ref.dice_loss_reference(x, tb, 'multilabel', ignore_index=1))]:\n"
        "    a, = torch.autograd.grad(f(x), x)\n"
        "    b, = torch.autograd.grad(r(x), x)\n"
        "    torch.testing.assert_close(f(x), r(x), rtol=1e-5, atol=1e-5)\n"
        "    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)\n"
        "print('OK')\n"
    )
    run_python(code, **{disable: "1"})
