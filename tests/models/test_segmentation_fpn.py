"""FeaturePyramidNetwork and resnet_fpn_backbone against torchvision's (state_dict both ways,
outputs with transplanted weights, frozen layers, extra blocks)."""

from collections import OrderedDict

import pytest
import torch
import torchvision.ops as tvops
from torchvision.models.detection import backbone_utils as tvbu
from torchvision.ops import feature_pyramid_network as tvfpn

from cvops.models.segmentation import (
    FeaturePyramidNetwork,
    FrozenBatchNorm2d,
    LastLevelMaxPool,
    LastLevelP6P7,
    resnet_fpn_backbone,
)
from cvops.models.segmentation import fpn as cvfpn

from ._equiv import ATOL, num_params, randomize_constants_, rounding_tolerance
from ._seg import dict_diffs


@torch.no_grad()
def randomize_frozen_bn_(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m).__name__ == "FrozenBatchNorm2d":
            n = m.weight.numel()
            var = torch.rand(n, generator=g) * 0.018 + 0.002
            m.running_var.copy_(var)
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.weight.copy_((torch.rand(n, generator=g) * 0.8 + 0.6) * (var + 1e-5).sqrt())
            m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def pyramid(channels=(8, 16, 32), size=(33, 31)):
    g = torch.Generator().manual_seed(4)
    h, w = size
    feats = OrderedDict()
    for i, c in enumerate(channels):
        feats["feat%d" % i] = torch.randn(2, c, h, w, generator=g)
        h, w = (h + 1) // 2, (w + 1) // 2
    return feats


@pytest.mark.parametrize("extra", ["maxpool", "p6p7_from_p5", "p6p7_from_c5", None], ids=str)
@pytest.mark.parametrize("norm", [None, torch.nn.BatchNorm2d], ids=["no_norm", "bn"])
def test_fpn_matches_torchvision(extra, norm):
    def blocks(mod):
        return {
            "maxpool": lambda: mod.LastLevelMaxPool(),
            "p6p7_from_p5": lambda: mod.LastLevelP6P7(16, 16),
            "p6p7_from_c5": lambda: mod.LastLevelP6P7(32, 16),
            None: lambda: None,
        }[extra]()

    ref = tvops.FeaturePyramidNetwork([8, 16, 32], 16, blocks(tvfpn), norm_layer=norm)
    randomize_constants_(ref)
    ours = FeaturePyramidNetwork(
        [8, 16, 32],
        16,
        blocks(cvfpn),
        norm_layer=norm,
    )
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert num_params(ours) == num_params(ref)
    diffs = dict_diffs(ref, ours, pyramid())
    assert max(diffs.values()) <= ATOL
    names = {"maxpool": ["pool"], "p6p7_from_p5": ["p6", "p7"], "p6p7_from_c5": ["p6", "p7"]}
    assert list(diffs) == ["feat0", "feat1", "feat2"] + names.get(extra, [])


def test_fpn_loads_version_1_checkpoints():
    ours = FeaturePyramidNetwork([8, 16], 16)
    old = {k.replace(".0.", "."): v.clone() for k, v in ours.state_dict().items()}
    fresh = FeaturePyramidNetwork([8, 16], 16)
    fresh.load_state_dict(old, strict=True)
    assert torch.equal(fresh.inner_blocks[1][0].weight, ours.inner_blocks[1][0].weight)


@pytest.mark.parametrize(
    "name, norm, kwargs",
    [
        ("resnet50", None, {}),
        ("resnet18", torch.nn.BatchNorm2d, {"trainable_layers": 5}),
        ("resnet50", None, {"returned_layers": [2, 3, 4], "trainable_layers": 0}),
    ],
)
def test_resnet_fpn_backbone_matches_torchvision(name, norm, kwargs):
    norm_kw = {} if norm is None else {"norm_layer": norm}
    extra = {}
    if "returned_layers" in kwargs:  # RetinaNet's configuration
        extra = {
            "ref": {"extra_blocks": tvfpn.LastLevelP6P7(2048, 256)},
            "ours": {"extra_blocks": LastLevelP6P7(2048, 256)},
        }
    ref = tvbu.resnet_fpn_backbone(
        backbone_name=name, weights=None, **norm_kw, **kwargs, **extra.get("ref", {})
    )
    randomize_frozen_bn_(randomize_constants_(ref))
    ours = resnet_fpn_backbone(backbone_name=name, **norm_kw, **kwargs, **extra.get("ours", {}))
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert ours.out_channels == ref.out_channels == 256
    assert num_params(ours) == num_params(ref)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in ref.named_parameters() if p.requires_grad]
    if norm is None:
        assert isinstance(ours.body.bn1, FrozenBatchNorm2d)
    x = torch.randn(1, 3, 64, 64)
    diffs = dict_diffs(ref, ours, x)
    print("resnet_fpn_backbone %s %s max abs diff %s" % (name, kwargs, diffs))
    with torch.no_grad():
        diff = max(diffs.values())
        assert diff <= ATOL or diff <= rounding_tolerance(ref, x, ref(x), ours(x))
    assert isinstance(ours.fpn.extra_blocks, (LastLevelMaxPool, LastLevelP6P7))


def test_frozen_batch_norm_matches_torchvision_and_loads_batch_norm_state():
    bn = randomize_constants_(torch.nn.BatchNorm2d(6)).eval()
    ours, ref = FrozenBatchNorm2d(6), tvops.FrozenBatchNorm2d(6)
    ours.load_state_dict(bn.state_dict(), strict=True)  # num_batches_tracked dropped
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), bn(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    assert not list(ours.parameters())


def test_fpn_bad_arguments():
    with pytest.raises(ValueError, match="in_channels_list"):
        FeaturePyramidNetwork([8, 0], 16)
    with pytest.raises(ValueError, match="in_channels_list"):
        FeaturePyramidNetwork([], 16)
    with pytest.raises(TypeError, match="extra_blocks"):
        FeaturePyramidNetwork([8], 16, extra_blocks="pool")
    with pytest.raises(ValueError, match="levels"):
        FeaturePyramidNetwork([8, 16], 16)(pyramid((8,)))
    with pytest.raises(ValueError, match="backbone_name"):
        resnet_fpn_backbone(backbone_name="resnext50_32x4d")
    with pytest.raises(ValueError, match="trainable_layers"):
        resnet_fpn_backbone(backbone_name="resnet18", trainable_layers=6)
    with pytest.raises(ValueError, match="returned_layers"):
        resnet_fpn_backbone(backbone_name="resnet18", returned_layers=[0, 1])
    with pytest.raises(ValueError, match="weights"):
        resnet_fpn_backbone(backbone_name="resnet18", weights="DEFAULT")
