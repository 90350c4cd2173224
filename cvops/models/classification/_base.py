"""The interface every cvops classifier shares, so detection and segmentation can reuse the
backbones: ``forward_features`` (the trunk, unpooled), ``forward_head`` (pooling and
classifier), ``get_classifier`` and ``reset_classifier``."""

from typing import Optional

import torch.nn as nn
from torch import Tensor


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``), never
    going down by more than 10%: the channel rounding of MobileNet in torchvision and timm."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError("num_classes must be an int, got %s" % type(num_classes).__name__)
    if num_classes < 0:
        raise ValueError(
            "num_classes must be >= 0 (0 removes the classifier), got %d" % num_classes
        )
    return num_classes


def check_prob(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a float, got %s" % (name, type(value).__name__))
    if not 0.0 <= value <= 1.0:
        raise ValueError("%s must be in [0, 1], got %r" % (name, value))
    return float(value)


def linear_or_identity(in_features: int, num_classes: int) -> nn.Module:
    """``nn.Linear(in_features, num_classes)``, or ``nn.Identity()`` for ``num_classes == 0``
    (a headless backbone whose ``forward`` returns pooled features)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a float, got %s" % (name, type(value).__name__))
    if not value > 0:
        raise ValueError("%s must be > 0, got %r" % (name, value))
    return float(value)


class ClassifierMixin:
    """``forward(x) == forward_head(forward_features(x))``.

    Subclasses set ``num_features`` (the classifier's input width), ``num_classes``, and
    implement ``forward_features``, ``forward_head`` and ``reset_classifier``.
    ``forward_head(x, pre_logits=True)`` returns the pooled features the classifier sees.
    """

    num_features: int
    num_classes: int

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class SequentialHeadMixin(ClassifierMixin):
    """``features`` trunk, then ``avgpool``, flatten and a ``classifier`` Sequential whose
    last layer is the classifier (AlexNet, VGG)."""

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)
        if not pre_logits:
            return self.classifier(x)
        last = len(self.classifier) - 1  # (a loop, not a slice: TorchScript types the two apart)
        for i, layer in enumerate(self.classifier):
            if i < last:
                x = layer(x)
        return x

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = check_num_classes(num_classes)
        self.classifier[-1] = linear_or_identity(self.num_features, num_classes)
