"""Mask-aware augmentation for segmentation with torchvision.transforms.v2, and a dataset
wrapper that makes random augmentation a function of (seed, epoch, sample index).

The v2 transforms see the image as ``tv_tensors.Image`` and the mask as ``tv_tensors.Mask``,
so geometric transforms move both with the same parameters and masks are resampled with
nearest neighbour (class indices and the ignore value are never blended).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2


class SegmentationTransform:
    """``(image [3,H,W] float, mask [H,W] int64) -> (image, mask)`` at ``size``.

    ``train=True``: ``RandomResizedCrop(size, scale)`` and a horizontal flip with probability
    ``hflip``. ``train=False``: ``Resize(size)`` (``size=None`` keeps the input size).
    """

    def __init__(self, size=None, train: bool = False, scale=(0.5, 1.0), hflip: float = 0.5):
        ops = []
        if train:
            if size is None:
                raise ValueError("a training transform needs a size")
            ops.append(v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True))
            if hflip > 0:
                ops.append(v2.RandomHorizontalFlip(hflip))
        elif size is not None:
            ops.append(v2.Resize(size, antialias=True))
        self.transform = v2.Compose(ops)

    def __call__(self, image: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(Tensor), mask.as_subclass(Tensor)

    def __repr__(self) -> str:
        return "SegmentationTransform(%r)" % (self.transform,)


class SeededTransform(Dataset):
    """``dataset`` with ``transform(*sample)`` applied under a torch RNG seeded from
    ``(seed, epoch, index)``: the augmentation of a sample does not depend on which process
    or DataLoader worker loads it, nor on what ran before, so a 1-process and a 2-process run
    (or a resumed run) see the same augmented samples. Call :meth:`set_epoch` each epoch
    (the engine does)."""

    def __init__(self, dataset, transform, seed: int = 0):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # num_classes etc. of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + index)
            return self.transform(*sample)


def seeded(dataset, transform: Optional[SegmentationTransform], seed: int):
    """``dataset`` wrapped in :class:`SeededTransform`, or as it is when ``transform`` is None."""
    return dataset if transform is None else SeededTransform(dataset, transform, seed)
