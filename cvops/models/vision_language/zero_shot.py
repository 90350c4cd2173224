"""Zero-shot classification with CLIP: each class name is written into prompt templates
("a photo of a {}."), the normalised text features of a class's prompts are averaged (and
normalised again) into the class's weight, and an image's class probabilities are the softmax
of ``logit_scale * image_feature @ weights.T`` (Radford et al. 2021, prompt ensembling).
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .clip import CLIP_MEAN, CLIP_STD

# A few of the prompt templates OpenAI used for ImageNet; any "{}" template works.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
    "itap of a {}.",
)


def _check_templates(templates: Sequence[str]) -> None:
    if isinstance(templates, str) or not templates:
        raise ValueError("templates must be a non-empty sequence of strings with '{}'")
    for t in templates:
        if "{}" not in t:
            raise ValueError("template %r has no '{}' for the class name" % (t,))


@torch.no_grad()
def zero_shot_weights(
    model,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> Tensor:
    """``[C, E]`` unit-norm class weights: the mean of each class's normalised prompt
    features, normalised."""
    if isinstance(classnames, str) or not classnames:
        raise ValueError("classnames must be a non-empty sequence of names")
    _check_templates(templates)
    device = next(model.parameters()).device
    weights = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates], model.context_length)
        features = model.encode_text(tokens.to(device), normalize=True)
        weights.append(F.normalize(features.mean(dim=0), dim=-1))
    return torch.stack(weights)


@torch.no_grad()
def zero_shot_logits(model, images: Tensor, weights: Tensor) -> Tensor:
    """``[N, C]`` logits of normalised ``images`` ``[N, 3, H, W]`` against class ``weights``."""
    features = model.encode_image(images, normalize=True)
    return model.logit_scale.exp() * features @ weights.t().to(features.dtype)


def preprocess(image: Tensor, size: int) -> Tensor:
    """CLIP's preprocessing of an RGB ``image`` ``[3, H, W]`` in [0, 1]: resize the short side
    to ``size`` (bicubic, antialiased), centre crop ``size x size``, normalise with OpenAI's
    mean and std. Returns ``[3, size, size]``."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("image must be RGB [3, H, W], got shape %s" % (tuple(image.shape),))
    h, w = image.shape[1:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(
        image[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False
    )[0].clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def classify(
    model,
    tokenizer,
    images: Tensor,
    classnames: Sequence[str],
    templates: Optional[Sequence[str]] = None,
) -> Tensor:
    """``[N, C]`` class probabilities of preprocessed ``images`` ``[N, 3, H, W]``."""
    weights = zero_shot_weights(model, tokenizer, classnames, templates or DEFAULT_TEMPLATES)
    return zero_shot_logits(model, images, weights).softmax(dim=-1)
