"""Segmentation cases (issue 16): a small U-Net's training step with cvops' fused Dice+Focal
loss against the same network with segmentation_models_pytorch's Dice and focal losses, and
the two losses alone at the same shape.

The training step (forward, loss, backward, SGD step) runs the same U-Net, started from the
same weights, on both sides: only the loss differs, so the ratio is a model-level number,
diluted by the network's forward and backward (most of the step).

The loss is ``cvops.dice_focal_loss(logits, target, "multiclass", ignore_index=255)``:
smp's ``DiceLoss("multiclass", ignore_index=255)`` plus the softmax focal loss (gamma 2, no
alpha) averaged over the non-ignored pixels. On the smp side that focal term is smp's
``softmax_focal_loss_with_logits`` (``losses._functional``): its sum (ignored pixels carry
nll_loss's ignore value, -100, so they add 0) over the number of non-ignored pixels. smp's
``FocalLoss("multiclass")`` module is not used: it is another loss, the mean over classes of
one-vs-rest *sigmoid* focal losses on each channel's logit (alpha None), which no argument
turns into the softmax focal loss (on random logits it is about a fifth of it). The two sides
are checked to agree (1e-5 relative) before anything is timed.
"""

import copy
import importlib.util

import torch

import cvops

from ..harness import BenchCase, register
from .losses import _fwd_bwd, _min_bytes

BATCH, SIZE, CLASSES, IGNORE = 4, 64, 6, 255
DEPTH, BASE_WIDTH = 3, 16
LOGITS = (BATCH, CLASSES, SIZE, SIZE)
GAMMA = 2.0


def cvops_loss(logits, target):
    return cvops.dice_focal_loss(logits, target, "multiclass", gamma=GAMMA, ignore_index=IGNORE)


def smp_loss():
    """The same loss from segmentation_models_pytorch's pieces (see the module docstring)."""
    from segmentation_models_pytorch.losses import DiceLoss
    from segmentation_models_pytorch.losses._functional import softmax_focal_loss_with_logits

    dice = DiceLoss("multiclass", ignore_index=IGNORE)

    def loss(logits, target):
        valid = target != IGNORE
        focal = softmax_focal_loss_with_logits(
            logits, target.masked_fill(~valid, -100), gamma=GAMMA, reduction="sum"
        )
        return dice(logits, target) + focal / valid.sum()

    return loss


def check_losses_agree(logits, target, rtol=1e-5):
    """Raises unless cvops' and smp's losses agree on ``logits``; returns both values."""
    ours, ref = float(cvops_loss(logits, target)), float(smp_loss()(logits, target))
    if not abs(ours - ref) <= rtol * abs(ref):
        raise RuntimeError(
            "cvops dice_focal_loss (%.8g) and smp Dice + softmax focal (%.8g) disagree: the "
            "segmentation benchmark would not compare the same math" % (ours, ref)
        )
    return ours, ref


def segmentation_target(generator, device):
    """Classes in [0, CLASSES) with about a tenth of the pixels IGNORE."""
    shape = (BATCH, SIZE, SIZE)
    t = torch.randint(0, CLASSES, shape, generator=generator)
    t[torch.rand(shape, generator=generator) < 0.1] = IGNORE
    return t.to(device)


def unet():
    """The padded U-Net with BN (output size = input size), small enough for a CPU step."""
    same_size = dict(padding=True, batch_norm=True)
    net = dict(in_channels=3, num_classes=CLASSES, depth=DEPTH, base_width=BASE_WIDTH)
    return cvops.models.get_model("unet", **net, **same_size)


def _training(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g).to(device)
    t = segmentation_target(g, device)
    torch.manual_seed(0)
    start = unet().to(device).train()
    with torch.no_grad():  # on a copy: the BN running statistics of ``start`` stay untouched
        check_losses_agree(copy.deepcopy(start)(x)["out"], t)

    def run(loss_fn):
        model = copy.deepcopy(start)  # the same starting weights on both sides
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x)["out"], t).backward()
            opt.step()

        return step

    return run(cvops_loss), run(smp_loss())


def _loss_only(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(LOGITS, generator=g).to(device)
    t = segmentation_target(g, device)
    check_losses_agree(x, t)
    return _fwd_bwd(cvops_loss, x, t), _fwd_bwd(smp_loss(), x, t)


_REFERENCE = "smp DiceLoss + smp softmax focal"
_NAME = "[%d,%d,%d,%d]" % LOGITS
if importlib.util.find_spec("segmentation_models_pytorch") is not None:
    register(
        BenchCase(
            "segmentation",
            "unet [%d,3,%d,%d] SGD step (only the loss differs)" % (BATCH, SIZE, SIZE),
            "float32",
            _training,
            "same U-Net and weights + " + _REFERENCE,
        )
    )
    register(
        BenchCase(
            "segmentation",
            "dice_focal %s ignore=%d fwd+bwd" % (_NAME, IGNORE),
            "float32",
            _loss_only,
            _REFERENCE,
            bytes=_min_bytes(LOGITS, "index", True),
        )
    )
