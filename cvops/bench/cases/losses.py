"""Fused loss cases: torchvision's sigmoid focal loss, composed PyTorch Dice / focal, and
segmentation_models_pytorch's DiceLoss (when installed)."""

import importlib.util

import torch

import cvops
from cvops.ops import _reference as ref

from ..harness import BenchCase, register

_RETINA = (100000, 80)
_SEG = (8, 21, 256, 256)
_BIN = (16, 1, 512, 512)


def _min_bytes(shape, target, backward):
    """The least traffic of one fused call on float32 logits of ``shape``: the forward reads
    logits and targets (``target``: "float" same shape, "index" int64 without the class dim),
    the backward reads both again and writes the logits' gradient."""
    n = 1
    for s in shape:
        n *= s
    x = 4 * n
    t = x if target == "float" else 8 * (n // shape[1])
    return (x + t) * (2 if backward else 1) + (x if backward else 0)


def _fwd_bwd(fn, x, *args, **kwargs):
    xg = x.clone().requires_grad_()

    def run():
        fn(xg, *args, **kwargs).backward()
        xg.grad = None

    return run


def _sigmoid_focal(backward):
    def make(device):
        from torchvision.ops import sigmoid_focal_loss as tv

        g = torch.Generator().manual_seed(0)
        x = torch.randn(_RETINA, generator=g).to(device)
        t = (torch.rand(_RETINA, generator=g) < 0.01).float().to(device)
        if not backward:
            return (
                lambda: cvops.sigmoid_focal_loss(x, t, reduction="sum"),
                lambda: tv(x, t, reduction="sum"),
            )
        return (
            _fwd_bwd(cvops.sigmoid_focal_loss, x, t, reduction="sum"),
            _fwd_bwd(tv, x, t, reduction="sum"),
        )

    return make


def _seg_data(shape, mode, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    if mode == "multiclass":
        t = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g).to(device)
    else:
        t = (torch.rand(shape, generator=g) < 0.3).float().to(device)
    return x, t


def _softmax_focal(device):
    x, t = _seg_data(_SEG, "multiclass", device)
    return (
        _fwd_bwd(cvops.softmax_focal_loss, x, t),
        _fwd_bwd(ref.softmax_focal_loss_reference, x, t),
    )


def _dice(shape, mode):
    def make(device):
        x, t = _seg_data(shape, mode, device)
        return (
            _fwd_bwd(cvops.dice_loss, x, t, mode),
            _fwd_bwd(ref.dice_loss_reference, x, t, mode),
        )

    return make


def _smp_dice(shape, mode):
    def make(device):
        from segmentation_models_pytorch.losses import DiceLoss

        x, t = _seg_data(shape, mode, device)
        smp_dice = DiceLoss(mode)
        return _fwd_bwd(cvops.dice_loss, x, t, mode), _fwd_bwd(smp_dice, x, t)

    return make


def _dice_focal(device):
    x, t = _seg_data(_SEG, "multiclass", device)

    def separate(xg, t):
        return cvops.dice_loss(xg, t, "multiclass") + cvops.softmax_focal_loss(xg, t)

    return _fwd_bwd(cvops.dice_focal_loss, x, t), _fwd_bwd(separate, x, t)


_SEG_BYTES = _min_bytes(_SEG, "index", True)
_BIN_BYTES = _min_bytes(_BIN, "float", True)
register(
    BenchCase(
        "losses",
        "sigmoid_focal [100000,80] sum fwd",
        "float32",
        _sigmoid_focal(False),
        bytes=_min_bytes(_RETINA, "float", False),
    )
)
register(
    BenchCase(
        "losses",
        "sigmoid_focal [100000,80] sum fwd+bwd",
        "float32",
        _sigmoid_focal(True),
        bytes=_min_bytes(_RETINA, "float", True),
    )
)
register(
    BenchCase(
        "losses",
        "softmax_focal [8,21,256,256] fwd+bwd",
        "float32",
        _softmax_focal,
        "composed",
        bytes=_SEG_BYTES,
    )
)
register(
    BenchCase(
        "losses",
        "dice multiclass [8,21,256,256] fwd+bwd",
        "float32",
        _dice(_SEG, "multiclass"),
        "composed (smp formula)",
        bytes=_SEG_BYTES,
    )
)
register(
    BenchCase(
        "losses",
        "dice binary [16,1,512,512] fwd+bwd",
        "float32",
        _dice(_BIN, "binary"),
        "composed (smp formula)",
        bytes=_BIN_BYTES,
    )
)
register(
    BenchCase(
        "losses",
        "dice_focal multiclass [8,21,256,256] fwd+bwd",
        "float32",
        _dice_focal,
        "cvops dice + cvops focal",
        bytes=_SEG_BYTES,
    )
)
# What users of segmentation_models_pytorch run today (its DiceLoss, not the lean formula
# above): the same data and the same result to 1e-5 (tests/ops/test_losses.py).
if importlib.util.find_spec("segmentation_models_pytorch") is not None:
    for _shape, _mode, _name in (
        (_BIN, "binary", "[16,1,512,512]"),
        (_SEG, "multiclass", "[8,21,256,256]"),
    ):
        register(
            BenchCase(
                "losses",
                "dice %s %s fwd+bwd (smp)" % (_mode, _name),
                "float32",
                _smp_dice(_shape, _mode),
                "smp.losses.DiceLoss",
                bytes=_min_bytes(_shape, "index" if _mode == "multiclass" else "float", True),
            )
        )
