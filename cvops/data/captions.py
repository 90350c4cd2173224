"""A synthetic image-caption set for contrastive (CLIP) training offline: one coloured shape on a
textured background, captioned from templates ("a photo of a red circle").

Classes are (colour, shape) pairs: 4 colours x 3 shapes = 12, so zero-shot classification on
held-out images has a chance level of 1/12. The shapes and backgrounds are drawn by the
segmentation set's renderer (:class:`~cvops.data.segmentation.SyntheticSegmentation`).
"""

from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .segmentation import SyntheticSegmentation

COLORS = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.65, 0.15),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.95, 0.85, 0.1),
}
SHAPE_WORDS = {"disc": "circle", "rectangle": "rectangle", "triangle": "triangle"}
CAPTION_TEMPLATES = (
    "a photo of a {color} {shape}",
    "a {color} {shape}",
    "a {shape} that is {color}",
    "a picture of a {color} {shape} on a background",
    "{color} {shape}",
    "there is a {color} {shape} in the image",
)
ZERO_SHOT_TEMPLATES = ("a photo of a {}.",)  # held out from the caption templates' exact form


def caption_classes() -> List[str]:
    """The 12 class names, ``"red circle"``, ...; class ``k`` is shape ``k // 4``, colour
    ``k % 4``."""
    return ["%s %s" % (c, s) for s in SHAPE_WORDS.values() for c in COLORS]


class SyntheticCaptions(Dataset):
    """``(image, caption, label)``: ``image`` float ``[3, S, S]`` normalised with ``mean``/
    ``std`` (CLIP's by default), ``caption`` a str, ``label`` the class index. Sample ``i`` is a
    pure function of ``(seed, i)``, so a held-out split is another seed."""

    def __init__(
        self,
        num_samples: int = 1024,
        image_size: int = 32,
        seed: int = 0,
        mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
    ):
        if num_samples < 1:
            raise ValueError("num_samples must be positive, got %d" % num_samples)
        if image_size < 8:
            raise ValueError("image_size must be at least 8, got %d" % image_size)
        self.num_samples, self.image_size, self.seed = int(num_samples), int(image_size), seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.classes = caption_classes()

    def __len__(self) -> int:
        return self.num_samples

    def generate(self, index: int) -> Tuple[Tensor, str, int]:
        """Sample ``index`` with the image in [0, 1] (not normalised)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 7)
        s = self.image_size
        yy, xx = torch.meshgrid(
            torch.arange(s, dtype=torch.float32),
            torch.arange(s, dtype=torch.float32),
            indexing="ij",
        )
        label = int(torch.randint(len(self.classes), (1,), generator=g))
        kind = list(SHAPE_WORDS)[label // len(COLORS)]
        color_name = list(COLORS)[label % len(COLORS)]
        image = SyntheticSegmentation._background(g, yy, xx) * 0.6 + 0.2  # muted background
        region = SyntheticSegmentation._shape(kind, g, yy, xx)
        for _ in range(8):  # redraw shapes that fall mostly outside the image
            if region.sum() >= 0.06 * s * s:
                break
            region = SyntheticSegmentation._shape(kind, g, yy, xx)
        jitter = (torch.rand(3, generator=g) - 0.5) * 0.15
        color = (torch.tensor(COLORS[color_name]) + jitter).clamp(0, 1)
        image = torch.where(region, color[:, None, None], image)
        image = (image + torch.randn(image.shape, generator=g) * 0.03).clamp(0, 1)
        template = CAPTION_TEMPLATES[int(torch.randint(len(CAPTION_TEMPLATES), (1,), generator=g))]
        caption = template.format(color=color_name, shape=SHAPE_WORDS[kind])
        return image, caption, label

    def __getitem__(self, index: int) -> Tuple[Tensor, str, int]:
        image, caption, label = self.generate(index)
        return (image - self.mean) / self.std, caption, label
