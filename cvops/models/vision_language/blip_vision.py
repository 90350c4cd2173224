"""BLIP's image encoder: a pre-norm ViT with Hugging Face's ``BlipVisionModel`` names
(``embeddings.{class_embedding, patch_embedding, position_embedding}``,
``encoder.layers.i.{layer_norm1, self_attn.{qkv, projection}, layer_norm2, mlp.{fc1, fc2}}``,
``post_layernorm``).

The math is cvops' ViT (:mod:`cvops.models.classification.vit`): the same packed-qkv
attention function and position-embedding resampling; only the module names differ, which is
why the blocks are not the classification ``EncoderBlock`` itself (its torchvision names are
``ln_1``/``self_attention.in_proj_weight``/``mlp.0``).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..classification.vit import patch_grid, resample_pos_embed, self_attention
from .blip_config import BlipConfig


class BlipVisionEmbeddings(nn.Module):
    """Patch embedding + class token + learned position embedding."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        d = config.vision_width
        self.patch_size = config.patch_size
        self.grid = (config.grid_size, config.grid_size)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(3, d, config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, d))
        nn.init.trunc_normal_(self.class_embedding, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)

    def forward(self, pixel_values: Tensor) -> Tensor:
        grid = patch_grid(pixel_values, self.patch_size)
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        # other input sizes: bicubic resampling of the patch-grid positions (cvops' ViT rule;
        # Hugging Face's interpolate_pos_encoding resamples without antialiasing)
        pos = resample_pos_embed(self.position_embedding, grid, self.grid, num_prefix=1)
        return x + pos.to(x.dtype)


class BlipAttention(nn.Module):
    """Multi-head self-attention with one packed ``qkv`` projection and ``projection``."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self_attention(
            x,
            self.qkv.weight,
            self.qkv.bias,
            self.projection.weight,
            self.projection.bias,
            self.num_heads,
            self.dropout if self.training else 0.0,
        )


class BlipMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class BlipEncoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(layer_norm1(x))``, then ``+ mlp(layer_norm2(.))``."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        d, eps = config.vision_width, config.vision_eps
        self.self_attn = BlipAttention(d, config.vision_heads, config.vision_attention_dropout)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.mlp = BlipMLP(d, config.vision_mlp)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class BlipEncoder(nn.Module):
    def __init__(self, config: BlipConfig):
        super().__init__()
        self.layers = nn.ModuleList(BlipEncoderLayer(config) for _ in range(config.vision_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class BlipVisionModel(nn.Module):
    """``pixel_values [B, 3, H, W]`` -> image tokens ``[B, 1 + (H/p)(W/p), D]`` after the
    final LayerNorm (class token first): what both the ITM encoder and the captioning decoder
    cross-attend to, and whose class token feeds the contrastive projection."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        self.embeddings = BlipVisionEmbeddings(config)
        self.encoder = BlipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.vision_width, eps=config.vision_eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))
