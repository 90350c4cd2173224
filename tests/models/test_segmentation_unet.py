"""U-Net: the paper's parameter count and 572 -> 388 geometry, the padded BN variant,
depth/width options, bad arguments."""

import time

import pytest
import torch

import cvops.models as cm

from ._equiv import num_params
from ._seg import out_shapes


def test_paper_parameter_count():
    assert num_params(cm.get_model("unet", in_channels=1, num_classes=2)) == 31_030_658


def test_paper_572_gives_388():
    model = cm.unet()
    assert model.output_size((572, 572)) == (388, 388)
    start = time.perf_counter()
    assert out_shapes(model, torch.randn(1, 1, 572, 572)) == {"out": (1, 2, 388, 388)}
    # ~5 s on the 2-core machine; printed for the record, never asserted.
    print("unet 572x572 forward: %.1f s" % (time.perf_counter() - start))


@pytest.mark.parametrize("size", [(188, 188), (200, 236)])
def test_valid_output_size_matches_forward(size):
    model = cm.unet(base_width=4)
    assert out_shapes(model, torch.randn(1, 1, *size))["out"][-2:] == model.output_size(size)


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 17)])
@pytest.mark.parametrize("depth", [1, 3, 4])
def test_padded_variant_keeps_the_input_size(size, depth):
    model = cm.unet(
        in_channels=3, num_classes=5, depth=depth, base_width=4, padding=True, batch_norm=True
    )
    assert out_shapes(model, torch.randn(2, 3, *size)) == {"out": (2, 5) + size}


def test_padded_variant_has_bn_and_no_conv_bias():
    model = cm.unet(padding=True, batch_norm=True, base_width=8, depth=2)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2 * 5
    assert all(c.bias is None for c in convs[:-1]) and convs[-1].bias is not None
    model.train()
    model(torch.randn(2, 1, 32, 32))["out"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_depth_and_width_set_the_channels():
    model = cm.unet(depth=2, base_width=16)
    assert [b[0].out_channels for b in model.encoder] == [16, 32, 64]
    assert [u.out_channels for u in model.up_convs] == [32, 16]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"depth": 0}, ValueError, "depth"),
        ({"base_width": 0}, ValueError, "base_width"),
        ({"in_channels": "3"}, TypeError, "in_channels"),
        ({"num_classes": 0}, ValueError, "num_classes"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        cm.unet(**kwargs)


def test_bad_inputs():
    model = cm.unet(depth=2, base_width=4)
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 20, 20))
    with pytest.raises(ValueError, match="at least 32 pixels"):
        cm.unet(depth=5, base_width=2, padding=True)(torch.randn(1, 1, 33, 17))
    with pytest.raises(ValueError, match="1, H, W"):
        model(torch.randn(1, 3, 64, 64))
