"""The CSP blocks of YOLOv5 and YOLOv8 (C3, C2f, their Bottleneck, SPPF) and the layer graph
the models are written as (``model.{i}``, each layer reading earlier layers' outputs)."""

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .common import Concat, Conv

__all__ = ["Bottleneck", "C2f", "C3", "LayerGraph", "SPPF", "make_divisible", "scale_depth"]


def make_divisible(x: float, divisor: int = 8) -> int:
    """``x`` rounded up to a multiple of ``divisor`` (the width multiplier's channel rule)."""
    return int(math.ceil(x / divisor) * divisor)


def scale_depth(n: int, depth: float) -> int:
    """Repeats of a block under the depth multiplier (single blocks stay single)."""
    return max(round(n * depth), 1) if n > 1 else n


class Bottleneck(nn.Module):
    """``cv2(cv1(x))`` (+ ``x`` when ``shortcut`` and the widths match). YOLOv5 uses kernels
    (1, 3), YOLOv8 (3, 3); ``e`` scales the hidden width."""

    def __init__(
        self,
        c1: int,
        c2: int,
        shortcut: bool = True,
        g: int = 1,
        k: Tuple[int, int] = (1, 3),
        e: float = 0.5,
    ):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block with three convs (YOLOv5): one half of the channels goes through ``n``
    bottlenecks, the other is a 1x1 shortcut; ``cv3`` fuses both."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, (1, 3), 1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C2f(nn.Module):
    """CSP block with two convs (YOLOv8): ``cv1`` splits into two halves, ``n`` bottlenecks
    chain on the second, and ``cv2`` fuses every intermediate output (richer gradient flow
    than C3 at a similar cost)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(
            Bottleneck(self.c, self.c, shortcut, g, (3, 3), 1.0) for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained ``k x k`` stride-1 max pools (receptive
    fields k, 2k-1, 3k-2: SPP's 5/9/13 for k=5) concatenated with their input."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


Source = Union[int, Sequence[int]]


class LayerGraph(nn.Module):
    """Layers ``model.0 .. model.{L-1}`` run in order; layer ``i`` reads the previous output
    (source ``-1``), an earlier layer's (an index), or a list of them (for :class:`Concat`
    and the head). Returns the last layer's output. This is the references' layout, so their
    checkpoints' ``model.{i}.*`` keys load unchanged."""

    def __init__(self):
        super().__init__()
        self.model = nn.ModuleList()
        self.sources: List[Source] = []
        self.channels: List[int] = []  # output channels of each layer

    def add(self, source: Source, module: nn.Module, channels: int) -> int:
        """Append a layer; returns its index."""
        self.model.append(module)
        self.sources.append(source)
        self.channels.append(channels)
        return len(self.model) - 1

    def ch(self, source: Source) -> int:
        """Output channels of a source (summed over a list, as Concat does)."""
        if isinstance(source, int):
            return self.channels[source]
        return sum(self.channels[s] for s in source)

    def concat(self, sources: Sequence[int]) -> int:
        return self.add(list(sources), Concat(1), self.ch(sources))

    def upsample(self) -> int:
        return self.add(-1, nn.Upsample(scale_factor=2.0, mode="nearest"), self.channels[-1])

    def run(self, x: torch.Tensor):
        outputs: List = []
        for m, src in zip(self.model, self.sources):
            if isinstance(src, int):
                inp = x if src == -1 else outputs[src]
            else:
                inp = [x if s == -1 else outputs[s] for s in src]
            x = m(inp)
            outputs.append(x)
        return x
