"""GoogLeNet: equivalence with torchvision (with and without aux heads, transform_input),
aux outputs in training, the 0.3-weighted loss, a training step."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm

import cvops.models as cm
from cvops.models.classification.googlenet import AUX_LOSS_WEIGHT, GoogLeNetOutputs

from ._equiv import ATOL, build_on_meta, max_abs_diff, randomize_constants_, transplant


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "aux_logits, transform_input", [(True, False), (False, False), (True, True)]
)
def test_equivalent_to_torchvision(aux_logits, transform_input, image):
    ref = tvm.googlenet(
        weights=None, aux_logits=aux_logits, transform_input=transform_input, init_weights=True
    )
    randomize_constants_(ref)
    ours = build_on_meta(cm.googlenet, aux_logits=aux_logits, transform_input=transform_input)
    transplant(ref, ours)
    diff, *_ = max_abs_diff(ref, ours, image)
    assert diff <= ATOL


def test_training_returns_aux_outputs_and_eval_drops_them():
    model = cm.googlenet(num_classes=4).train()
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([0, 3])
    out = model(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert out.logits.shape == out.aux_logits1.shape == out.aux_logits2.shape == (2, 4)

    loss = cm.googlenet_loss(out, y)
    expected = F.cross_entropy(out.logits, y) + 0.3 * (
        F.cross_entropy(out.aux_logits1, y) + F.cross_entropy(out.aux_logits2, y)
    )
    assert AUX_LOSS_WEIGHT == 0.3
    torch.testing.assert_close(loss, expected)

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.aux1.fc2.weight.detach().clone()
    loss.backward()
    assert model.aux1.fc2.weight.grad is not None and model.aux2.fc2.weight.grad is not None
    opt.step()
    assert not torch.equal(before, model.aux1.fc2.weight)

    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 4)
    torch.testing.assert_close(cm.googlenet_loss(logits, y), F.cross_entropy(logits, y))


def test_without_aux_has_no_aux_modules():
    model = cm.googlenet(aux_logits=False).train()
    assert model.aux1 is None and model.aux2 is None
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor)


def test_reset_classifier_resets_aux_heads():
    model = cm.googlenet()
    model.reset_classifier(7)
    assert model.fc.out_features == model.aux1.fc2.out_features == model.aux2.fc2.out_features == 7
