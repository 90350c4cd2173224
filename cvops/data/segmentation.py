"""Semantic segmentation datasets: synthetic shapes generated on the fly, image/mask folders and
Pascal VOC-layout folders (one code path for the two on-disk layouts), a writer that puts a
synthetic dataset on disk in either layout, and the torchvision.transforms.v2 augmentation.

Every dataset returns ``(image, mask)``: ``image`` float32 ``[3, H, W]`` in ``[0, 1]``, ``mask``
int64 ``[H, W]`` with class indices and ``IGNORE_INDEX`` (255) where a pixel is not scored.
"""

import math
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

IGNORE_INDEX = 255
SHAPES = ("disc", "rectangle", "triangle")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# The Pascal VOC colour map (the palette of its SegmentationClass PNGs): class i's colour comes
# from the bits of i, 255 (ignore) is cream.
def voc_palette() -> List[int]:
    """The 256-entry Pascal VOC palette, flattened [r0, g0, b0, r1, ...] (PIL's putpalette)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    palette[3 * 255 : 3 * 256] = [224, 224, 192]
    return palette


def class_colors(num_classes: int) -> List[Tuple[int, int, int]]:
    """One RGB colour per class (the VOC palette), for drawing masks."""
    p = voc_palette()
    return [tuple(p[3 * i : 3 * i + 3]) for i in range(num_classes)]


def ignore_borders(mask: Tensor, width: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``mask`` with every pixel within ``width`` pixels of a class boundary set to
    ``ignore_index`` (the way VOC marks object outlines as 'void')."""
    if width <= 0:
        return mask
    k = 2 * width + 1
    m = mask.float()[None, None]
    hi = F.max_pool2d(m, k, stride=1, padding=width)
    lo = -F.max_pool2d(-m, k, stride=1, padding=width)
    out = mask.clone()
    out[(hi != lo)[0, 0]] = ignore_index
    return out


class SyntheticSegmentation(Dataset):
    """Coloured discs, rectangles and triangles on textured, noisy backgrounds, with their masks.

    Sample ``i`` is a pure function of ``(seed, i)``, so every process (DDP rank, DataLoader
    worker) sees the same data without sharing anything. Class 0 is the background; object
    class ``k >= 1`` has the shape ``SHAPES[(k - 1) % 3]`` and a class colour (with jitter), so
    more than three classes stay separable. Later objects occlude earlier ones.

    Args:
        num_samples: length of the dataset.
        image_size: ``int`` or ``(H, W)``.
        num_classes: classes including the background (>= 2).
        seed: the dataset's seed; use different seeds for train and val splits.
        max_objects: 1 to ``max_objects`` objects per image.
        ignore_border: pixels within this distance of an object outline get ``IGNORE_INDEX``.
        binary: all objects are class 1 (foreground / background masks).
        transform: called as ``transform(image, mask)``, returns ``(image, mask)``.
    """

    def __init__(
        self,
        num_samples: int = 256,
        image_size=64,
        num_classes: int = 4,
        seed: int = 0,
        max_objects: int = 4,
        ignore_border: int = 0,
        binary: bool = False,
        transform: Optional[Callable] = None,
    ):
        if num_classes < 2:
            raise ValueError(
                "num_classes must be >= 2 (background + objects), got %d" % num_classes
            )
        self.num_samples = int(num_samples)
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.num_classes = 2 if binary else int(num_classes)
        self.object_classes = int(num_classes) - 1
        self.seed, self.max_objects = int(seed), int(max_objects)
        self.ignore_border, self.binary, self.transform = int(ignore_border), binary, transform
        g = torch.Generator().manual_seed(12345)
        # Class colours spread around the hue circle (fixed, independent of the seed).
        self.colors = torch.rand(max(self.object_classes, 1), 3, generator=g) * 0.6 + 0.2

    def __len__(self) -> int:
        return self.num_samples

    def generate(self, index: int) -> Tuple[Tensor, Tensor]:
        """Sample ``index`` before the transform."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        h, w = self.size
        yy, xx = torch.meshgrid(
            torch.arange(h, dtype=torch.float32),
            torch.arange(w, dtype=torch.float32),
            indexing="ij",
        )
        image = self._background(g, yy, xx)
        mask = torch.zeros(h, w, dtype=torch.int64)
        n = int(torch.randint(1, self.max_objects + 1, (1,), generator=g))
        for _ in range(n):
            cls = int(torch.randint(1, self.object_classes + 1, (1,), generator=g))
            region = self._shape(SHAPES[(cls - 1) % len(SHAPES)], g, yy, xx)
            color = (self.colors[cls - 1] + (torch.rand(3, generator=g) - 0.5) * 0.2).clamp(0, 1)
            shade = 1 + 0.15 * torch.sin(xx / max(w, 1) * 6 + float(torch.rand(1, generator=g)) * 6)
            image = torch.where(region, color[:, None, None] * shade, image)
            mask[region] = 1 if self.binary else cls
        image = (image + torch.randn(image.shape, generator=g) * 0.04).clamp(0, 1)
        return image, ignore_borders(mask, self.ignore_border)

    @staticmethod
    def _background(g, yy, xx) -> Tensor:
        base = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.25
        image = base.expand(3, *yy.shape).clone()
        for _ in range(3):  # a few random gratings as texture
            freq = torch.rand(2, generator=g) * 0.6
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            amp = torch.rand(3, 1, 1, generator=g) * 0.12
            image = image + amp * torch.sin(freq[0] * yy + freq[1] * xx + phase)
        return image

    @staticmethod
    def _shape(kind: str, g, yy, xx) -> Tensor:
        h, w = yy.shape
        s = min(h, w)
        cy, cx = float(torch.rand(1, generator=g)) * h, float(torch.rand(1, generator=g)) * w
        size = s * (0.12 + 0.2 * float(torch.rand(1, generator=g)))
        if kind == "disc":
            return (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
        if kind == "rectangle":
            a, b = size * (0.6 + 0.8 * torch.rand(2, generator=g))
            return ((yy - cy).abs() <= a) & ((xx - cx).abs() <= b)
        # Triangle: three vertices around the centre; inside = same side of all three edges.
        angles = float(torch.rand(1, generator=g)) * 2 * math.pi + torch.tensor([0.0, 2.1, 4.2])
        angles = angles + (torch.rand(3, generator=g) - 0.5) * 0.6
        vy, vx = cy + 1.4 * size * torch.sin(angles), cx + 1.4 * size * torch.cos(angles)
        sides = []
        for i in range(3):
            j = (i + 1) % 3
            sides.append((vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i]))
        sides = torch.stack(sides)
        return (sides >= 0).all(0) | (sides <= 0).all(0)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image, mask = self.generate(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


def read_image(path: str) -> Tensor:
    """An image file as float32 ``[3, H, W]`` in ``[0, 1]`` (grey and RGBA become RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    # Transposed and scaled in numpy: torch's strided uint8 -> float copy of a permuted view
    # took ~12 ms for a small image with 2 threads here, numpy ~0.1 ms.
    planes = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(planes).div_(255)


def read_mask(path: str) -> Tensor:
    """A mask PNG as int64 ``[H, W]``: palette PNGs (VOC) give their indices, grey PNGs their
    values."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(
                "%s: a mask must be a palette or greyscale PNG, got mode %s" % (path, im.mode)
            )
        array = np.asarray(im, dtype=np.int64)
    return torch.from_numpy(array.copy())


class SegmentationFiles(Dataset):
    """Images and masks listed as files: the one code path behind :func:`folder_dataset` and
    :func:`voc_dataset`. ``transform(image, mask)`` as in :class:`SyntheticSegmentation`;
    ``binary=True`` maps every class but 0 and ``IGNORE_INDEX`` to 1."""

    def __init__(
        self,
        images: Sequence[str],
        masks: Sequence[str],
        num_classes: int,
        transform: Optional[Callable] = None,
        binary: bool = False,
    ):
        if len(images) != len(masks):
            raise ValueError("%d images but %d masks" % (len(images), len(masks)))
        if not images:
            raise ValueError("no images")
        self.images, self.masks = list(images), list(masks)
        self.num_classes, self.transform = 2 if binary else int(num_classes), transform
        self.binary = binary

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image, mask = read_image(self.images[index]), read_mask(self.masks[index])
        if image.shape[1:] != mask.shape:
            raise ValueError(
                "%s is %s but its mask %s is %s"
                % (self.images[index], tuple(image.shape[1:]), self.masks[index], tuple(mask.shape))
            )
        if self.binary:
            mask = torch.where((mask != 0) & (mask != IGNORE_INDEX), 1, mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


def _find_image(directory: str, stem: str) -> str:
    for ext in IMAGE_EXTENSIONS:
        path = os.path.join(directory, stem + ext)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("no image named %s.* in %s" % (stem, directory))


def folder_dataset(
    root: str, split: str, num_classes: int, transform=None, binary: bool = False
) -> SegmentationFiles:
    """``root/<split>/images/NAME.{png,jpg,...}`` with ``root/<split>/masks/NAME.png``
    (class indices as grey or palette values, 255 = ignore)."""
    image_dir = os.path.join(root, split, "images")
    mask_dir = os.path.join(root, split, "masks")
    if not os.path.isdir(mask_dir):
        raise FileNotFoundError("no folder %s (expected root/<split>/{images,masks}/)" % mask_dir)
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(mask_dir) if f.endswith(".png"))
    images = [_find_image(image_dir, s) for s in stems]
    masks = [os.path.join(mask_dir, s + ".png") for s in stems]
    return SegmentationFiles(images, masks, num_classes, transform, binary)


def voc_dataset(
    root: str, split: str, num_classes: int = 21, transform=None, binary: bool = False
) -> SegmentationFiles:
    """Pascal VOC layout: ``root/ImageSets/Segmentation/<split>.txt`` lists the ids,
    ``root/JPEGImages/<id>.jpg`` and ``root/SegmentationClass/<id>.png`` (palette PNG).
    ``root`` is the folder holding these (``.../VOCdevkit/VOC2012``)."""
    listing = os.path.join(root, "ImageSets", "Segmentation", split + ".txt")
    with open(listing) as f:
        ids = [line.strip() for line in f if line.strip()]
    images = [_find_image(os.path.join(root, "JPEGImages"), i) for i in ids]
    masks = [os.path.join(root, "SegmentationClass", i + ".png") for i in ids]
    return SegmentationFiles(images, masks, num_classes, transform, binary)


def write_segmentation_dataset(
    dataset,
    root: str,
    layout: str = "folder",
    split: str = "train",
    image_format: Optional[str] = None,
) -> List[str]:
    """Write ``dataset`` (``(image [3,H,W] in [0,1], mask [H,W])`` samples, e.g.
    :meth:`SyntheticSegmentation.generate` through the dataset) to disk in the ``folder`` or
    ``voc`` layout under ``root`` as split ``split``; returns the ids written. Images are PNG
    in the folder layout and JPEG in the VOC layout unless ``image_format`` says otherwise
    (``"png"``/``"jpg"``); masks are palette PNGs (the VOC palette) in both."""
    from PIL import Image

    if layout not in ("folder", "voc"):
        raise ValueError("layout must be 'folder' or 'voc', got %r" % (layout,))
    fmt = image_format or ("png" if layout == "folder" else "jpg")
    if layout == "folder":
        image_dir = os.path.join(root, split, "images")
        mask_dir = os.path.join(root, split, "masks")
    else:
        image_dir = os.path.join(root, "JPEGImages")
        mask_dir = os.path.join(root, "SegmentationClass")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    palette = voc_palette()
    ids = []
    for i in range(len(dataset)):
        image, mask = dataset[i]
        name = "%s_%06d" % (split, i)
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(os.path.join(image_dir, "%s.%s" % (name, fmt)), quality=95)
        m = Image.fromarray(mask.to(torch.uint8).numpy(), mode="P")
        m.putpalette(palette)
        m.save(os.path.join(mask_dir, name + ".png"))
        ids.append(name)
    if layout == "voc":
        sets = os.path.join(root, "ImageSets", "Segmentation")
        os.makedirs(sets, exist_ok=True)
        with open(os.path.join(sets, split + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
    return ids
