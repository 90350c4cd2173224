"""CLIP against open_clip (the reference, with transplanted weights): parameter counts, strict
loads of the OpenAI-named state dicts, image and text features within 1e-4 for ViT-B/32 and
RN50; the tower details a strict load cannot see (QuickGELU, causal mask, EOT pooling)."""

import pytest
import torch

from cvops.models import get_model, list_models
from cvops.models.vision_language import CLIPTokenizer, clip_rn50, clip_vit_b_32
from tests.models._clip import TINY_CLIP
from tests.models._equiv import ATOL, build_on_meta, num_params, randomize_constants_, transplant

open_clip = pytest.importorskip("open_clip")

TEXTS = ["a photo of a cat", "A diagram, of two DOGS!", "émoji 🐱 and “quotes” " * 3]


@pytest.fixture(scope="module")
def tokens():
    return CLIPTokenizer()(TEXTS)


def reference(name: str):
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    return randomize_constants_(model, seed=1).eval()


@torch.no_grad()
def assert_same_features(ref, ours, image, tokens):
    for ours_fn, ref_fn, x in (
        (ours.encode_image, ref.encode_image, image),
        (ours.encode_text, ref.encode_text, tokens),
    ):
        expected, actual = ref_fn(x), ours_fn(x)
        assert actual.shape == expected.shape
        assert expected.std() > 1e-3  # the comparison can fail
        assert (actual - expected).abs().max().item() < ATOL
    ref_logits, _ = ref.get_logits(image, tokens)
    ours_logits, _ = ours.logits(image, tokens)
    torch.testing.assert_close(ours_logits, ref_logits, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "name, builder, count, batch",
    [
        ("ViT-B-32-quickgelu", clip_vit_b_32, 151_277_313, 2),
        ("RN50-quickgelu", clip_rn50, 102_007_137, 1),
    ],
)
def test_open_clip_weights_give_the_same_features(name, builder, count, batch, tokens):
    ref = reference(name)
    ours = transplant(ref, build_on_meta(builder)).eval()
    assert num_params(ours) == num_params(ref) == count
    image = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    assert_same_features(ref, ours, image, tokens)


def test_parameter_counts_of_the_large_models():
    counts = {n: num_params(build_on_meta(get_model, name=n)) for n in list_models("clip_vit*")}
    # OpenAI's released ViT-B/16 and ViT-L/14 (as open_clip's configs build them)
    assert counts == {
        "clip_vit_b_16": 149_620_737,
        "clip_vit_b_32": 151_277_313,
        "clip_vit_l_14": 427_616_513,
    }


@torch.no_grad()
def test_text_tower_is_causal_and_pools_the_end_token():
    torch.manual_seed(0)
    model = clip_vit_b_32(**TINY_CLIP).eval()
    tokens = CLIPTokenizer()(["a red circle", "a red circle and more words"], 16)
    eot = tokens.argmax(dim=-1)
    assert eot.tolist() == [4, 7] and (tokens.gather(1, eot[:, None]) == 49407).all()
    # causal: changing tokens after the end-of-text token does not change the feature
    changed = tokens.clone()
    changed[0, 5:] = 320  # a token id below the end-of-text id, which stays the argmax
    torch.testing.assert_close(model.encode_text(changed)[0], model.encode_text(tokens)[0])
    # ... while tokens before it do; the first four words are the same, not the features
    features = model.encode_text(tokens)
    assert (features[0] - features[1]).abs().max() > 1e-3
    # shorter sequences than the context work (positions are sliced)
    short = model.encode_text(tokens[:, :9])
    torch.testing.assert_close(short, features)


def test_quick_gelu_is_used_and_switchable():
    from cvops.models.vision_language.clip_blocks import QuickGELU

    quick = clip_vit_b_32(**TINY_CLIP)
    exact = clip_vit_b_32(quick_gelu=False, **TINY_CLIP)
    assert any(isinstance(m, QuickGELU) for m in quick.modules())
    assert not any(isinstance(m, QuickGELU) for m in exact.modules())
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_other_image_sizes_resample_the_positions():
    torch.manual_seed(0)
    model = clip_vit_b_32(**TINY_CLIP).eval()
    with torch.no_grad():
        assert model.encode_image(torch.randn(1, 3, 48, 64)).shape == (1, 32)
    rn = clip_rn50(
        embed_dim=32, vision_width=8, vision_layers=(1, 1, 1, 1), image_size=64, **_TINY_TEXT
    ).eval()
    with torch.no_grad():
        assert rn.encode_image(torch.randn(2, 3, 96, 64)).shape == (2, 32)


_TINY_TEXT = dict(text_width=32, text_heads=2, text_layers=1, context_length=16)


def test_bad_input_raises_clear_errors():
    model = clip_vit_b_32(**TINY_CLIP)
    with pytest.raises(ValueError, match="integer token ids"):
        model.encode_text(torch.randn(2, 16))
    with pytest.raises(ValueError, match="context length 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model.encode_image(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model.encode_image(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown CLIP option"):
        clip_vit_b_32(vision_depth=2)
    with pytest.raises(ValueError, match="multiples of 32"):
        clip_rn50(embed_dim=32, vision_width=8, vision_layers=(1, 1, 1, 1), **_TINY_TEXT)(
            torch.randn(1, 3, 40, 64)
        )


def test_load_clip_reads_plain_and_wrapped_state_dicts(tmp_path):
    from cvops.models.vision_language import load_clip

    torch.manual_seed(0)
    model = clip_vit_b_32(**TINY_CLIP)
    plain, wrapped = tmp_path / "plain.bin", tmp_path / "train.pt"
    torch.save(model.state_dict(), plain)  # open_clip_pytorch_model.bin
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        loaded = load_clip("clip_vit_b_32", str(path), **TINY_CLIP)
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="Missing key"):
        load_clip("clip_vit_b_32", str(plain), **{**TINY_CLIP, "vision_layers": 2})
    with pytest.raises(ValueError, match="--model is needed"):
        load_clip(None, str(plain))


def test_bench_case_checks_the_same_features(monkeypatch):
    """The benchmark case (at batch 1 here) builds both models with the same weights and
    refuses to time them unless their features agree."""
    from cvops.bench.cases import clip as case_module
    from cvops.bench.harness import registered_cases

    monkeypatch.setattr(case_module, "BATCH", 1)
    (case,) = [c for c in registered_cases() if c.op == "clip_vit_b_32"]
    ours, ref = case.make("cpu")
    (image, text), (ref_image, ref_text) = ours(), ref()
    assert image.shape == (1, 512) and text.shape == (1, 512)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=ATOL)
    torch.testing.assert_close(text, ref_text, rtol=0, atol=ATOL)
