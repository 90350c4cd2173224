"""The detectors' input/output transform (torchvision's ``GeneralizedRCNNTransform``):
normalise, resize so the short side is ``min_size`` unless the long side would pass
``max_size``, pad the batch to a multiple of ``size_divisible``; after the model, scale the
boxes back to each original image and paste the masks."""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .image_list import ImageList
from .mask_head import paste_masks_in_image

Target = Dict[str, Tensor]


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Scale ``[N, 4]`` xyxy boxes from an image of ``original_size`` (h, w) to ``new_size``."""
    ratio_h, ratio_w = [
        torch.tensor(float(new), dtype=torch.float32, device=boxes.device)
        / torch.tensor(float(old), dtype=torch.float32, device=boxes.device)
        for new, old in zip(new_size, original_size)
    ]
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def resize_image_and_masks(
    image: Tensor,
    min_size: int,
    max_size: int,
    target: Optional[Target] = None,
    fixed_size: Optional[Tuple[int, int]] = None,
) -> Tuple[Tensor, Optional[Target]]:
    """Bilinear (``align_corners=False``) resize by ``min(min_size / short side,
    max_size / long side)`` (the output size recomputed from the factor), or to
    ``fixed_size`` = (width, height); target masks are resized nearest."""
    if fixed_size is not None:
        kwargs = dict(size=[fixed_size[1], fixed_size[0]])
    else:
        h, w = image.shape[-2:]
        scale = min(min_size / min(h, w), max_size / max(h, w))
        kwargs = dict(scale_factor=scale, recompute_scale_factor=True)
    image = F.interpolate(image[None], mode="bilinear", align_corners=False, **kwargs)[0]
    if target is not None and "masks" in target:
        masks = F.interpolate(target["masks"][:, None].float(), **kwargs)[:, 0].byte()
        target["masks"] = masks
    return image, target


class GeneralizedRCNNTransform(nn.Module):
    """``forward(images, targets=None) -> (ImageList, targets)``; ``postprocess(results,
    image_shapes, original_image_sizes)`` maps the detections back.

    ``min_size`` may be a tuple: training picks one at random per image (one
    ``torch.empty(1).uniform_`` draw each, as torchvision), evaluation uses the last."""

    def __init__(
        self,
        min_size,
        max_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        size_divisible: int = 32,
        fixed_size: Optional[Tuple[int, int]] = None,
        **kwargs,
    ):
        super().__init__()
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = size_divisible
        self.fixed_size = fixed_size
        self._skip_resize = kwargs.pop("_skip_resize", False)
        if kwargs:
            raise TypeError("unexpected transform options: %s" % ", ".join(sorted(kwargs)))

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(
                "images must be floating point in [0, 1], got dtype %s" % (image.dtype,)
            )
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _pick_min_size(self) -> int:
        index = int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())
        return self.min_size[index]

    def resize(self, image: Tensor, target: Optional[Target] = None):
        h, w = image.shape[-2:]
        if self.training:
            if self._skip_resize:
                return image, target
            size = self._pick_min_size()
        else:
            size = self.min_size[-1]
        image, target = resize_image_and_masks(image, size, self.max_size, target, self.fixed_size)
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target

    def batch_images(self, images: List[Tensor], size_divisible: int = 32) -> Tensor:
        """Zero-pad to the largest height/width, rounded up to ``size_divisible``."""
        c = max(int(img.shape[0]) for img in images)
        h = max(int(img.shape[1]) for img in images)
        w = max(int(img.shape[2]) for img in images)
        stride = float(size_divisible)
        h = int(math.ceil(h / stride) * stride)
        w = int(math.ceil(w / stride) * stride)
        batch = images[0].new_zeros((len(images), c, h, w))
        for i, img in enumerate(images):
            batch[i, : img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        return batch

    def forward(
        self, images: List[Tensor], targets: Optional[List[Target]] = None
    ) -> Tuple[ImageList, Optional[List[Target]]]:
        images = list(images)
        if targets is not None:
            targets = [dict(t) for t in targets]  # shallow copies: the caller's stay intact
        for i, image in enumerate(images):
            if image.dim() != 3:
                raise ValueError(
                    "images must be a list of [C, H, W] tensors, got shape %s"
                    % (tuple(image.shape),)
                )
            image, target = self.resize(
                self.normalize(image), targets[i] if targets is not None else None
            )
            images[i] = image
            if targets is not None:
                targets[i] = target
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        return ImageList(self.batch_images(images, self.size_divisible), sizes), targets

    def postprocess(
        self,
        result: List[Target],
        image_shapes: List[Tuple[int, int]],
        original_image_sizes: List[Tuple[int, int]],
    ) -> List[Target]:
        if self.training:
            return result
        for pred, size, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
            if "masks" in pred:
                pred["masks"] = paste_masks_in_image(pred["masks"], pred["boxes"], original)
        return result

    def extra_repr(self) -> str:
        return "mean=%s, std=%s, min_size=%s, max_size=%s" % (
            self.image_mean,
            self.image_std,
            self.min_size,
            self.max_size,
        )
