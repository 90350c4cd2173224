"""DeepLab v1 (LargeFOV), v2 (ASPP-L, VGG-16 and ResNet-101), v3 (torchvision's, output
stride 8 and 16; on the cvops MobileNetV2)."""

import pytest
import torch
import torchvision.models.segmentation as tvs

import cvops.models as cm
from cvops.models._conv_bn import is_depthwise
from cvops.models.segmentation.deeplab import ASPPSum

from ._equiv import ATOL, build_on_meta, num_params, randomize_constants_
from ._seg import out_shapes, torchvision_equivalence

SIZES = [(64, 64), (50, 37)]


def test_deeplabv1_largefov_structure_and_count():
    model = cm.deeplabv1_largefov()
    # VGG-16 trunk 14,714,688 + fc6 (3x3, 512 -> 1024) + fc7 (1024) + fc8 (21).
    assert num_params(model) == 14_714_688 + 4_719_616 + 1_049_600 + 21_525 == 20_505_429
    fc6 = model.classifier.fc6
    assert (fc6.kernel_size, fc6.dilation, fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert [model.backbone[i].dilation for i in (24, 26, 28)] == [(2, 2)] * 3
    assert [model.backbone[i].stride for i in (4, 9, 16, 23, 30)] == [2, 2, 2, 1, 1]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model.backbone(x).shape[-2:] == (8, 8)  # output stride 8
    for size in SIZES:
        assert out_shapes(model, torch.randn(1, 3, *size)) == {"out": (1, 21) + size}


@pytest.mark.parametrize("backbone, count", [("vgg16", 37_877_652), ("resnet101", 44_048_532)])
def test_deeplabv2_sums_the_branch_logits(backbone, count):
    model = cm.deeplabv2(backbone=backbone, num_classes=5).eval()
    model_21 = build_on_meta(cm.deeplabv2, backbone=backbone)
    # VGG: trunk + 4 x (fc6 rate r + fc7 + fc8); ResNet-101 without fc + 4 x 3x3 2048 -> 21.
    assert num_params(model_21) == count
    assert isinstance(model.classifier, ASPPSum) and len(model.classifier.branches) == 4
    dilations = [
        next(m for m in b.modules() if isinstance(m, torch.nn.Conv2d)).dilation[0]
        for b in model.classifier.branches
    ]
    assert dilations == [6, 12, 18, 24]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.backbone(x)
        feats = feats["out"] if isinstance(feats, dict) else feats
        assert feats.shape[-2:] == (4, 4)
        summed = sum(branch(feats) for branch in model.classifier.branches)
        torch.testing.assert_close(model.classifier(feats), summed, rtol=0, atol=0)
    assert out_shapes(model, torch.randn(1, 3, 50, 37)) == {"out": (1, 5, 50, 37)}


def test_deeplab_vgg_loads_decimated_vgg16_weights():
    model = cm.deeplabv2(backbone="vgg16")
    vgg = cm.vgg16()  # torchvision's keys
    state = vgg.state_dict()
    model.load_vgg16_state_dict(state)
    w6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
    for branch in model.classifier.branches:
        assert torch.equal(branch.fc6.weight, w6)
        assert torch.equal(branch.fc7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
    assert torch.equal(model.backbone[0].weight, state["features.0.weight"])
    v1 = cm.deeplabv1_largefov()
    v1.load_vgg16_state_dict(state)
    assert torch.equal(v1.classifier.fc6.weight, w6)


@pytest.mark.parametrize("aux", [False, True])
def test_deeplabv3_resnet50_matches_torchvision(aux):
    ours, diffs = torchvision_equivalence(
        tvs.deeplabv3_resnet50, cm.deeplabv3_resnet50, aux, seed=2
    )
    assert max(diffs.values()) <= ATOL
    assert num_params(ours) == (42_004_074 if aux else 39_638_869)
    assert out_shapes(ours, torch.randn(1, 3, 50, 37)) == {k: (1, 21, 50, 37) for k in diffs}


def test_deeplabv3_resnet101_state_dict_and_count_match_torchvision():
    with torch.device("meta"):
        ref = tvs.deeplabv3_resnet101(weights=None, weights_backbone=None, aux_loss=True)
        ours = cm.deeplabv3_resnet101(aux_loss=True)
    assert num_params(ours) == num_params(ref)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)


@pytest.mark.parametrize("output_stride, rates", [(8, [12, 24, 36]), (16, [6, 12, 18])])
def test_deeplabv3_output_stride(output_stride, rates):
    model = cm.deeplabv3_resnet50(output_stride=output_stride, num_classes=3).eval()
    aspp = model.classifier[0]
    assert [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == rates
    assert model.backbone.layer4[0].conv2.stride == (1, 1)
    assert model.backbone.layer3[0].conv2.stride == ((1, 1) if output_stride == 8 else (2, 2))
    assert out_shapes(model, torch.randn(1, 3, 64, 64)) == {"out": (1, 3, 64, 64)}
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 64))["out"]
    assert feats.shape == (1, 2048, 64 // output_stride, 64 // output_stride)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3_mobilenet_v2(output_stride):
    model = cm.deeplabv3_mobilenet_v2(output_stride=output_stride, aux_loss=True).eval()
    depthwise = [m for m in model.backbone.modules() if is_depthwise(m)]
    assert len(depthwise) == 17  # every depthwise conv is cvops's
    assert not any(
        isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in model.backbone.modules()
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
    assert feats["out"].shape == (1, 320, 64 // output_stride, 64 // output_stride)
    assert feats["aux"].shape == (1, 32, 8, 8)
    assert [model.classifier[0].convs[i][0].dilation[0] for i in (1, 2, 3)] == (
        [12, 24, 36] if output_stride == 8 else [6, 12, 18]
    )
    for size in SIZES:
        assert out_shapes(model, torch.randn(1, 3, *size)) == {
            "out": (1, 21) + size,
            "aux": (1, 21) + size,
        }


def test_dilated_mobilenet_v2_equals_grouped_conv_reference():
    """The dilated cvops depthwise convs compute what nn.Conv2d(groups=C) with the same
    stride/dilation/padding computes (checks the in-place dilation)."""
    model = cm.deeplabv3_mobilenet_v2(output_stride=8).eval()
    randomize_constants_(model)
    ref = cm.deeplabv3_mobilenet_v2(output_stride=8).eval()
    ref.load_state_dict(model.state_dict())
    for name, m in list(ref.backbone.named_modules()):
        if is_depthwise(m):
            conv = torch.nn.Conv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                groups=m.groups,
                bias=m.bias is not None,
            )
            conv.load_state_dict(m.state_dict())
            parent = ref.backbone.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], conv)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (ref(x)["out"] - model(x)["out"]).abs().max().item()
    assert diff <= ATOL


@pytest.mark.parametrize(
    "builder, kwargs, error, match",
    [
        (cm.deeplabv3_resnet50, {"output_stride": 32}, ValueError, "output_stride"),
        (cm.deeplabv3_mobilenet_v2, {"output_stride": 4}, ValueError, "output_stride"),
        (cm.deeplabv2, {"backbone": "resnet50x"}, ValueError, "backbone"),
        (cm.deeplabv3_resnet50, {"weights": "DEFAULT"}, ValueError, "weights"),
        (cm.deeplabv1_largefov, {"weights_backbone": "X"}, ValueError, "weights_backbone"),
        (cm.deeplabv2, {"num_classes": 0}, ValueError, "num_classes"),
        (cm.deeplabv3_resnet101, {"aux": True}, TypeError, "aux"),
    ],
)
def test_deeplab_bad_arguments(builder, kwargs, error, match):
    with pytest.raises(error, match=match):
        builder(**kwargs)
