"""Building blocks shared by the YOLO families (v5, v7, v8).

Parameter names follow the reference repositories (``conv``/``bn``/``act``, ``m``, ``anchors``)
so their checkpoints load with ``strict=True``.

Signatures (stable; YOLOv7 builds on them):

* ``autopad(k, p=None, d=1) -> int | list[int]``: "same" padding for kernel ``k`` (int or
  sequence) with dilation ``d``; returns ``p`` unchanged when given.
* ``Conv(c1, c2, k=1, s=1, p=None, g=1, d=1, act=True)``: ``conv`` (Conv2d without bias) ->
  ``bn`` (BatchNorm2d, eps 1e-3, momentum 0.03) -> ``act``. ``act=True`` is SiLU, ``False`` or
  ``None`` is Identity, an ``nn.Module`` (e.g. ``nn.LeakyReLU(0.1)``) is used as given.
  ``forward_fuse(x)`` skips ``bn`` (after :func:`fuse_conv_bn`).
* ``Concat(dimension=1)``: ``torch.cat`` of a list of tensors.
* ``make_grid(nx, ny, device=None, dtype=None) -> Tensor (1, 1, ny, nx, 2)``: cell ``(x, y)``
  offsets of a feature map.
* ``decode_anchor_level(p, grid, anchor_wh, stride) -> Tensor``: YOLOv5/v7 box decoding of one
  level's raw output ``p`` ``(bs, na, ny, nx, no)``: ``xy = (2 sigmoid - 0.5 + grid) * stride``,
  ``wh = (2 sigmoid)^2 * anchor_wh`` (``anchor_wh`` in pixels, shape ``(1, na, 1, 1, 2)``),
  the rest sigmoid. Returns ``(bs, na * ny * nx, no)`` with boxes as ``cx, cy, w, h``.
* ``AnchorDetect(nc, anchors, ch, strides)``: the anchor-based head. ``anchors`` is a sequence
  of per-level flat pixel ``(w, h)`` lists (e.g. ``((10,13, 16,30, 33,23), ...)``); the buffer
  ``anchors`` ``(nl, na, 2)`` holds them divided by the level stride, as the reference
  checkpoints do. ``m`` holds one 1x1 Conv2d (with bias) per level. ``forward(xs)`` returns
  the raw per-level outputs ``[(bs, na, ny, nx, nc + 5)]`` in training and
  ``(decoded (bs, N, nc + 5), raw)`` in eval. Subclasses change the per-level conv by
  overriding ``level_output(i, x)`` (YOLOv7's IDetect adds its implicit layers there).
  ``strides`` is a tuple of Python floats (not a buffer: nothing device-bound, and the
  model builds on the meta device). ``initialize_biases()`` sets the objectness/class bias
  priors used by the references.

Shared by v5/v8 elsewhere in this package: ``blocks`` (C3, C2f, Bottleneck, SPPF,
``LayerGraph``, ``make_divisible``), ``detector.YOLO`` (the torchvision interface: subclasses
define ``loss(raw, targets)`` and ``boxes_and_scores(decoded)``), ``loss_v5.YOLOv5Loss``.
"""

import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .._conv_bn import fold_bn

__all__ = [
    "AnchorDetect",
    "Concat",
    "Conv",
    "autopad",
    "decode_anchor_level",
    "fuse_conv_bn",
    "make_grid",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k, p=None, d: int = 1):
    """Padding that keeps the spatial size at stride 1 ("same") for kernel ``k``, dilation
    ``d``. An explicit ``p`` is returned unchanged."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def _activation(act) -> nn.Module:
    if act is True:
        return nn.SiLU()
    if act is False or act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    raise TypeError("act must be a bool, None or an nn.Module, got %s" % type(act).__name__)


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d(eps=1e-3, momentum=0.03) + activation (SiLU default)."""

    def __init__(self, c1: int, c2: int, k=1, s=1, p=None, g: int = 1, d: int = 1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with ``bn`` (in eval form) folded into its weight and bias."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight)
    weight, bias = fold_bn(conv, bn)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


def make_grid(
    nx: int, ny: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Cell offsets ``(x, y)`` of an ``ny x nx`` feature map, shape ``(1, 1, ny, nx, 2)``."""
    ys = torch.arange(ny, device=device, dtype=dtype)
    xs = torch.arange(nx, device=device, dtype=dtype)
    yv, xv = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)


def decode_anchor_level(
    p: torch.Tensor, grid: torch.Tensor, anchor_wh: torch.Tensor, stride: float
) -> torch.Tensor:
    """Decode one level's raw output ``p`` ``(bs, na, ny, nx, no)`` to
    ``(bs, na * ny * nx, no)``: pixel ``cx, cy, w, h``, then sigmoid objectness and classes.

    The ``2 sigmoid - 0.5`` centre lets a cell predict centres up to half a cell outside
    itself, which is what makes the neighbouring-cell positives of the loss reachable."""
    y = p.sigmoid()
    xy = (y[..., :2] * 2.0 - 0.5 + grid) * stride
    wh = (y[..., 2:4] * 2.0) ** 2 * anchor_wh
    out = torch.cat((xy, wh, y[..., 4:]), -1)
    return out.view(p.shape[0], -1, p.shape[-1])


class AnchorDetect(nn.Module):
    """Anchor-based YOLO head (YOLOv5 ``Detect``; YOLOv7 ``IDetect`` derives from it)."""

    def __init__(
        self,
        nc: int,
        anchors: Sequence[Sequence[float]],
        ch: Sequence[int],
        strides: Sequence[float] = (8.0, 16.0, 32.0),
    ):
        super().__init__()
        if len(anchors) != len(ch) or len(ch) != len(strides):
            raise ValueError(
                "anchors, ch and strides need one entry per level, got %d, %d and %d"
                % (len(anchors), len(ch), len(strides))
            )
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        pix = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        stride_t = torch.tensor(strides, dtype=torch.float32)
        # references keep anchors in units of their level's stride (a persistent buffer)
        self.register_buffer("anchors", pix / stride_t.view(-1, 1, 1))
        self.strides = tuple(float(s) for s in strides)  # python floats: no device, no sync
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def level_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The raw prediction map of level ``i`` (``(bs, na * no, ny, nx)``)."""
        return self.m[i](x)

    def forward(self, xs: List[torch.Tensor]):
        raw: List[torch.Tensor] = []
        decoded: List[torch.Tensor] = []
        for i in range(self.nl):
            p = self.level_output(i, xs[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(p)
            if not self.training:
                grid = make_grid(nx, ny, p.device, p.dtype)
                anchor_wh = (self.anchors[i] * self.strides[i]).view(1, self.na, 1, 1, 2)
                decoded.append(decode_anchor_level(p, grid, anchor_wh.to(p.dtype), self.strides[i]))
        if self.training:
            return raw
        return torch.cat(decoded, 1), raw

    @torch.no_grad()
    def initialize_biases(self, class_freq: Optional[torch.Tensor] = None) -> None:
        """Objectness prior of ~8 objects per 640x640 image and a class prior of 0.6/nc
        (the references' initialisation; it keeps the first iterations' losses sane)."""
        for conv, s in zip(self.m, self.strides):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            if class_freq is None:
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99))
            else:
                b[:, 5:] += torch.log(class_freq / class_freq.sum())
