"""The symmetric contrastive loss on a hand-computed case, a training step that lowers it,
zero-shot classification on a toy problem with known features, CLIP preprocessing."""

import math

import pytest
import torch
from torch import nn

from cvops.data import SyntheticCaptions
from cvops.models.vision_language import (
    classify,
    clip_contrastive_loss,
    clip_vit_b_32,
    gather_features,
    get_tokenizer,
    preprocess,
    zero_shot_weights,
)
from tests.models._clip import TINY_CLIP


def test_loss_matches_a_hand_computed_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * img @ txt.T = [[2, 1.2], [0, 1.6]]; rows: image->text, columns: text->image
    rows = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(
        math.exp(1.6) / (1 + math.exp(1.6))
    )
    cols = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(
        math.exp(1.6) / (math.exp(1.2) + math.exp(1.6))
    )
    expected = (rows / 2 + cols / 2) / 2
    loss = clip_contrastive_loss(img, txt, torch.tensor(2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # swapping the roles of images and texts gives the same symmetric loss
    assert clip_contrastive_loss(txt, img, torch.tensor(2.0)).item() == pytest.approx(expected)


def test_loss_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        clip_contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        clip_contrastive_loss(torch.randn(2, 4), torch.randn(2, 4), torch.ones(2))


def test_gather_without_process_group_is_the_identity():
    x = torch.randn(3, 4, requires_grad=True)
    (y,) = gather_features(x)
    assert y is x


def test_a_train_step_reduces_the_loss():
    torch.manual_seed(0)
    model = clip_vit_b_32(**TINY_CLIP)
    data = SyntheticCaptions(16, 32)
    images = torch.stack([data[i][0] for i in range(16)])
    tokens = get_tokenizer()([data[i][1] for i in range(16)], 16)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss_now():
        img, txt, scale = model(images, tokens)
        return clip_contrastive_loss(img, txt, scale)

    first = loss_now()
    assert first.item() == pytest.approx(math.log(16), rel=0.15)  # near chance at init
    for _ in range(5):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    assert loss_now().item() < 0.9 * first.item()


class _ToyCLIP(nn.Module):
    """Known features: a text's feature is the count of each of 3 "colour" tokens; an image
    [N, 3, 1, 1] is its own 3-d feature. Zero-shot must then pick the dominant channel."""

    context_length = 8

    def __init__(self, tokenizer):
        super().__init__()
        self.words = [tokenizer.encode(w)[0] for w in ("red", "green", "blue")]
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_text(self, tokens, normalize=False):
        f = torch.stack([(tokens == w).sum(1).float() for w in self.words], 1) + 1e-3
        return nn.functional.normalize(f, dim=-1) if normalize else f

    def encode_image(self, images, normalize=False):
        f = images.flatten(1)
        return nn.functional.normalize(f, dim=-1) if normalize else f


def test_zero_shot_classification_on_a_toy_problem():
    tok = get_tokenizer()
    model = _ToyCLIP(tok)
    names = ["red", "green", "blue"]
    weights = zero_shot_weights(model, tok, names, ["a {} thing", "{}"])
    torch.testing.assert_close(weights, torch.eye(3), atol=1e-3, rtol=0)
    images = torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.1, 0.1], [0.0, 0.3, 0.7]])[:, :, None, None]
    probs = classify(model, tok, images, names, ["a photo of a {}."])
    assert probs.argmax(1).tolist() == [1, 0, 2]
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    # the probabilities are softmax(10 * cosine similarity)
    cos = nn.functional.normalize(images.flatten(1), dim=-1)
    torch.testing.assert_close(probs, (10 * cos).softmax(1), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="has no"):
        zero_shot_weights(model, tok, names, ["a photo"])


def test_preprocess_resizes_crops_and_normalises():
    image = torch.full((3, 40, 80), 0.5)
    x = preprocess(image, 32)
    assert x.shape == (3, 32, 32)
    expected = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    torch.testing.assert_close(x.mean((1, 2)), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="RGB"):
        preprocess(torch.rand(1, 8, 8), 32)
