"""DeiT (Touvron et al. 2021): ViT-Ti/S/B at 224 with timm's parameter names
(``timm.create_model("deit_*_patch16_224")``), and the ``_distilled`` variants with a
distillation token (token order CLS, DIST, patches) and a second head ``head_dist``.

A distilled model returns ``(cls_logits, dist_logits)`` in training mode, for
:class:`~cvops.models.classification.distillation.DistillationLoss`, and the mean of the
two heads' logits in eval mode. Other input sizes resample the position embedding.
"""

from typing import Final, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .._registry import register_model
from ._base import ClassifierMixin, check_num_classes, check_prob, linear_or_identity
from .vit import check_patch_geometry, patch_grid, resample_pos_embed, self_attention

# one node each in torch.fx graphs, as in vit.py (fx.wrap patches this module's names only)
torch.fx.wrap("patch_grid")
torch.fx.wrap("resample_pos_embed")


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention with timm's names: packed ``qkv`` and output ``proj`` linears."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError("dim %d is not divisible by num_heads %d" % (dim, num_heads))
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self_attention(
            x,
            self.qkv.weight,
            self.qkv.bias,
            self.proj.weight,
            self.proj.bias,
            self.num_heads,
            self.attn_drop if self.training else 0.0,
        )
        return self.proj_drop(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm block with timm's names (``norm1``, ``attn``, ``norm2``, ``mlp``)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop=0.0, attn_drop=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DeiT(ClassifierMixin, nn.Module):
    # a constant to TorchScript: dist_token and head_dist exist only when it is set
    distilled: Final[bool]

    def __init__(
        self,
        *,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        image_size: int = 224,
        num_classes: int = 1000,
        distilled: bool = False,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        dropout = check_prob(dropout, "dropout")
        attention_dropout = check_prob(attention_dropout, "attention_dropout")
        check_patch_geometry(image_size, patch_size)
        self.distilled = bool(distilled)
        self.num_prefix_tokens = 2 if self.distilled else 1
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if self.distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, dropout, attention_dropout)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = linear_or_identity(embed_dim, num_classes)
        if self.distilled:
            self.head_dist = linear_or_identity(embed_dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.distilled:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after the final LayerNorm, ``[N, prefix + gh*gw, D]`` (CLS[, DIST] first)."""
        grid = patch_grid(x, self.patch_size)
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.distilled:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        pos = resample_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)
        return self.norm(self.blocks(self.pos_drop(x + pos)))

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        # (ClassifierMixin's, with the return type a distilled model has in training)
        return self.forward_head(self.forward_features(x))

    def forward_head(
        self, x: Tensor, pre_logits: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        if not self.distilled:
            x = x[:, 0]
            return x if pre_logits else self.head(x)
        cls, dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.training:
            return cls, dist
        return (cls + dist) / 2

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head`` (and ``head_dist`` on distilled models)."""
        self.num_classes = check_num_classes(num_classes)
        self.head = linear_or_identity(self.embed_dim, num_classes)
        if self.distilled:
            self.head_dist = linear_or_identity(self.embed_dim, num_classes)


_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


def _deit(size: str, distilled: bool, **kwargs) -> DeiT:
    dim, heads = _SIZES[size]
    return DeiT(embed_dim=dim, depth=12, num_heads=heads, distilled=distilled, **kwargs)


@register_model
def deit_tiny_patch16_224(*, num_classes: int = 1000, dropout: float = 0.0) -> DeiT:
    """DeiT-Ti/16 (width 192, 3 heads): 5,717,416 parameters."""
    return _deit("tiny", False, num_classes=num_classes, dropout=dropout)


@register_model
def deit_small_patch16_224(*, num_classes: int = 1000, dropout: float = 0.0) -> DeiT:
    """DeiT-S/16 (width 384, 6 heads): 22,050,664 parameters."""
    return _deit("small", False, num_classes=num_classes, dropout=dropout)


@register_model
def deit_base_patch16_224(*, num_classes: int = 1000, dropout: float = 0.0) -> DeiT:
    """DeiT-B/16 (width 768, 12 heads): 86,567,656 parameters."""
    return _deit("base", False, num_classes=num_classes, dropout=dropout)


@register_model
def deit_tiny_distilled_patch16_224(*, num_classes: int = 1000, dropout: float = 0.0) -> DeiT:
    """Distilled DeiT-Ti/16: 5,910,800 parameters."""
    return _deit("tiny", True, num_classes=num_classes, dropout=dropout)


@register_model
def deit_small_distilled_patch16_224(*, num_classes: int = 1000, dropout: float = 0.0) -> DeiT:
    """Distilled DeiT-S/16: 22,436,432 parameters."""
    return _deit("small", True, num_classes=num_classes, dropout=dropout)


@register_model
def deit_base_distilled_patch16_224(*, num_classes: int = 1000, dropout: float = 0.0) -> DeiT:
    """Distilled DeiT-B/16: 87,338,192 parameters."""
    return _deit("base", True, num_classes=num_classes, dropout=dropout)
