"""CLIP ViT-B/32: encoding a batch of 32 images (224x224) and 32 texts (77 tokens), cvops
against open_clip's ``ViT-B-32-quickgelu`` carrying the same weights, in the same process.
``make`` first checks that the two give the same features (within 1e-4).

Registered only when open_clip is installed (``pip install open_clip_torch``, listed in
requirements-bench.txt); otherwise importing this module warns that the case is skipped.
"""

import importlib.util
import warnings

import torch

from ..harness import BenchCase, register

BATCH = 32


def _encode_both(model, images, tokens):
    def step():
        with torch.inference_mode():
            return model.encode_image(images), model.encode_text(tokens)

    return step


def _encoding(device):
    import open_clip

    from cvops.models.vision_language import clip_vit_b_32, get_tokenizer

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).to(device).eval()
    ours = clip_vit_b_32().to(device).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 224, 224, generator=g).to(device)
    words = ["cat", "dog", "car", "tree", "boat", "plane", "house", "bird"]
    texts = ["a photo of a %s number %d" % (words[i % 8], i) for i in range(BATCH)]
    tokens = get_tokenizer()(texts).to(device)
    ours_step, ref_step = _encode_both(ours, images, tokens), _encode_both(ref, images, tokens)
    for a, b in zip(ours_step(), ref_step()):
        err = (a - b).abs().max().item()
        if err > 1e-4 * max(1.0, b.abs().max().item()):
            raise RuntimeError("cvops' CLIP and open_clip disagree by %.3g" % err)
    return ours_step, ref_step


if importlib.util.find_spec("open_clip") is not None:
    register(
        BenchCase(
            "clip_vit_b_32",
            "encode %d images 224x224 + %d texts x 77 tokens" % (BATCH, BATCH),
            "float32",
            _encoding,
            "open_clip ViT-B-32-quickgelu, same weights",
        )
    )
else:
    warnings.warn(
        "open_clip is not installed: the CLIP benchmark case is skipped "
        "(pip install open_clip_torch)",
        stacklevel=1,
    )
