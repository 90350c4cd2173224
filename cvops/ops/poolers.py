"""MultiScaleRoIAlign: FPN RoI pooling on top of :func:`cvops.roi_align`.

A drop-in for ``torchvision.ops.MultiScaleRoIAlign`` (same constructor, same
``forward(x, boxes, image_shapes)``), plus ``aligned=True`` for detectron2's convention.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._utils import pair
from .roi_align import roi_align


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """A feature map's scale relative to the (padded) image: the power of two closest to
    ``feature_height / image_height`` in log2 (torchvision's rule, which uses the height)."""
    approx = float(feature_size[0]) / float(image_size[0])
    # Python's round() rounds halves to even, like torch.round.
    return 2.0 ** round(math.log2(approx))


def map_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each box (Feature Pyramid Networks, eq. 1), as an index from ``k_min``:

    ``clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), k_min, k_max)
    - k_min``, computed in the boxes' dtype in the same order as torchvision. Boxes with no
    positive area (sqrt of a negative area is NaN in torchvision, which then drops them) go
    to the finest level.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = torch.sqrt(area)
    eps_t = torch.tensor(eps, dtype=s.dtype, device=s.device)
    levels = torch.floor(canonical_level + torch.log2(s / canonical_scale) + eps_t)
    levels = torch.nan_to_num(levels, nan=float(k_min))
    levels = torch.clamp(levels, min=k_min, max=k_max)
    return levels.to(torch.int64) - k_min


class MultiScaleRoIAlign(nn.Module):
    """RoI Align over a feature pyramid: each box is pooled from the level the FPN rule picks.

    Args:
        featmap_names: keys of the feature dict to pool from (finest first, as they appear in
            the dict, like torchvision).
        output_size: ``int`` or ``(height, width)``.
        sampling_ratio: as in :func:`cvops.roi_align`.
        canonical_scale, canonical_level: the FPN level mapper's constants (224, 4).
        aligned: ``False`` is torchvision's behaviour; ``True`` shifts boxes by -0.5 pixel
            (detectron2's ``ROIAlignV2``).

    ``forward(x, boxes, image_shapes)``: ``x`` maps names to ``[N, C, H_l, W_l]`` features,
    ``boxes`` is a list of ``[L_i, 4]`` boxes (x1, y1, x2, y2) per image in image
    coordinates, ``image_shapes`` the ``(height, width)`` of each image before batching.
    Returns ``[sum(L_i), C, output_size[0], output_size[1]]`` in the order of the boxes.

    Each level's scale is inferred from its size and the largest image size, as torchvision
    does; unlike torchvision, the scales are re-inferred on every call (torchvision keeps the
    first call's), so a later batch of a different size is pooled correctly. They are stored
    in ``self.scales`` and the level range in ``self.k_min``/``self.k_max``.
    """

    def __init__(
        self,
        featmap_names: List[str],
        output_size: Union[int, Tuple[int, int], List[int]],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
    ):
        super().__init__()
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(pair(output_size, "output_size"))
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.scales: Optional[List[float]] = None
        self.k_min: Optional[int] = None
        self.k_max: Optional[int] = None

    def _setup_scales(self, features: List[Tensor], image_shapes: List[Tuple[int, int]]):
        if not image_shapes:
            raise ValueError("image_shapes must not be empty: pass (height, width) per image")
        max_h = max(int(s[0]) for s in image_shapes)
        max_w = max(int(s[1]) for s in image_shapes)
        scales = [infer_scale(f.shape[-2:], (max_h, max_w)) for f in features]
        self.scales = scales
        self.k_min = int(-math.log2(scales[0]))
        self.k_max = int(-math.log2(scales[-1]))
        return scales

    def forward(
        self,
        x: Dict[str, Tensor],
        boxes: List[Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(
                "none of featmap_names %s is in the feature dict (keys: %s)"
                % (self.featmap_names, list(x.keys()))
            )
        if not isinstance(boxes, (list, tuple)) or not all(
            isinstance(b, Tensor) and b.dim() == 2 and b.size(1) == 4 for b in boxes
        ):
            raise ValueError("boxes must be a list of Tensor[L, 4], one per image")
        scales = self._setup_scales(features, image_shapes)
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        )
        kwargs = dict(sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, scales[0], **kwargs)

        levels = map_levels(
            rois[:, 1:], self.k_min, self.k_max, self.canonical_scale, self.canonical_level
        )
        num_rois, channels = rois.size(0), features[0].size(1)
        result = features[0].new_zeros((num_rois, channels) + self.output_size)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[idx], self.output_size, scale, **kwargs)
            result = result.index_put((idx,), pooled.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        return "featmap_names=%s, output_size=%s, sampling_ratio=%s, aligned=%s" % (
            self.featmap_names,
            self.output_size,
            self.sampling_ratio,
            self.aligned,
        )
