"""Registry, builder options, parameter counts and the shared classifier interface."""

import pytest
import torch

import cvops
import cvops.models as cm

from ._equiv import build_on_meta, num_params

# MODELS.md: counts of the references (torchvision / timm) at 1000 classes.
PARAM_COUNTS = {
    "alexnet": 61_100_840,
    "googlenet": 13_004_888,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "vit_b_16": 86_567_656,
    "vit_b_32": 88_224_232,  # torchvision vit_b_32's published num_params
    "vit_l_16": 304_326_632,  # torchvision vit_l_16's published num_params
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
}


def test_list_models_has_every_classifier():
    names = cm.list_models()
    assert names == sorted(names)
    assert set(PARAM_COUNTS) <= set(names)
    assert cm.list_models("resnet*") == [
        "resnet101",
        "resnet152",
        "resnet18",
        "resnet34",
        "resnet50",
    ]
    assert cvops.models is cm


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_equal_the_references(name):
    model = build_on_meta(cm.get_model_builder(name))
    assert num_params(model) == PARAM_COUNTS[name]


def test_googlenet_without_aux_count():
    assert num_params(build_on_meta(cm.googlenet, aux_logits=False)) == 6_624_904


def test_get_model_passes_options():
    model = cm.get_model("resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert cm.get_model_builder("resnet18") is cm.resnet18


def test_unknown_model_names_raise_value_error():
    with pytest.raises(ValueError, match="unknown model 'resnet5'.*resnet50"):
        cm.get_model("resnet5")
    with pytest.raises(TypeError, match="model name must be a str"):
        cm.get_model(50)


def test_duplicate_registration_raises():
    def alexnet():  # same name, different function
        return None

    with pytest.raises(ValueError, match="already registered"):
        cm.register_model(alexnet)


def test_builders_are_keyword_only():
    with pytest.raises(TypeError):
        cm.resnet18(10)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"num_classes": -1}, ValueError, "num_classes"),
        ({"num_classes": 2.0}, TypeError, "num_classes"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"dropout": "x"}, TypeError, "dropout"),
    ],
)
def test_bad_options_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cm.alexnet(**kwargs)


# Small inputs keep this cheap; every family goes through the same interface.
INTERFACE = [
    ("alexnet", {}, 64, 256),
    ("vgg11_bn", {}, 32, 512),
    ("googlenet", {}, 64, 1024),
    ("resnet18", {}, 64, 512),
    ("mobilenet_v1", {"alpha": 0.25}, 64, 256),
    ("mobilenet_v2", {"width_mult": 0.5}, 64, 1280),
    ("deit_tiny_distilled_patch16_224", {}, 32, 192),
]


@pytest.mark.parametrize("name, kwargs, size, channels", INTERFACE)
def test_classifier_interface(name, kwargs, size, channels):
    model = cm.get_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
        assert feats.shape[0] == 2
        if feats.dim() == 4:
            assert feats.shape[1] == channels
        else:
            assert feats.shape[-1] == channels
        torch.testing.assert_close(model.forward_head(feats), out)
        assert out.shape == (2, 10)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        assert model.get_classifier().out_features == 10

        model.reset_classifier(3)
        assert model.num_classes == 3
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)  # headless: pooled features
        assert model(x).shape == (2, model.num_features)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-2)
