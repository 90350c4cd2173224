"""Fused focal and Dice losses: functions, dispatcher registrations and nn.Modules.

* :func:`sigmoid_focal_loss` has exactly the semantics of
  ``torchvision.ops.sigmoid_focal_loss``; one kernel pass forward, one backward.
* :func:`softmax_focal_loss` is the multi-class focal loss over ``[N, C, ...]`` logits.
* :func:`dice_loss` matches ``segmentation_models_pytorch.losses.DiceLoss`` (0.6).
* :func:`dice_focal_loss` is ``lambda_dice * dice + lambda_focal * focal`` from one pass.

The Dice / softmax-focal kernels (``cvops::_loss_stats``) read the logits once and return
per-(sample, class) sums ``[N, C, 5]`` = (sum |p - t|, sum p, sum t, sum focal, count) of
non-ignored elements; the few remaining [N, C]-sized steps are plain PyTorch ops, so
autograd flows through them into the fused backward kernel (``_loss_stats_backward``).
"""

from typing import Optional, Union

import torch
from torch import Tensor, nn

from .. import extension
from ._errors import call_op

_MODES = {"binary": 0, "multilabel": 1, "multiclass": 2}
_NUM_STATS = 5


def _reduction_code(reduction: str) -> int:
    # An if-chain, not a dict: TorchScript compiles it (sigmoid_focal_loss is scriptable).
    if reduction == "none":
        return 0
    if reduction == "mean":
        return 1
    if reduction == "sum":
        return 2
    raise ValueError(
        "Invalid Value for arg 'reduction': '%s'; supported reduction modes: "
        "'none', 'mean', 'sum'" % (reduction,)
    )


def _mode_code(mode) -> int:
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError("mode must be 'binary', 'multilabel' or 'multiclass', got %r" % (mode,))
    return _MODES[mode]


def _tensor(value, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError("%s must be a Tensor, got %s" % (name, type(value).__name__))
    return value


def _floating(value: Tensor, name: str) -> Tensor:
    if not value.is_floating_point():
        raise TypeError("%s must be a floating-point tensor, got %s" % (name, value.dtype))
    return value


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number, got %s" % (name, type(value).__name__))
    return float(value)


@torch.fx.wrap
def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> Tensor:
    """Focal loss of RetinaNet (https://arxiv.org/abs/1708.02002), as torchvision's.

    Args:
        inputs: logits of any shape (float32/float64/float16/bfloat16).
        targets: same shape; 0/1 labels (soft labels allowed). Bool or integer targets are
            converted to the dtype of ``inputs``; other float dtypes are an error.
        alpha: weight of the positive class in [0, 1]; negative means no weighting.
        gamma: focusing exponent (>= 0).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.

    Targets receive no gradient. Scriptable, and a leaf of ``torch.fx.symbolic_trace``. At
    ``gamma = 0`` the loss can differ from torchvision's by ~2e-7 (float32): the cross
    entropy is computed more accurately (checked against float64).
    """
    code = _reduction_code(reduction)
    if not torch.jit.is_scripting():
        extension.require_ops()
        _floating(_tensor(inputs, "inputs"), "inputs")
        _tensor(targets, "targets")
        alpha, gamma = _number(alpha, "alpha"), _number(gamma, "gamma")
        return call_op(_sigmoid_focal_loss, inputs, targets, alpha, gamma, code)
    return _sigmoid_focal_loss(inputs, targets, alpha, gamma, code)


def _sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: int
) -> Tensor:
    if not targets.is_floating_point():
        targets = targets.to(inputs.dtype)
    if torch.is_grad_enabled() and inputs.requires_grad:
        # One pass computes the loss and its gradient (saved; backward only scales it).
        fused = torch.ops.cvops._sigmoid_focal_loss_fused
        return fused(inputs, targets, alpha, gamma, reduction)[0]
    return torch.ops.cvops.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)


def _class_alpha(alpha, num_classes: int, like: Tensor) -> Tensor:
    if alpha is None:
        return torch.ones(num_classes, dtype=torch.float64, device=like.device)
    if isinstance(alpha, Tensor):
        _floating(alpha, "alpha")
        if alpha.dim() != 1 or alpha.numel() != num_classes:
            raise ValueError(
                "alpha must be a float or a Tensor[%d] (one weight per class), got shape %s"
                % (num_classes, tuple(alpha.shape))
            )
        return alpha.to(like.device)
    return torch.full(
        (num_classes,), _number(alpha, "alpha"), dtype=torch.float64, device=like.device
    )


def _class_targets(logits: Tensor, target: Tensor, name: str = "target") -> Tensor:
    _tensor(target, name)
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError("%s must hold integer class indices, got %s" % (name, target.dtype))
    expected = (logits.size(0),) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            "%s must have shape %s for logits of shape %s, got %s"
            % (name, expected, tuple(logits.shape), tuple(target.shape))
        )
    return target.reshape(logits.size(0), -1).to(torch.long)


def _check_logits(logits: Tensor, name: str) -> None:
    _floating(_tensor(logits, name), name)
    if logits.dim() < 2:
        raise ValueError("%s must be [N, C, ...], got shape %s" % (name, tuple(logits.shape)))


@torch.fx.wrap
def softmax_focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: Optional[Union[float, Tensor]] = None,
    gamma: float = 2,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class focal loss: ``-alpha_y (1 - p_y)^gamma log p_y`` with ``p = softmax(logits)``.

    Args:
        logits: ``[N, C, ...]``.
        target: integer classes ``[N, ...]``; pixels equal to ``ignore_index`` are skipped.
            Any other value outside ``[0, C)`` raises ``ValueError`` (CPU).
        alpha: ``None`` (no weighting), a float (same weight for all classes) or a
            ``Tensor[C]`` of per-class weights.
        gamma: focusing exponent (>= 0).
        reduction: ``'mean'`` (over non-ignored pixels, as ``cross_entropy``), ``'sum'`` or
            ``'none'`` (``[N, ...]``, 0 at ignored pixels).
    """
    extension.require_ops()
    _check_logits(logits, "logits")
    code = _reduction_code(reduction)
    t = _class_targets(logits, target)
    gamma = _number(gamma, "gamma")
    if not gamma >= 0:
        raise ValueError("gamma must be non-negative, got %r" % gamma)
    ignore_index = int(ignore_index)
    a = _class_alpha(alpha, logits.size(1), logits)
    if code == 0:
        return _softmax_focal_none(logits, target, a, gamma, ignore_index)
    n, c = logits.shape[:2]
    stats = torch.ops.cvops._loss_stats(
        logits.reshape(n, c, -1), t, a, 2, True, True, ignore_index, gamma, True
    )
    total = stats[..., 3].sum()
    if code == 2:
        return total.to(logits.dtype)
    return (total / stats[..., 4].sum()).to(logits.dtype)


def _softmax_focal_none(logits, target, alpha, gamma, ignore_index):
    # Per-pixel output: composed from PyTorch ops (the fused kernels reduce).
    valid = target != ignore_index
    y = torch.where(valid, target, torch.zeros_like(target)).long()
    # (Checked in eager mode; a host sync on CUDA. Under torch.compile the gather checks.)
    if not torch.compiler.is_compiling() and bool(((y < 0) | (y >= logits.size(1))).any()):
        raise ValueError(
            "target holds values outside [0, %d) other than ignore_index" % (logits.size(1))
        )
    logp = torch.log_softmax(logits, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    p = logp.exp()
    loss = -alpha.to(logits.dtype)[y] * (1 - p).pow(gamma) * logp
    return torch.where(valid, loss, torch.zeros_like(loss))


def _prepare(input: Tensor, target: Tensor, mode: int):
    """(input [N, C, L], target [N, C, L] or [N, L] int64) as the kernels want them."""
    _floating(_tensor(input, "input"), "input")
    _tensor(target, "target")
    if input.dim() < 2:
        raise ValueError("input must be [N, C, ...], got shape %s" % (tuple(input.shape),))
    n, c = input.shape[:2]
    if mode == 2:
        return input.reshape(n, c, -1), _class_targets(input, target)
    if target.dim() < 1 or target.size(0) != n or target.numel() != input.numel():
        raise ValueError(
            "target must have the shape of input %s (binary: any shape with the same number "
            "of elements per sample), got %s" % (tuple(input.shape), tuple(target.shape))
        )
    if mode == 0:
        x = input.reshape(n, 1, -1)
    else:
        if tuple(target.shape) != tuple(input.shape):
            raise ValueError(
                "multilabel target must have the shape of input %s, got %s"
                % (tuple(input.shape), tuple(target.shape))
            )
        x = input.reshape(n, c, -1)
    return x, target.reshape(x.shape).to(input.dtype)


def _check_ignore_representable(ignore_index, mode, dtype):
    # Binary / multilabel targets are compared with ignore_index in the input's dtype.
    if ignore_index is not None and mode != 2 and not torch.compiler.is_compiling():
        if float(torch.tensor(float(ignore_index), dtype=dtype)) != float(ignore_index):
            raise ValueError(
                "ignore_index=%d is not exactly representable in %s (the dtype the targets are "
                "compared in); use a value such as -1 or 255" % (ignore_index, dtype)
            )


def _dice_from_stats(stats, smooth, eps, log_loss, per_image):
    if not per_image:
        stats = stats.sum(0)
    d, p, t = stats.unbind(-1)[:3]
    # segmentation_models_pytorch's soft_tversky_score with alpha = beta = 0.5, whose
    # denominator inter + (p - inter) / 2 + (t - inter) / 2 is (p + t) / 2 (fewer small ops:
    # they are most of the fixed cost of a call).
    pt = p + t
    inter = (pt - d) * 0.5
    score = (inter + smooth) / (pt * 0.5 + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    return loss * (t > 0).to(loss.dtype)


def _reduce(loss, code):
    if code == 1:
        return loss.mean()
    if code == 2:
        return loss.sum()
    return loss


def _ignore(ignore_index):
    if ignore_index is None:
        return False, 0
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError("ignore_index must be an int or None, got %r" % (ignore_index,))
    return True, ignore_index


@torch.fx.wrap
def dice_loss(
    input: Tensor,
    target: Tensor,
    mode: str = "binary",
    from_logits: bool = True,
    smooth: float = 0.0,
    eps: float = 1e-7,
    ignore_index: Optional[int] = None,
    log_loss: bool = False,
    per_image: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Dice loss, as ``segmentation_models_pytorch.losses.DiceLoss(mode, from_logits=...,
    smooth=..., eps=..., ignore_index=..., log_loss=...)`` when ``per_image=False``.

    Args:
        input: ``[N, C, ...]`` logits (probabilities when ``from_logits=False``).
        target: ``binary``: same number of elements as ``input`` (``[N, 1, ...]`` or
            ``[N, ...]``); ``multilabel``: the shape of ``input``; ``multiclass``: integer
            classes ``[N, ...]``.
        per_image: Dice per sample and class (MONAI ``batch=False``) instead of per class
            over the batch.
        reduction: over the per-class (``[C]``) or per-(sample, class) (``[N, C]``) losses.

    Classes absent from the target (in the batch, or the sample when ``per_image``) add 0.
    """
    extension.require_ops()
    m = _mode_code(mode)
    code = _reduction_code(reduction)
    has_ignore, ignore = _ignore(ignore_index)
    x, t = _prepare(input, target, m)
    _check_ignore_representable(ignore_index, m, x.dtype)
    alpha = x.new_ones(x.size(1) if m == 2 else 1, dtype=torch.float32)
    stats = torch.ops.cvops._loss_stats(
        x, t, alpha, m, bool(from_logits), has_ignore, ignore, 2.0, False
    )
    loss = _dice_from_stats(
        stats, _number(smooth, "smooth"), _number(eps, "eps"), bool(log_loss), bool(per_image)
    )
    return _reduce(loss, code).to(input.dtype)


@torch.fx.wrap
def dice_focal_loss(
    input: Tensor,
    target: Tensor,
    mode: str = "multiclass",
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    alpha: Optional[Union[float, Tensor]] = None,
    gamma: float = 2.0,
    smooth: float = 0.0,
    eps: float = 1e-7,
    ignore_index: Optional[int] = None,
    log_loss: bool = False,
    per_image: bool = False,
) -> Tensor:
    """``lambda_dice * dice_loss(...) + lambda_focal * focal`` from one pass over the logits.

    The focal term is the mean over non-ignored elements of the sigmoid focal loss
    (``binary``/``multilabel``; ``alpha`` a float, ``None`` = no weighting) or over
    non-ignored pixels of the softmax focal loss (``multiclass``; ``alpha`` a float or a
    ``Tensor[C]``). ``input`` must be logits.
    """
    extension.require_ops()
    m = _mode_code(mode)
    has_ignore, ignore = _ignore(ignore_index)
    x, t = _prepare(input, target, m)
    _check_ignore_representable(ignore_index, m, x.dtype)
    gamma = _number(gamma, "gamma")
    if m == 2:
        a = _class_alpha(alpha, x.size(1), x)
    else:
        a = x.new_full(
            (1,), -1.0 if alpha is None else _number(alpha, "alpha"), dtype=torch.float64
        )
    stats = torch.ops.cvops._loss_stats(x, t, a, m, True, has_ignore, ignore, gamma, True)
    dice = _dice_from_stats(
        stats, _number(smooth, "smooth"), _number(eps, "eps"), bool(log_loss), bool(per_image)
    ).mean()
    focal = stats[..., 3].sum() / stats[..., 4].sum()
    loss = (
        _number(lambda_dice, "lambda_dice") * dice + _number(lambda_focal, "lambda_focal") * focal
    )
    return loss.to(input.dtype)


class FocalLoss(nn.Module):
    """Focal loss module: ``mode='binary'`` (or ``'multilabel'``) is
    :func:`sigmoid_focal_loss`, ``mode='multiclass'`` is :func:`softmax_focal_loss`."""

    def __init__(self, mode="binary", alpha=0.25, gamma=2.0, reduction="mean", ignore_index=-100):
        super().__init__()
        self.mode_code = _mode_code(mode)
        _reduction_code(reduction)
        self.mode, self.alpha, self.gamma = mode, alpha, gamma
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if self.mode_code == 2:
            return softmax_focal_loss(
                input, target, self.alpha, self.gamma, self.ignore_index, self.reduction
            )
        alpha = -1.0 if self.alpha is None else self.alpha
        return sigmoid_focal_loss(input, target, alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return "mode=%r, alpha=%r, gamma=%r, reduction=%r" % (
            self.mode,
            self.alpha,
            self.gamma,
            self.reduction,
        )


class _KeywordLoss(nn.Module):
    """An ``nn.Module`` that calls its functional loss with the keyword arguments it was built
    with (``self.kwargs``); subclasses spell the arguments out in ``__init__``."""

    _loss = None  # staticmethod: the functional form
    _repr_skip = ()  # kwargs left out of the repr

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return self._loss(input, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join("%s=%r" % kv for kv in self.kwargs.items() if kv[0] not in self._repr_skip)


class DiceLoss(_KeywordLoss):
    """``nn.Module`` form of :func:`dice_loss`."""

    _loss = staticmethod(dice_loss)

    def __init__(
        self,
        mode="binary",
        from_logits=True,
        smooth=0.0,
        eps=1e-7,
        ignore_index=None,
        log_loss=False,
        per_image=False,
        reduction="mean",
    ):
        super().__init__()
        _mode_code(mode)
        _reduction_code(reduction)
        self.kwargs = dict(
            mode=mode,
            from_logits=from_logits,
            smooth=smooth,
            eps=eps,
            ignore_index=ignore_index,
            log_loss=log_loss,
            per_image=per_image,
            reduction=reduction,
        )


class DiceFocalLoss(_KeywordLoss):
    """``nn.Module`` form of :func:`dice_focal_loss`."""

    _loss = staticmethod(dice_focal_loss)
    _repr_skip = ("alpha",)  # may be a per-class tensor

    def __init__(
        self,
        mode="multiclass",
        lambda_dice=1.0,
        lambda_focal=1.0,
        alpha=None,
        gamma=2.0,
        smooth=0.0,
        eps=1e-7,
        ignore_index=None,
        log_loss=False,
        per_image=False,
    ):
        super().__init__()
        _mode_code(mode)
        self.kwargs = dict(
            mode=mode,
            lambda_dice=lambda_dice,
            lambda_focal=lambda_focal,
            alpha=alpha,
            gamma=gamma,
            smooth=smooth,
            eps=eps,
            ignore_index=ignore_index,
            log_loss=log_loss,
            per_image=per_image,
        )


def _opmath(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _register():
    @torch.library.register_fake("cvops::sigmoid_focal_loss")
    def _sfl_fake(input, target, alpha, gamma, reduction):
        torch._check(input.shape == target.shape, lambda: "inputs and targets shape mismatch")
        if reduction == 0:
            return torch.empty_like(input, memory_format=torch.contiguous_format)
        return input.new_empty(())

    @torch.library.register_fake("cvops::_sigmoid_focal_loss_backward")
    def _sfl_bwd_fake(grad, input, target, alpha, gamma, reduction):
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    def sfl_setup(ctx, inputs, output):
        input, target, alpha, gamma, reduction = inputs
        ctx.save_for_backward(input, target)
        ctx.args = (alpha, gamma, reduction)

    def sfl_backward(ctx, grad):
        input, target = ctx.saved_tensors
        gi = torch.ops.cvops._sigmoid_focal_loss_backward(grad, input, target, *ctx.args)
        return gi, None, None, None, None

    torch.library.register_autograd(
        "cvops::sigmoid_focal_loss", sfl_backward, setup_context=sfl_setup
    )

    @torch.library.register_fake("cvops::_sigmoid_focal_loss_fused")
    def _sfl_fused_fake(input, target, alpha, gamma, reduction):
        torch._check(input.shape == target.shape, lambda: "inputs and targets shape mismatch")
        grad = torch.empty_like(input, memory_format=torch.contiguous_format)
        if reduction == 0:
            return torch.empty_like(input, memory_format=torch.contiguous_format), grad
        return input.new_empty(()), grad

    def fused_setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    def fused_backward(ctx, grad_loss, _grad_grad):
        (saved,) = ctx.saved_tensors
        return saved * grad_loss.to(saved.dtype), None, None, None, None

    torch.library.register_autograd(
        "cvops::_sigmoid_focal_loss_fused", fused_backward, setup_context=fused_setup
    )

    @torch.library.register_fake("cvops::_loss_stats")
    def _stats_fake(input, target, alpha, mode, from_logits, has_ignore, ignore, gamma, focal):
        torch._check(input.dim() == 3, lambda: "_loss_stats: input must be [N, C, S]")
        return input.new_empty(
            (input.size(0), input.size(1), _NUM_STATS), dtype=_opmath(input.dtype)
        )

    @torch.library.register_fake("cvops::_loss_stats_backward")
    def _stats_bwd_fake(grad, input, *args):
        return torch.empty_like(input, memory_format=torch.contiguous_format)

    def stats_setup(ctx, inputs, output):
        input, target, alpha = inputs[:3]
        ctx.save_for_backward(input, target, alpha)
        ctx.args = inputs[3:]

    def stats_backward(ctx, grad):
        input, target, alpha = ctx.saved_tensors
        gi = torch.ops.cvops._loss_stats_backward(grad, input, target, alpha, *ctx.args)
        return (gi,) + (None,) * 8

    torch.library.register_autograd("cvops::_loss_stats", stats_backward, setup_context=stats_setup)


if extension.has_ops():
    _register()
