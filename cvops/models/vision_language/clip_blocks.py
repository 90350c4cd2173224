"""The transformer pieces CLIP's two towers share, with OpenAI's parameter names
(``resblocks.{i}.ln_1``, ``attn.in_proj_weight``, ``attn.out_proj``, ``mlp.c_fc``,
``mlp.c_proj``), so OpenAI/open_clip checkpoints load with ``strict=True``.

The attention reuses cvops' ViT ``SelfAttention`` (the same packed q/k/v parameter names as
``nn.MultiheadAttention``); what CLIP adds is the causal mask of the text tower. cvops' ViT
``EncoderBlock`` does not fit: its LayerNorm eps is 1e-6 (CLIP: 1e-5), its MLP keys are
``mlp.0``/``mlp.3`` and its activation GELU.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..classification.vit import SelfAttention


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP weights were trained with
    (exact GELU gives visibly different features with those weights)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPAttention(SelfAttention):
    """Multi-head self-attention; ``causal=True`` lets token ``i`` see tokens ``<= i`` only
    (the text tower: the end-of-text token then summarises the whole caption)."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False):
        super().__init__(dim, num_heads)
        self.causal = causal

    def forward(self, x: Tensor) -> Tensor:
        if not self.causal:
            return super().forward(x)
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``; LayerNorm eps 1e-5."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False, act=QuickGELU
    ):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CLIPAttention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=act(), c_proj=nn.Linear(hidden, width))
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual attention blocks on ``[B, N, width]`` (batch first)."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False, act=QuickGELU):
        super().__init__()
        if width % heads:
            raise ValueError("width %d is not divisible by heads %d" % (width, heads))
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(
            *(ResidualAttentionBlock(width, heads, causal=causal, act=act) for _ in range(layers))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)

    @torch.no_grad()
    def init_openai_(self) -> None:
        """OpenAI's initialisation (normal, std scaled by width and depth)."""
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
