"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015, arXiv:1505.04597).

The paper's network (``padding=False``, the default): two valid 3x3 conv + ReLU per level,
widths ``base_width * 2**i`` (64..1024), 2x2 max pools, 2x2 up-convolutions that halve the
width, the centre-cropped encoder map concatenated, a final 1x1 conv. A 572x572 input gives
a 388x388 output (the valid region: the border pixels lost to the convs are not predicted);
31,030,658 parameters for 1 input channel and 2 classes.

The common variant (``padding=True, batch_norm=True``): padded convs with BN (no conv bias),
output size = input size for any input size (an up-sampled map that is one pixel short after
an odd-sized pool is zero-padded to its skip's size).
"""

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._registry import register_model
from ._utils import check_int, check_seg_classes


class DoubleConv(nn.Sequential):
    """(3x3 conv [- BN] - ReLU) x 2; valid convs unless ``padding``."""

    def __init__(self, in_channels: int, out_channels: int, padding: bool, batch_norm: bool):
        layers: List[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(
                nn.Conv2d(c_in, out_channels, 3, padding=int(padding), bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def center_crop(x: Tensor, size) -> Tensor:
    """The centre ``size`` window of ``x`` (``[..., H, W]``)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


class UNet(nn.Module):
    """U-Net with ``depth`` down-samplings (4 in the paper) and ``base_width`` channels at the
    first level (64). ``forward`` returns ``{"out": logits}``."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        base_width: int = 64,
        padding: bool = False,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels")
        self.num_classes = check_seg_classes(num_classes)
        self.depth = check_int(depth, "depth")
        self.base_width = check_int(base_width, "base_width")
        self.padding = bool(padding)
        self.batch_norm = bool(batch_norm)
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        c_in = in_channels
        for w in widths:
            self.encoder.append(DoubleConv(c_in, w, self.padding, self.batch_norm))
            c_in = w
        self.pool = nn.MaxPool2d(2, 2)
        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up_convs.append(nn.ConvTranspose2d(2 * w, w, 2, stride=2))
            self.decoder.append(DoubleConv(2 * w, w, self.padding, self.batch_norm))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        for m in self.modules():
            # The paper: Gaussian with std sqrt(2 / N), N = fan-in (He initialisation).
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """The output's (H, W) for an input of ``size`` (== ``size`` when padded)."""
        if self.padding:
            return tuple(size)
        out = []
        for s in size:
            for _ in range(self.depth):
                s = (s - 4) // 2
            s -= 4
            for _ in range(self.depth):
                s = 2 * s - 4
            out.append(s)
        return tuple(out)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                "UNet expects [N, %d, H, W] input, got %s" % (self.in_channels, list(x.shape))
            )
        if self.padding and min(x.shape[-2:]) < 2**self.depth:
            raise ValueError(
                "input %s is too small for this U-Net (depth %d): it needs at least %d pixels "
                "a side" % (list(x.shape[-2:]), self.depth, 2**self.depth)
            )
        if not self.padding and min(self.output_size(x.shape[-2:])) < 1:
            raise ValueError(
                "input %s is too small for this valid-convolution U-Net (depth %d): it needs "
                "at least %d pixels a side (the paper's: 572 in, 388 out)"
                % (list(x.shape[-2:]), self.depth, self._min_valid_size())
            )
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up_convs, self.decoder):
            x = up(x)
            skip = skips.pop()
            if self.padding:
                dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
                if dh or dw:
                    x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
            else:
                skip = center_crop(skip, x.shape[-2:])
            x = block(torch.cat([skip, x], dim=1))
        return {"out": self.head(x)}

    def _min_valid_size(self) -> int:
        s = 1
        while self.output_size((s, s))[0] < 1:
            s += 1
        return s


@register_model
def unet(**kwargs) -> UNet:
    """U-Net; keywords as ``UNet``: ``num_classes`` (2), ``in_channels`` (1), ``depth`` (4),
    ``base_width`` (64), ``padding`` (False), ``batch_norm`` (False). The defaults are the
    paper's (valid convs, 572 -> 388, 31,030,658 parameters); ``padding=True,
    batch_norm=True`` gives the same-size variant."""
    return UNet(**kwargs)
