"""AlexNet and VGG: equivalence with torchvision (strict state_dict transplant, eval outputs
at 224x224), and a training step."""

import pytest
import torch
import torchvision.models as tvm

import cvops.models as cm

from ._equiv import ATOL, build_on_meta, max_abs_diff, randomize_constants_, transplant

NAMES = ["alexnet"] + ["vgg%d%s" % (d, bn) for d in (11, 13, 16, 19) for bn in ("", "_bn")]
SLOW = {"vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES]
)
def test_equivalent_to_torchvision(name, image):
    ref = randomize_constants_(getattr(tvm, name)(weights=None))
    ours = transplant(ref, build_on_meta(cm.get_model_builder(name)))
    diff, *_ = max_abs_diff(ref, ours, image)
    assert diff <= ATOL


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn"])
def test_training_step(name):
    model = cm.get_model(name, num_classes=5).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    before = model.get_classifier().weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert not torch.equal(before, model.get_classifier().weight)
