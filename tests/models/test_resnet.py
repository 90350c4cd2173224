"""ResNet: equivalence with torchvision, dilation (output stride 8), zero_init_residual,
a training step."""

import pytest
import torch
import torchvision.models as tvm

import cvops.models as cm
from cvops.models.classification.resnet import BasicBlock, Bottleneck

from ._equiv import (
    ATOL,
    build_on_meta,
    max_abs_diff,
    randomize_constants_,
    rounding_tolerance,
    transplant,
)


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        pytest.param("resnet152", marks=pytest.mark.slow),
    ],
)
def test_equivalent_to_torchvision(name, image):
    ref = randomize_constants_(getattr(tvm, name)(weights=None))
    ours = transplant(ref, build_on_meta(cm.get_model_builder(name)))
    diff, expected, actual = max_abs_diff(ref, ours, image)
    assert diff <= ATOL or diff <= rounding_tolerance(ref, image, expected, actual)


def test_dilated_resnet50_matches_torchvision_at_output_stride_8(image):
    dil = [False, True, True]
    ref = randomize_constants_(tvm.resnet50(weights=None, replace_stride_with_dilation=dil))
    ours = transplant(ref, build_on_meta(cm.resnet50, replace_stride_with_dilation=dil))
    diff, expected, actual = max_abs_diff(ref, ours, image)
    assert diff <= ATOL or diff <= rounding_tolerance(ref, image, expected, actual)
    with torch.no_grad():
        assert ours.forward_features(image).shape == (1, 2048, 28, 28)
    assert ours.layer4[1].conv2.dilation == (4, 4)


def test_replace_stride_with_dilation_validation():
    with pytest.raises(ValueError, match="replace_stride_with_dilation"):
        cm.resnet50(replace_stride_with_dilation=[True])
    with pytest.raises(ValueError, match="dilation"):
        BasicBlock(64, 64, dilation=2)


def test_zero_init_residual():
    model = cm.resnet50(zero_init_residual=True)
    assert all(m.bn3.weight.abs().sum() == 0 for m in model.modules() if isinstance(m, Bottleneck))
    model = cm.resnet18(zero_init_residual=True)
    assert all(m.bn2.weight.abs().sum() == 0 for m in model.modules() if isinstance(m, BasicBlock))
    # Each block then starts as the identity (plus ReLU) in eval mode.
    block = model.layer1[0].eval()
    x = torch.rand(1, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_training_step():
    model = cm.resnet18(num_classes=3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    before = model.conv1.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.conv1.weight)
