"""CLIP's modified ResNet image tower (RN50), with OpenAI's parameter names (``visual.*``).

It differs from torchvision's ResNet in three places:

* a 3-conv stem (3x3/2 to width/2, 3x3, 3x3 to width, each BN + ReLU) and a 2x2 average pool
  instead of the 7x7 conv and the max pool;
* anti-aliased downsampling: every conv has stride 1, and a block of stride s average-pools
  (s x s) after its 3x3 conv; its shortcut average-pools before the 1x1 conv
  (``downsample.0``/``downsample.1``: the pool has no parameters, so the conv is key ``0``);
* attention pooling instead of global average pooling: the mean of the final feature map,
  prepended to the flattened map with a learned position embedding, is the single query of
  one multi-head attention over all positions, projected to the embedding size (``c_proj``).

cvops' classification ``Bottleneck`` does not fit (strided conv, other shortcut layout).
"""

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..classification.vit import resample_pos_embed


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.avgpool(self.act2(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the map's mean (the one query) over ``[mean, positions]``."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError("embed_dim %d is not divisible by heads %d" % (embed_dim, num_heads))
        self.spatial_dim = spatial_dim
        self.positional_embedding = nn.Parameter(
            torch.randn(spatial_dim**2 + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [N, 1 + HW, C]
        grid = (self.spatial_dim, self.spatial_dim)
        pos = resample_pos_embed(self.positional_embedding[None], (h, w), grid, 1)
        x = x + pos.to(x.dtype)
        heads, d = self.num_heads, c // self.num_heads
        # only the mean token's output is used, so it is the only query computed
        q = self.q_proj(x[:, :1]).reshape(n, 1, heads, d).transpose(1, 2)
        k = self.k_proj(x).reshape(n, -1, heads, d).transpose(1, 2)
        v = self.v_proj(x).reshape(n, -1, heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, 1, d]
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """The RN50-style tower: ``layers`` bottleneck blocks per stage, base ``width``, output
    ``output_dim`` from the attention pool. Input sides must be multiples of 32."""

    def __init__(
        self,
        layers: Sequence[int],
        output_dim: int,
        heads: int,
        image_size: int = 224,
        width: int = 64,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError("layers must give 4 stage depths, got %r" % (layers,))
        if image_size % 32:
            raise ValueError("image_size must be a multiple of 32, got %d" % image_size)
        self.output_dim, self.image_size = output_dim, image_size
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, depth in enumerate(layers):
            planes = width * 2**i
            blocks = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(1, depth)]
            setattr(self, "layer%d" % (i + 1), nn.Sequential(*blocks))
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj):
            nn.init.normal_(proj.weight, std=std)
        nn.init.normal_(self.attnpool.c_proj.weight, std=std)
        for name, p in self.named_parameters():  # each residual branch starts at zero
            if name.startswith("layer") and name.endswith("bn3.weight"):
                nn.init.zeros_(p)

    def stem(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("image must be [N, 3, H, W], got shape %s" % (tuple(x.shape),))
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                "image height and width must be multiples of 32, got %dx%d" % x.shape[-2:]
            )
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
