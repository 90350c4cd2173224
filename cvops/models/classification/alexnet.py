"""AlexNet, torchvision's "one weird trick" variant (no LRN, no grouped convolutions):
parameter names equal ``torchvision.models.alexnet``'s."""

import torch.nn as nn

from .._registry import register_model
from ._base import SequentialHeadMixin, check_num_classes, check_prob, linear_or_identity


class AlexNet(SequentialHeadMixin, nn.Module):
    def __init__(self, *, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        dropout = check_prob(dropout, "dropout")
        self.num_features = 4096
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            linear_or_identity(4096, num_classes),
        )


@register_model
def alexnet(*, num_classes: int = 1000, dropout: float = 0.5) -> AlexNet:
    """AlexNet (torchvision's single-GPU variant), 61,100,840 parameters at 1000 classes."""
    return AlexNet(num_classes=num_classes, dropout=dropout)
