"""ViT: equivalence with torchvision (B/16, B/32, L/16), with timm through the documented
converter, position-embedding interpolation for other input sizes, a training step."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm

import cvops.models as cm
from cvops.models.classification.vit import VisionTransformer

from ._equiv import ATOL, build_on_meta, max_abs_diff, randomize_constants_, transplant


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize(
    "name", ["vit_b_16", "vit_b_32", pytest.param("vit_l_16", marks=pytest.mark.slow)]
)
def test_equivalent_to_torchvision(name, image):
    ref = randomize_constants_(getattr(tvm, name)(weights=None))
    ours = transplant(ref, build_on_meta(cm.get_model_builder(name)))
    diff, *_ = max_abs_diff(ref, ours, image)
    assert diff <= ATOL


@pytest.fixture(scope="module")
def timm_vit_and_ours():
    timm = pytest.importorskip("timm")
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, dynamic_img_size=True)
    randomize_constants_(ref)
    ours = build_on_meta(cm.vit_b_16)
    sd = cm.convert_timm_vit_state_dict(ref.state_dict())
    ours.load_state_dict(sd, strict=True, assign=True)
    return ref, ours


def test_timm_checkpoint_converter(timm_vit_and_ours, image):
    ref, ours = timm_vit_and_ours
    diff, *_ = max_abs_diff(ref, ours, image)
    assert diff <= ATOL


def test_position_embedding_interpolation_matches_timm(timm_vit_and_ours):
    ref, ours = timm_vit_and_ours
    x = torch.randn(1, 3, 160, 256)  # a 10x16 patch grid
    diff, *_ = max_abs_diff(ref, ours, x)
    assert diff <= ATOL
    with torch.no_grad():
        assert ours.forward_features(x).shape == (1, 1 + 10 * 16, 768)


def test_converter_rejects_unknown_keys():
    with pytest.raises(ValueError, match="reg_token"):
        cm.convert_timm_vit_state_dict({"reg_token": torch.zeros(1, 4, 8)})


def tiny_vit(**kwargs):
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, **kwargs
    )


def test_input_size_must_be_a_multiple_of_the_patch():
    model = tiny_vit(num_classes=3).eval()
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="must be \\[N, C, H, W\\]"):
        model(torch.randn(3, 32, 32))
    assert model(torch.randn(1, 3, 48, 24)).shape == (1, 3)


def test_training_step():
    model = tiny_vit(num_classes=3, dropout=0.1, attention_dropout=0.1).train()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    before = model.encoder.pos_embedding.detach().clone()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.encoder.pos_embedding)
