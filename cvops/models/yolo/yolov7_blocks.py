"""The blocks YOLOv7 adds to the shared YOLO pieces: MP and SP max pools, SPPCSPC, RepConv and
the implicit-knowledge head IDetect (ImplicitA/ImplicitM), each with its deployment fusion.

Parameter and buffer names are those of the reference repository (WongKinYiu/yolov7:
``cv1``..``cv7``, ``rbr_dense``/``rbr_1x1``/``rbr_identity``/``rbr_reparam``, ``ia``/``im``
with ``implicit``, ``anchors``/``anchor_grid``), so its checkpoints' state_dicts load.
"""

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import BN_EPS, BN_MOMENTUM, AnchorDetect, Conv, _activation, fuse_conv_bn

__all__ = ["IDetect", "ImplicitA", "ImplicitM", "MP", "RepConv", "SP", "SPPCSPC"]


class MP(nn.Module):
    """``k x k`` max pool with stride ``k`` (the pooled branch of YOLOv7's downsampling)."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SP(nn.Module):
    """Size-preserving ``k x k`` max pool (stride 1): one pyramid level of the tiny model's
    SPP, which the reference spells out as separate layers."""

    def __init__(self, k: int = 3, s: int = 1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SPPCSPC(nn.Module):
    """Spatial pyramid pooling in a cross-stage-partial block: one branch ``cv1 -> cv3 -> cv4
    -> [x, pool5, pool9, pool13] -> cv5 -> cv6``, a shortcut branch ``cv2``, merged by ``cv7``.
    """

    def __init__(self, c1: int, c2: int, e: float = 0.5, k: Sequence[int] = (5, 9, 13), act=True):
        super().__init__()
        c_ = int(2 * c2 * e)  # hidden width (= c2 at the default e)
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, 1, act=act)
        self.cv3 = Conv(c_, c_, 3, 1, act=act)
        self.cv4 = Conv(c_, c_, 1, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv((len(k) + 1) * c_, c_, 1, 1, act=act)
        self.cv6 = Conv(c_, c_, 3, 1, act=act)
        self.cv7 = Conv(2 * c_, c2, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class RepConv(nn.Module):
    """Re-parameterisable 3x3 conv (RepVGG): in training ``act(BN(conv3x3 x) + BN(conv1x1 x)
    [+ BN(x)])``, the identity branch only when the shape is kept (``c1 == c2``, stride 1).
    :meth:`fuse` folds the branches into one biased 3x3 conv, ``rbr_reparam``."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, act=True):
        super().__init__()
        if k != 3:
            raise ValueError("RepConv needs k=3 (its 1x1 branch is padded to 3x3), got k=%r" % k)
        if c1 % g or c2 % g:
            raise ValueError("RepConv channels (%d, %d) must divide by groups g=%d" % (c1, c2, g))
        self.c1, self.c2, self.s, self.g = c1, c2, s, g
        self.act = _activation(act)  # Conv's rule: True is SiLU, a module is used as given
        self.rbr_identity = _bn(c1) if c1 == c2 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1, groups=g, bias=False), _bn(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, groups=g, bias=False), _bn(c2))

    @property
    def fused(self) -> bool:
        return hasattr(self, "rbr_reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.act(self.rbr_reparam(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.act(y)

    @torch.no_grad()
    def fuse(self) -> "RepConv":
        """Replace the branches by one 3x3 conv with bias, using the BN running statistics
        (the result equals the eval-mode forward). Idempotent."""
        if self.fused:
            return self
        dense = fuse_conv_bn(self.rbr_dense[0], self.rbr_dense[1])
        one = fuse_conv_bn(self.rbr_1x1[0], self.rbr_1x1[1])
        # a 1x1 kernel at padding 0 equals a 3x3 kernel with it at the centre at padding 1
        weight = dense.weight + F.pad(one.weight, [1, 1, 1, 1])
        bias = dense.bias + one.bias
        if self.rbr_identity is not None:
            # the identity is a 3x3 conv whose kernel is 1 at the centre, input channel = output
            # channel (within its group); BN on top of it folds like any other conv
            eye = torch.zeros_like(dense.weight)
            per_group = self.c1 // self.g
            idx = torch.arange(self.c1, device=eye.device)
            eye[idx, idx % per_group, 1, 1] = 1.0
            conv = nn.Conv2d(self.c1, self.c2, 3, 1, 1, groups=self.g, bias=False).to(eye)
            conv.weight.copy_(eye)
            ident = fuse_conv_bn(conv, self.rbr_identity)
            weight = weight + ident.weight
            bias = bias + ident.bias
        dense.weight.copy_(weight)
        dense.bias.copy_(bias)
        self.rbr_reparam = dense
        del self.rbr_dense, self.rbr_1x1
        self.rbr_identity = None
        return self


class _Implicit(nn.Module):
    """A learned per-channel vector ``implicit`` ``(1, channel, 1, 1)`` drawn from
    N(mean, std) (YOLOR's implicit knowledge)."""

    def __init__(self, channel: int, mean: float, std: float):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=mean, std=std)


class ImplicitA(_Implicit):
    """Adds a learned per-channel offset (initialised near 0)."""

    def __init__(self, channel: int, std: float = 0.02):
        super().__init__(channel, 0.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.implicit


class ImplicitM(_Implicit):
    """Multiplies by a learned per-channel scale (initialised near 1)."""

    def __init__(self, channel: int, std: float = 0.02):
        super().__init__(channel, 1.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.implicit


class IDetect(AnchorDetect):
    """YOLOv7's anchor-based head: per level ``im * m(x + ia)``. Outputs, decoding and loss are
    those of :class:`AnchorDetect` (YOLOv5's head). :meth:`fuse` folds ``ia`` and ``im`` into
    ``m`` for deployment.

    ``anchor_grid`` (the pixel anchors, ``(nl, 1, na, 1, 1, 2)``) is a buffer of the reference
    head that its checkpoints carry; it starts equal to ``anchors * stride``, is kept for a
    strict load and not read here (decoding uses ``anchors * stride``)."""

    def __init__(self, nc: int, anchors, ch: Sequence[int], *args, **kwargs):
        super().__init__(nc, anchors, ch, *args, **kwargs)
        pix = self.anchors * torch.tensor(self.strides, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("anchor_grid", pix.view(self.nl, 1, -1, 1, 1, 2))
        self.ia = nn.ModuleList(ImplicitA(c) for c in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)
        self.fused = False

    def level_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.m[i](x)
        return self.im[i](self.m[i](self.ia[i](x)))

    @torch.no_grad()
    def fuse(self) -> "IDetect":
        """Fold the implicit layers into the output convs: ``im * (W (x + ia) + b) = (im W) x
        + im (W ia + b)``; then drop ``ia``/``im``. Idempotent."""
        if self.fused:
            return self
        for conv, ia, im in zip(self.m, self.ia, self.im):
            w = conv.weight.flatten(1)  # (na * no, c)
            scale = im.implicit.flatten()  # (na * no,)
            conv.bias.copy_((conv.bias + w @ ia.implicit.flatten()) * scale)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
        del self.ia, self.im
        self.fused = True
        return self
