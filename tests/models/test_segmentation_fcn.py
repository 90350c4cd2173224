"""FCN: the paper's VGG-16 FCN-32s/16s/8s (parameter counts, output shapes, bilinear
deconvolutions, the torchvision vgg16 weight conversion) and torchvision's fcn_resnet50/101
(state_dict both ways, outputs with transplanted weights)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.segmentation as tvs

import cvops.models as cm
from cvops.models.segmentation.fcn import bilinear_kernel, bilinear_upsampling

from ._equiv import ATOL, num_params
from ._seg import out_shapes, torchvision_equivalence

# MODELS.md, 21 classes.
VGG_COUNTS = {"fcn32s": 136_152_917, "fcn16s": 134_815_994, "fcn8s": 134_489_759}


@pytest.fixture(scope="module", params=sorted(VGG_COUNTS))
def vgg_fcn(request):
    """Each 135M-parameter model built once (module scope: one alive at a time)."""
    return request.param, cm.get_model(request.param).eval()


def test_vgg_fcn_parameter_count(vgg_fcn):
    name, model = vgg_fcn
    assert num_params(model) == VGG_COUNTS[name]


def test_vgg_fcn_output_is_the_input_size(vgg_fcn):
    _, model = vgg_fcn
    for size in [(1, 1), (37, 50)]:
        assert out_shapes(model, torch.randn(1, 3, *size)) == {"out": (1, 21) + size}


def test_vgg_fcn_structure(vgg_fcn):
    name, model = vgg_fcn
    assert model.backbone[0].padding == (100, 100)
    assert model.head.fc6.kernel_size == (7, 7) and model.head.fc6.out_channels == 4096
    assert model.head.fc7.kernel_size == (1, 1) and model.head.fc7.out_channels == 4096
    ups = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    expected = {
        "fcn32s": {"upscore": 32},
        "fcn16s": {"upscore2": 2, "upscore16": 16},
        "fcn8s": {"upscore2": 2, "upscore_pool4": 2, "upscore8": 8},
    }[name]
    assert {n: m.stride[0] for n, m in ups.items()} == expected
    for m in ups.values():  # learned, no bias, initialised to bilinear
        assert m.bias is None and m.weight.requires_grad
        assert torch.equal(m.weight, bilinear_kernel(21, m.kernel_size[0]))
    skips = {n for n in ("score_pool4", "score_pool3") if hasattr(model, n)}
    assert (
        skips
        == {"fcn32s": set(), "fcn16s": {"score_pool4"}, "fcn8s": {"score_pool4", "score_pool3"}}[
            name
        ]
    )


def test_vgg_fcn_trains(vgg_fcn):
    """Scores start at zero (paper) and get gradients."""
    name, model = vgg_fcn
    if name != "fcn8s":
        pytest.skip("one backward (fcn8s, which has every layer kind) is enough")
    model.train()
    try:
        out = model(torch.randn(1, 3, 32, 32))["out"]
        assert out.abs().max() == 0
        F.cross_entropy(out, torch.randint(0, 21, (1, 32, 32))).backward()
        assert model.head.score_fr.weight.grad.abs().max() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_deconvolution_is_bilinear_upsampling(factor):
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    up = bilinear_upsampling(3, factor).double()
    with torch.no_grad():
        y = up(x)
    h, w = x.shape[-2] * factor, x.shape[-1] * factor
    assert y.shape[-2:] == ((x.shape[-2] + 1) * factor, (x.shape[-1] + 1) * factor)
    y = y[..., factor // 2 : factor // 2 + h, factor // 2 : factor // 2 + w]
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    # Equal away from the borders (interpolate clamps at the edges, the deconvolution sees 0).
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(y[inner], ref[inner], rtol=0, atol=1e-12)
    # Channels are not mixed.
    assert torch.count_nonzero(up.weight[0, 1]) == 0


def test_load_torchvision_vgg16_convolutionalises_the_classifier():
    model = cm.fcn32s().eval()
    vgg = cm.vgg16().eval()  # same keys as torchvision's vgg16 (tested in test_alexnet_vgg)
    model.load_vgg16_state_dict(vgg.state_dict())
    assert torch.equal(model.backbone[28].weight, vgg.features[28].weight)
    pool5 = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        expected = vgg.classifier[:5](pool5.flatten(1))
        actual = model.head[:5](pool5)
    assert actual.shape == (1, 4096, 1, 1)
    torch.testing.assert_close(actual.flatten(1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("aux", [False, True])
def test_fcn_resnet50_matches_torchvision(aux):
    ours, diffs = torchvision_equivalence(tvs.fcn_resnet50, cm.fcn_resnet50, aux, seed=1)
    assert max(diffs.values()) <= ATOL
    assert num_params(ours) == (35_322_218 if aux else 32_957_013)
    expected = {k: (1, 21, 40, 56) for k in diffs}
    assert out_shapes(ours, torch.randn(1, 3, 40, 56)) == expected


def test_fcn_resnet101_state_dict_and_count_match_torchvision():
    with torch.device("meta"):
        ref = tvs.fcn_resnet101(weights=None, weights_backbone=None, aux_loss=True)
        ours = cm.fcn_resnet101(aux_loss=True, num_classes=21)
    assert num_params(ours) == num_params(ref)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)


@pytest.mark.parametrize(
    "builder, kwargs, error, match",
    [
        (cm.fcn_resnet50, {"weights": "DEFAULT"}, ValueError, "weights"),
        (cm.fcn8s, {"weights_backbone": "IMAGENET1K_V1"}, ValueError, "weights_backbone"),
        (cm.fcn_resnet50, {"num_classes": 0}, ValueError, "num_classes"),
        (cm.fcn32s, {"num_classes": 2.0}, TypeError, "num_classes"),
        (cm.fcn_resnet50, {"output_stride": 32}, ValueError, "output_stride"),
    ],
)
def test_fcn_bad_arguments(builder, kwargs, error, match):
    with pytest.raises(error, match=match):
        builder(**kwargs)
