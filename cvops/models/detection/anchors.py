"""Anchor boxes for every location of every feature map (torchvision's ``AnchorGenerator``).

Level ``l`` has ``len(sizes[l]) * len(aspect_ratios[l])`` anchors per location, ordered
ratio-major (for each ratio, each size); an anchor of size ``s`` and ratio ``r = h / w`` is
``round([-w, -h, w, h] / 2)`` with ``w = s / sqrt(r)``, ``h = s * sqrt(r)``, shifted by
``(x * stride_w, y * stride_h)`` for each location in row-major order, where the stride is
``padded image size // feature size`` per axis.
"""

from typing import List, Sequence

import torch
from torch import Tensor, nn

from .image_list import ImageList


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype=torch.float32):
    """``[len(ratios) * len(sizes), 4]`` anchors centred on the origin."""
    # explicit device: a model built under ``torch.device("meta")`` still needs real anchors
    scales = torch.as_tensor(sizes, dtype=dtype, device="cpu")
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device="cpu")
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def _normalise(sizes, aspect_ratios):
    if not isinstance(sizes[0], (list, tuple)):
        sizes = tuple((s,) for s in sizes)
    if not isinstance(aspect_ratios[0], (list, tuple)):
        aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
    if len(sizes) != len(aspect_ratios):
        raise ValueError(
            "sizes and aspect_ratios must have one entry per feature map, got %d and %d"
            % (len(sizes), len(aspect_ratios))
        )
    return tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios)


class AnchorGenerator(nn.Module):
    """``sizes[l]`` x ``aspect_ratios[l]`` anchors per location of feature map ``l``.

    ``forward(image_list, feature_maps)`` returns one ``[sum_l H_l W_l A_l, 4]`` tensor per
    image (levels concatenated, finest first). No parameters or buffers."""

    def __init__(
        self,
        sizes=((128, 256, 512),),
        aspect_ratios=((0.5, 1.0, 2.0),),
    ):
        super().__init__()
        self.sizes, self.aspect_ratios = _normalise(sizes, aspect_ratios)
        self.cell_anchors = [cell_anchors(s, a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def num_anchors_per_location(self) -> List[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes, strides, dtype, device) -> List[Tensor]:
        if not len(grid_sizes) == len(strides) == len(self.cell_anchors):
            raise ValueError(
                "AnchorGenerator has sizes for %d feature maps, got %d feature maps"
                % (len(self.cell_anchors), len(grid_sizes))
            )
        out = []
        for (gh, gw), (sh, sw), base in zip(grid_sizes, strides, self.cell_anchors):
            base = base.to(dtype=dtype, device=device)
            xs = torch.arange(gw, dtype=torch.int64, device=device) * sw
            ys = torch.arange(gh, dtype=torch.int64, device=device) * sh
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            x, y = x.reshape(-1), y.reshape(-1)
            shifts = torch.stack((x, y, x, y), dim=1)
            out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        return out

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        height, width = image_list.tensors.shape[-2:]
        grid_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        strides = [(height // gh, width // gw) for gh, gw in grid_sizes]
        f0 = feature_maps[0]
        levels = self.grid_anchors(grid_sizes, strides, f0.dtype, f0.device)
        anchors = torch.cat(levels)
        return [anchors for _ in image_list.image_sizes]
