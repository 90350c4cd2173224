"""Vision Transformer ViT-B/16, ViT-B/32, ViT-L/16 with torchvision's parameter names
(``torchvision.models.vit_*``): patch embedding ``conv_proj``, ``class_token``, learned
``encoder.pos_embedding``, pre-norm encoder blocks (LayerNorm eps 1e-6, GELU MLP), ``heads``.

Other input sizes work: the position embedding of the patch grid is resampled (bicubic,
antialiased, as timm does) to the input's grid. Height and width must be multiples of the
patch size. :func:`convert_timm_vit_state_dict` maps a timm ``vit_*`` checkpoint to these
names.
"""

import math
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._registry import register_model
from ._base import ClassifierMixin, check_num_classes, check_prob, linear_or_identity


def self_attention(
    x: Tensor,
    qkv_weight: Tensor,
    qkv_bias: Optional[Tensor],
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    num_heads: int,
    dropout_p: float = 0.0,
) -> Tensor:
    """Multi-head self-attention of ``x [B, N, D]`` with a packed q/k/v projection
    ``[3D, D]`` (q, k, v stacked, as both torchvision and timm store it)."""
    b, n, d = x.shape
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(b, n, 3, num_heads, d // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return F.linear(out.transpose(1, 2).reshape(b, n, d), proj_weight, proj_bias)


@torch.fx.wrap  # one node in torch.fx graphs: it branches on the grid size
def resample_pos_embed(
    pos_embed: Tensor, new_grid: Tuple[int, int], old_grid: Tuple[int, int], num_prefix: int
) -> Tensor:
    """Resample the patch-grid part of ``pos_embed [1, num_prefix + gh*gw, D]`` from
    ``old_grid`` to ``new_grid`` (bicubic, antialiased); prefix tokens are kept."""
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def check_patch_geometry(image_size: int, patch_size: int) -> None:
    if image_size % patch_size:
        raise ValueError(
            "image_size %d is not a multiple of patch_size %d" % (image_size, patch_size)
        )


@torch.fx.wrap  # one node in torch.fx graphs: it checks the input's shape
def patch_grid(x: Tensor, patch_size: int) -> Tuple[int, int]:
    if x.dim() != 4:
        raise ValueError("input must be [N, C, H, W], got shape " + str(list(x.shape)))
    h, w = x.shape[2], x.shape[3]
    if h % patch_size or w % patch_size:
        raise ValueError(
            "input height and width must be multiples of the patch size %d, got %dx%d"
            % (patch_size, h, w)
        )
    return h // patch_size, w // patch_size


class SelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter names (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), computed with ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError("dim %d is not divisible by num_heads %d" % (dim, num_heads))
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self_attention(
            x,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            self.num_heads,
            self.dropout if self.training else 0.0,
        )


class MLPBlock(nn.Sequential):
    """Linear - GELU - Dropout - Linear - Dropout (keys ``0.*`` and ``3.*``)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float):
        super().__init__(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )
        for m in (self[0], self[3]):
            nn.init.xavier_uniform_(m.weight)
            nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``."""

    def __init__(self, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = SelfAttention(hidden_dim, num_heads, attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(
        self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
    ):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            OrderedDict(
                (
                    "encoder_layer_%d" % i,
                    EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout),
                )
                for i in range(num_layers)
            )
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: Tensor, pos_embedding: Optional[Tensor] = None) -> Tensor:
        pos = self.pos_embedding if pos_embedding is None else pos_embedding
        return self.ln(self.layers(self.dropout(x + pos)))


class VisionTransformer(ClassifierMixin, nn.Module):
    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
        num_classes: int = 1000,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        dropout = check_prob(dropout, "dropout")
        attention_dropout = check_prob(attention_dropout, "attention_dropout")
        check_patch_geometry(image_size, patch_size)
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_features = hidden_dim
        self.grid_size = (image_size // patch_size, image_size // patch_size)

        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length = self.grid_size[0] * self.grid_size[1] + 1
        self.encoder = Encoder(
            seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
        )
        self.seq_length = seq_length
        self.heads = nn.Sequential(OrderedDict(head=self._new_head(num_classes)))

        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)

    def _new_head(self, num_classes: int) -> nn.Module:
        head = linear_or_identity(self.hidden_dim, num_classes)
        if isinstance(head, nn.Linear):  # torchvision zero-initialises the head
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        return head

    def forward_features(self, x: Tensor) -> Tensor:
        """Encoder output tokens ``[N, 1 + gh*gw, D]`` (class token first), after the final LN."""
        grid = patch_grid(x, self.patch_size)
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = resample_pos_embed(self.encoder.pos_embedding, grid, self.grid_size, 1)
        return self.encoder(x, pos)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0]
        return x if pre_logits else self.heads(x)

    def get_classifier(self) -> nn.Module:
        return self.heads.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.heads.head = self._new_head(num_classes)


_TIMM_BLOCK_KEYS = {
    "norm1": "ln_1",
    "norm2": "ln_2",
    "attn.qkv.weight": "self_attention.in_proj_weight",
    "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj": "self_attention.out_proj",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_TIMM_TOP_KEYS = {
    "cls_token": "class_token",
    "pos_embed": "encoder.pos_embedding",
    "patch_embed.proj": "conv_proj",
    "norm": "encoder.ln",
    "head": "heads.head",
}


def convert_timm_vit_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a timm ``vit_*`` state_dict (class token, no register tokens, no ``fc_norm``,
    pre-norm blocks with packed qkv) to cvops/torchvision ``VisionTransformer`` names.

    ``vit_b_16().load_state_dict(convert_timm_vit_state_dict(timm_sd))`` then loads
    ``timm.create_model("vit_base_patch16_224")``'s weights with ``strict=True``. Keys that
    have no counterpart raise ``ValueError``.
    """
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", key)
        new = None
        if m is not None:
            rest = m.group(2)
            for src, dst in _TIMM_BLOCK_KEYS.items():
                if rest == src or rest.startswith(src + "."):
                    new = "encoder.layers.encoder_layer_%s.%s%s" % (
                        m.group(1),
                        dst,
                        rest[len(src) :],
                    )
                    break
        else:
            for src, dst in _TIMM_TOP_KEYS.items():
                if key == src or key.startswith(src + "."):
                    new = dst + key[len(src) :]
                    break
        if new is None:
            raise ValueError(
                "convert_timm_vit_state_dict: key %r has no counterpart in cvops' "
                "VisionTransformer (models with register tokens, fc_norm or layer scale are "
                "not supported)" % key
            )
        out[new] = value
    return out


def _vit(patch_size, num_layers, num_heads, hidden_dim, mlp_dim, **kwargs) -> VisionTransformer:
    return VisionTransformer(
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        **kwargs,
    )


@register_model
def vit_b_16(
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
) -> VisionTransformer:
    """ViT-B/16: 12 layers, 12 heads, width 768, MLP 3072; 86,567,656 parameters."""
    return _vit(
        16,
        12,
        12,
        768,
        3072,
        num_classes=num_classes,
        image_size=image_size,
        dropout=dropout,
        attention_dropout=attention_dropout,
    )


@register_model
def vit_b_32(
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
) -> VisionTransformer:
    """ViT-B/32: 12 layers, 12 heads, width 768, MLP 3072, 32x32 patches."""
    return _vit(
        32,
        12,
        12,
        768,
        3072,
        num_classes=num_classes,
        image_size=image_size,
        dropout=dropout,
        attention_dropout=attention_dropout,
    )


@register_model
def vit_l_16(
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
) -> VisionTransformer:
    """ViT-L/16: 24 layers, 16 heads, width 1024, MLP 4096."""
    return _vit(
        16,
        24,
        16,
        1024,
        4096,
        num_classes=num_classes,
        image_size=image_size,
        dropout=dropout,
        attention_dropout=attention_dropout,
    )
