"""``ImageList``: a padded batch of images and the size of each image before padding."""

from typing import List, Tuple

import torch
from torch import Tensor


class ImageList:
    """``tensors``: ``[N, C, H, W]`` (padded); ``image_sizes``: ``(height, width)`` per image
    after resizing, before padding (torchvision's ``ImageList``)."""

    def __init__(self, tensors: Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensors = tensors
        self.image_sizes = image_sizes

    def to(self, device: torch.device) -> "ImageList":
        return ImageList(self.tensors.to(device), self.image_sizes)
