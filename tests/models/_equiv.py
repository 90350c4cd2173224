"""Helpers for the model equivalence tests: build a reference with random weights, make
every parameter and buffer non-trivial, transplant its state_dict into a cvops model with
strict=True, compare eval outputs."""

import copy

import torch
from torch import nn

ATOL = 1e-4  # the bound on max |cvops - reference| in float32


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def randomize_constants_(model: nn.Module, seed: int = 0, bn_scale=(0.6, 1.4)) -> nn.Module:
    """Give random values to everything a random init leaves constant (BN/LN affine and
    running statistics, zero-initialised heads, biases and tokens), so a transplanted model
    that misplaces any of them disagrees with the reference.

    BN running variances are small (0.002..0.02) with the BN weight scaled to compensate
    (effective scale ``bn_scale``): a wrong BN eps then changes each layer's output by
    several percent instead of hiding below the tolerance."""
    g = torch.Generator().manual_seed(seed)

    def rand_like(t, lo, hi):
        return torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.running_var is not None:
            var = rand_like(module.running_var, 0.002, 0.02)
            module.running_var.copy_(var)
            module.running_mean.copy_(rand_like(module.running_mean, -0.2, 0.2))
            if module.weight is not None:
                scale = rand_like(module.weight, *bn_scale)
                module.weight.copy_(scale * torch.sqrt(var + module.eps))
                module.bias.copy_(rand_like(module.bias, -0.2, 0.2))
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) and module.weight is not None:
            module.weight.copy_(rand_like(module.weight, 0.6, 1.4))
            module.bias.copy_(rand_like(module.bias, -0.2, 0.2))
    for name, p in model.named_parameters():
        if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):  # constant tensor
            scale = 0.02 if p.dim() > 1 or "token" in name or "pos" in name else 0.05
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def build_on_meta(builder, **kwargs) -> nn.Module:
    """The cvops model built without memory (the real tensors come from the state_dict)."""
    with torch.device("meta"):
        return builder(**kwargs)


def transplant(reference: nn.Module, ours: nn.Module) -> nn.Module:
    """Load the reference's state_dict into ``ours`` with strict=True (assigning tensors, so
    a model built on the meta device becomes a real one)."""
    state = {k: v.clone() for k, v in reference.state_dict().items()}  # no shared storage
    result = ours.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours


@torch.no_grad()
def max_abs_diff(reference: nn.Module, ours: nn.Module, x: torch.Tensor):
    reference.eval()
    ours.eval()
    expected = reference(x)
    actual = ours(x)
    assert actual.shape == expected.shape
    # The comparison must be able to fail: outputs that are (near) constant would not.
    assert expected.std().item() > 1e-3, "reference output is degenerate"
    return (actual - expected).abs().max().item(), expected, actual


def _outputs(out):
    return list(out.values()) if isinstance(out, dict) else [out]


@torch.no_grad()
def rounding_tolerance(reference: nn.Module, x: torch.Tensor, expected, actual, factor=4.0):
    """The bound for a model that computes the reference's function with other float32
    rounding: both sides' float32 error against the reference's float64 run on ``x``, summed
    (two results within e1 and e2 of the exact one are within e1 + e2 of each other), after
    checking that ours is within ``factor`` x the reference's own (or ATOL). cvops folds
    BatchNorm into the convs and, at CPU inference, runs oneDNN's channels-last convolutions
    with the add and ReLU fused (models/_fused_layers.py), whose rms error measured ~2.3x the
    NCHW path's; deep random-weight nets amplify each layer's few ulp far beyond ATOL
    (resnet101's logits are ~7e5 here and torchvision's own float32 error is 0.39). A wrong
    weight, eps or layer order misses by orders of magnitude."""
    exact = _outputs(copy.deepcopy(reference).double().eval()(x.double()))

    def error(out):
        return max((o.double() - t).abs().max().item() for o, t in zip(_outputs(out), exact))

    ref_err, our_err = error(expected), error(actual)
    assert our_err <= max(ATOL, factor * ref_err), (our_err, ref_err)
    return max(ATOL, ref_err + our_err)
