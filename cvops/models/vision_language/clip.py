"""CLIP (Radford et al. 2021): an image tower and a causal text transformer, each projected to a
shared embedding space, with a learned logit scale. Parameter names are OpenAI's (and
open_clip's), so their checkpoints load with ``strict=True``:

* image (ViT): ``visual.conv1`` (no bias), ``visual.class_embedding`` ``[W]``,
  ``visual.positional_embedding`` ``[1 + grid^2, W]``, ``visual.ln_pre``,
  ``visual.transformer.resblocks.{i}.*``, ``visual.ln_post``, ``visual.proj`` ``[W, E]``;
  (ResNet): see :mod:`.clip_resnet`;
* text: ``token_embedding``, ``positional_embedding`` ``[context, W]``,
  ``transformer.resblocks.{i}.*``, ``ln_final``, ``text_projection`` ``[W, E]``;
* ``logit_scale`` (a scalar, ``log(1/0.07)`` at init).

The text feature is the final-LayerNorm output at the end-of-text token, found as the argmax of
the token ids (the end-of-text id, 49407, is the largest in CLIP's vocabulary).
"""

import dataclasses
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_model
from ..classification.vit import check_patch_geometry, patch_grid, resample_pos_embed
from .clip_blocks import QuickGELU, Transformer
from .clip_resnet import ModifiedResNet

# OpenAI's image normalisation (RGB in [0, 1])
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPVisionTransformer(nn.Module):
    """ViT image tower: patches + class token + learned positions, ``ln_pre``, pre-norm blocks,
    ``ln_post`` on the class token, projection ``proj``. Other input sizes (multiples of the
    patch size) get the patch-grid position embedding resampled (bicubic, antialiased)."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        act=QuickGELU,
    ):
        super().__init__()
        check_patch_geometry(image_size, patch_size)
        self.image_size, self.patch_size, self.output_dim = image_size, patch_size, output_dim
        self.grid_size = (image_size // patch_size,) * 2
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1, width)
        )
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act=act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.transformer.init_openai_()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.shape[1] != 3:
            raise ValueError("image must be [N, 3, H, W], got shape %s" % (tuple(x.shape),))
        grid = patch_grid(x, self.patch_size)
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resample_pos_embed(self.positional_embedding[None], grid, self.grid_size, 1)
        x = self.ln_pre(x + pos.to(x.dtype))
        x = self.ln_post(self.transformer(x)[:, 0])
        return x @ self.proj


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """A CLIP architecture. ``vision_layers``: an int (ViT depth) or 4 stage depths (ResNet;
    then ``vision_width`` is the ResNet base width and ``vision_patch_size`` is unused)."""

    embed_dim: int = 512
    image_size: int = 224
    vision_layers: Union[int, Tuple[int, int, int, int]] = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    vision_head_width: int = 64
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    quick_gelu: bool = True  # OpenAI's weights were trained with QuickGELU

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.vision_layers, (tuple, list))


class CLIP(nn.Module):
    """The two towers, their projections and the logit scale.

    ``encode_image(images)`` ``[N, 3, H, W]`` (normalised with :data:`CLIP_MEAN`/``STD``) and
    ``encode_text(tokens)`` ``[M, L]`` (``L <= context_length``, from
    :class:`~cvops.models.vision_language.CLIPTokenizer`) give ``[N, E]``/``[M, E]`` features;
    ``forward(images, tokens)`` gives both L2-normalised and ``logit_scale.exp()``.
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        act = QuickGELU if config.quick_gelu else nn.GELU
        if config.is_resnet:
            heads = config.vision_width * 32 // config.vision_head_width
            self.visual = ModifiedResNet(
                config.vision_layers,
                config.embed_dim,
                heads,
                config.image_size,
                config.vision_width,
            )
        else:
            if config.vision_width % config.vision_head_width:
                raise ValueError(
                    "vision_width %d is not a multiple of vision_head_width %d"
                    % (config.vision_width, config.vision_head_width)
                )
            self.visual = CLIPVisionTransformer(
                config.image_size,
                config.vision_patch_size,
                config.vision_width,
                config.vision_layers,
                config.vision_width // config.vision_head_width,
                config.embed_dim,
                act,
            )
        self.context_length, self.vocab_size = config.context_length, config.vocab_size
        width = config.text_width
        self.transformer = Transformer(
            width, config.text_layers, config.text_heads, causal=True, act=act
        )
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._init_text()

    @torch.no_grad()
    def _init_text(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.text_width**-0.5)
        self.transformer.init_openai_()

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor:
        if text.dim() != 2 or text.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                "text must be integer token ids [N, L], got %s %s" % (text.dtype, tuple(text.shape))
            )
        if text.shape[1] > self.context_length:
            raise ValueError(
                "text has %d tokens per row, more than the context length %d"
                % (text.shape[1], self.context_length)
            )
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        x = self.ln_final(self.transformer(x))
        # the end-of-text token has the largest id of each row
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, image: Optional[Tensor] = None, text: Optional[Tensor] = None
    ) -> Tuple[Optional[Tensor], Optional[Tensor], Tensor]:
        """``(image_features, text_features, logit_scale.exp())``, features L2-normalised
        (None for an input not given)."""
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.logit_scale.exp()

    def logits(self, image: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        """``(logits_per_image [N, M], logits_per_text [M, N])``: scaled cosine similarities."""
        img, txt, scale = self(image, text)
        per_image = scale * img @ txt.t()
        return per_image, per_image.t()


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(CLIPConfig)}


def build_clip(base: CLIPConfig, **overrides) -> CLIP:
    """A :class:`CLIP` of ``base`` with some fields replaced (``text_layers=2``...)."""
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(
            "unknown CLIP option(s) %s; the options are %s" % (unknown, sorted(_CONFIG_FIELDS))
        )
    if isinstance(overrides.get("vision_layers"), Sequence):
        overrides["vision_layers"] = tuple(overrides["vision_layers"])
    return CLIP(dataclasses.replace(base, **overrides))


CONFIGS = {
    "clip_vit_b_32": CLIPConfig(),
    "clip_vit_b_16": CLIPConfig(vision_patch_size=16),
    "clip_vit_l_14": CLIPConfig(
        embed_dim=768,
        vision_layers=24,
        vision_width=1024,
        vision_patch_size=14,
        text_width=768,
        text_heads=12,
    ),
    "clip_rn50": CLIPConfig(embed_dim=1024, vision_layers=(3, 4, 6, 3), vision_width=64),
}


@register_model
def clip_vit_b_32(**overrides) -> CLIP:
    """CLIP ViT-B/32 (OpenAI): 151,277,313 parameters. Keywords override :class:`CLIPConfig`
    fields (e.g. a tiny ``vision_width=64, vision_layers=2, text_width=64, ...``)."""
    return build_clip(CONFIGS["clip_vit_b_32"], **overrides)


@register_model
def clip_vit_b_16(**overrides) -> CLIP:
    """CLIP ViT-B/16 (OpenAI). Keywords override :class:`CLIPConfig` fields."""
    return build_clip(CONFIGS["clip_vit_b_16"], **overrides)


@register_model
def clip_vit_l_14(**overrides) -> CLIP:
    """CLIP ViT-L/14 at 224 (OpenAI). Keywords override :class:`CLIPConfig` fields."""
    return build_clip(CONFIGS["clip_vit_l_14"], **overrides)


@register_model
def clip_rn50(**overrides) -> CLIP:
    """CLIP RN50 (OpenAI; modified ResNet-50 with attention pooling): 102,007,137 parameters.
    Keywords override :class:`CLIPConfig` fields."""
    return build_clip(CONFIGS["clip_rn50"], **overrides)
