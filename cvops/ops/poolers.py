"""MultiScaleRoIAlign: FPN RoI pooling on top of :func:`cvops.roi_align`.

A drop-in for ``torchvision.ops.MultiScaleRoIAlign`` (same constructor, same
``forward(x, boxes, image_shapes)``), plus ``aligned=True`` for detectron2's convention.
"""

import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._errors import BoxesShapeError
from ._utils import boxes_to_rois, pair
from .roi_align import roi_align


def _scale_exponent(feature_size: List[int], image_size: List[int]) -> int:
    # log2 of the ratio, rounded (halves to even, like torch.round); TorchScript has no
    # math.log2, and rounding makes log(x) / log(2) exact enough.
    approx = float(feature_size[0]) / float(image_size[0])
    return int(round(math.log(approx) / math.log(2.0)))


def infer_scale(feature_size: List[int], image_size: List[int]) -> float:
    """A feature map's scale relative to the (padded) image: the power of two closest to
    ``feature_height / image_height`` in log2 (torchvision's rule, which uses the height)."""
    return 2.0 ** float(_scale_exponent(feature_size, image_size))


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


# The helpers of MultiScaleRoIAlign.forward are registered with torch.fx.wrap, so that
# torch.fx.symbolic_trace (and torchvision's get_graph_node_names / create_feature_extractor)
# records each as one node instead of iterating over the proxies of the feature dict and the
# box list. They are also what TorchScript compiles.


@torch.fx.wrap
def _filter_features(x: Dict[str, Tensor], featmap_names: List[str]) -> List[Tensor]:
    """The maps of ``x`` named in ``featmap_names``, in the order of ``x`` (torchvision's)."""
    features: List[Tensor] = []
    for name, value in x.items():
        if name in featmap_names:
            features.append(value)
    if len(features) == 0:
        raise ValueError(
            "none of featmap_names %s is in the feature dict (keys: %s)"
            % (featmap_names, list(x.keys()))
        )
    return features


@torch.fx.wrap
def _setup_scales(
    features: List[Tensor], image_shapes: List[Tuple[int, int]]
) -> Tuple[List[float], int, int]:
    """(scale of each level, k_min, k_max) from the level sizes and the largest image."""
    if len(image_shapes) == 0:
        raise ValueError("image_shapes must not be empty: pass (height, width) per image")
    max_h = max([int(s[0]) for s in image_shapes])
    max_w = max([int(s[1]) for s in image_shapes])
    exponents = [_scale_exponent(f.shape[-2:], [max_h, max_w]) for f in features]
    scales = [2.0 ** float(e) for e in exponents]
    return scales, -exponents[0], -exponents[-1]


@torch.fx.wrap
def _multiscale_roi_align(
    features: List[Tensor],
    boxes: List[Tensor],
    output_size: List[int],
    sampling_ratio: int,
    scales: List[float],
    k_min: int,
    k_max: int,
    canonical_scale: int,
    canonical_level: int,
    aligned: bool,
) -> Tensor:
    """Pool each box from the level the FPN rule picks; results in the order of the boxes."""
    if not torch.jit.is_scripting():
        if not isinstance(boxes, (list, tuple)):
            raise BoxesShapeError("boxes must be a list of Tensor[L, 4], one per image")
    rois = boxes_to_rois(boxes)
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, scales[0], sampling_ratio, aligned)

    levels = map_levels(rois[:, 1:], k_min, k_max, float(canonical_scale), canonical_level)
    num_rois, channels = rois.size(0), features[0].size(1)
    # map_levels gives every box one level in [0, len(features)) (non-finite boxes too: the
    # clamp), so every row is written below and none needs a zero fill first (50 MB for
    # Faster R-CNN's 1000 boxes)
    result = features[0].new_empty((num_rois, channels, output_size[0], output_size[1]))
    for level, feature in enumerate(features):
        idx = torch.where(levels == level)[0]
        pooled = roi_align(feature, rois[idx], output_size, scales[level], sampling_ratio, aligned)
        result.index_put_((idx,), pooled.to(result.dtype))
    return result


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

    # Class-level annotations: TorchScript types the attributes set to None in __init__.
    scales: Optional[List[float]]
    k_min: Optional[int]
    k_max: Optional[int]

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
        self.output_size: Tuple[int, int] = pair(output_size, "output_size")
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.scales: Optional[List[float]] = None
        self.k_min: Optional[int] = None
        self.k_max: Optional[int] = None

    def forward(
        self,
        x: Dict[str, Tensor],
        boxes: List[Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tensor:
        features = _filter_features(x, self.featmap_names)
        scales, k_min, k_max = _setup_scales(features, image_shapes)
        self.scales, self.k_min, self.k_max = scales, k_min, k_max
        return _multiscale_roi_align(
            features,
            boxes,
            self.output_size,
            self.sampling_ratio,
            scales,
            k_min,
            k_max,
            self.canonical_scale,
            self.canonical_level,
            self.aligned,
        )

    def extra_repr(self) -> str:
        # torchvision's repr, plus aligned when it is not torchvision's behaviour.
        s = "featmap_names=%s, output_size=%s, sampling_ratio=%s" % (
            self.featmap_names,
            self.output_size,
            self.sampling_ratio,
        )
        return s + (", aligned=True" if self.aligned else "")
