"""Fused losses on CUDA: the review's cases that only a GPU can check (skip without one).

The launch shapes and the shared math are also checked on the CPU (tests/csrc); these tests
run the kernels themselves.
"""

import pytest
import torch
import torch.nn.functional as F

import cvops
from tests.conftest import requires_cuda, requires_ops

pytestmark = [requires_ops, requires_cuda, pytest.mark.cuda]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_out_of_range_target_gives_nan_loss_for_every_reduction(reduction):
    # CUDA cannot raise without a host sync: a bad class makes every statistic NaN (it used to
    # drop the pixel and return a finite focal loss), and its pixel's gradient NaN.
    x = torch.randn(2, 3, 4, 4, device="cuda", requires_grad=True)
    t = torch.randint(0, 3, (2, 4, 4), device="cuda")
    t[0, 1, 2] = 7
    for gamma in (0.0, 2.0):
        loss = cvops.softmax_focal_loss(x, t, gamma=gamma, reduction=reduction)
        assert torch.isnan(loss)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isnan(g[0, :, 1, 2]).all()
    assert torch.isnan(cvops.dice_loss(x, t, "multiclass"))
    assert torch.isnan(cvops.dice_focal_loss(x, t, "multiclass"))
    t[0, 1, 2] = -3
    assert torch.isnan(cvops.softmax_focal_loss(x, t, reduction=reduction))
    with pytest.raises(ValueError, match="outside"):  # reduction='none' checks (host sync)
        cvops.softmax_focal_loss(x, t, reduction="none")


def test_ignored_target_is_not_out_of_range():
    x = torch.randn(2, 3, 4, 4, device="cuda")
    t = torch.randint(0, 3, (2, 4, 4), device="cuda")
    t[0, 1, 2] = 255
    loss = cvops.softmax_focal_loss(x, t, gamma=0, ignore_index=255)
    torch.testing.assert_close(loss, F.cross_entropy(x, t, ignore_index=255))


def test_multilabel_dice_with_more_than_65535_rows():
    # N * C = 81,920 (sample, class) rows used to exceed gridDim.y and raise on CUDA.
    x = torch.randn(1024, 80, 8, 8)
    t = (torch.rand(1024, 80, 8, 8) < 0.3).float()
    for per_image in (False, True):
        cpu = cvops.dice_loss(x, t, "multilabel", per_image=per_image)
        gpu = cvops.dice_loss(x.cuda(), t.cuda(), "multilabel", per_image=per_image)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    xm = torch.randn(1024, 70, 2, 2)
    tm = torch.randint(0, 70, (1024, 2, 2))
    cpu = cvops.dice_focal_loss(xm, tm, "multiclass", per_image=True)
    gpu = cvops.dice_focal_loss(xm.cuda(), tm.cuda(), "multiclass", per_image=True)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


def test_long_rows_sum_their_chunks_in_double():
    # 1e8 elements in one row: 24,415 chunk partials. Summed in float they drift by ~1e-5
    # relative (up to 1e-3); in double (as on the CPU) the error is the chunks' own.
    n = 100_000_000
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 1, n, device="cuda", generator=g)
    t = (torch.rand(1, 1, n, device="cuda", generator=g) < 0.5).float()
    stats = torch.ops.cvops._loss_stats(
        x, t, torch.ones(1, device="cuda"), 0, True, False, 0, 2.0, True
    )
    p = torch.sigmoid(x.double())
    exact_p = p.sum()
    exact_d = (p - t.double()).abs().sum()
    torch.testing.assert_close(stats[0, 0, 1].double(), exact_p, rtol=2e-6, atol=0)
    torch.testing.assert_close(stats[0, 0, 0].double(), exact_d, rtol=2e-6, atol=0)
