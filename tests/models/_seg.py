"""Helpers for the segmentation model tests."""

import torch
from torch import nn

from ._equiv import build_on_meta, num_params, randomize_constants_, transplant


@torch.no_grad()
def dict_diffs(reference: nn.Module, ours: nn.Module, x: torch.Tensor):
    """Max abs difference per output key, both models in eval mode, one forward each."""
    reference.eval()
    ours.eval()
    expected, actual = reference(x), ours(x)
    assert list(actual) == list(expected)
    diffs = {}
    for k, e in expected.items():
        assert actual[k].shape == e.shape
        assert e.std().item() > 1e-3, "reference output %r is degenerate" % k
        diffs[k] = (actual[k] - e).abs().max().item()
    return diffs


@torch.no_grad()
def out_shapes(model: nn.Module, x: torch.Tensor):
    model.eval()
    return {k: tuple(v.shape) for k, v in model(x).items()}


def torchvision_equivalence(tv_builder, our_builder, aux: bool, seed: int):
    """Build torchvision's model with random (non-trivial) weights, transplant it into ours
    (strict, and back), and return (our model, {output key: max abs diff}) on a 64x64 input."""
    ref = tv_builder(weights=None, weights_backbone=None, aux_loss=aux)
    randomize_constants_(ref)
    ours = transplant(ref, build_on_meta(our_builder, aux_loss=aux))
    ref.load_state_dict(ours.state_dict(), strict=True)  # and back
    assert num_params(ours) == num_params(ref)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    diffs = dict_diffs(ref, ours, x)
    assert set(diffs) == ({"out", "aux"} if aux else {"out"})
    print("%s aux=%s max abs diff %s" % (our_builder.__name__, aux, diffs))
    return ours, diffs
