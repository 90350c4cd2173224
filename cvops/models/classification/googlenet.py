"""GoogLeNet (Inception v1) as in torchvision: BN (eps 1e-3) after every conv instead of LRN,
the "5x5" branch is a 3x3 conv, two auxiliary heads (on 4a and 4d) used only in training,
global average pooling, and ``transform_input``. Parameter names equal
``torchvision.models.googlenet``'s.

In training mode with ``aux_logits=True``, ``forward`` returns
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``; in eval mode (or without aux heads)
it returns the logits alone. The paper weights each auxiliary loss by 0.3:
:func:`googlenet_loss` computes ``CE(logits) + 0.3 * (CE(aux1) + CE(aux2))``.
"""

from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._registry import register_model
from ._base import ClassifierMixin, check_num_classes, check_prob, linear_or_identity

AUX_LOSS_WEIGHT = 0.3


class GoogLeNetOutputs(NamedTuple):
    logits: Tensor
    aux_logits2: Optional[Tensor]
    aux_logits1: Optional[Tensor]


class BasicConv2d(nn.Module):
    """conv (no bias) - BN (eps 1e-3) - ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four branches concatenated: 1x1; 1x1-3x3; 1x1-3x3 (the paper's 5x5); pool-1x1."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary head: 4x4 adaptive average pool, 1x1 conv 128, fc 2048-1024, dropout, fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = linear_or_identity(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


_INCEPTION = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(ClassifierMixin, nn.Module):
    def __init__(
        self,
        *,
        num_classes: int = 1000,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        init_weights: bool = True,
    ):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        dropout = check_prob(dropout, "dropout")
        dropout_aux = check_prob(dropout_aux, "dropout_aux")
        self.aux_logits = bool(aux_logits)
        self.transform_input = bool(transform_input)
        self.num_features = 1024

        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(*_INCEPTION["inception3a"])
        self.inception3b = Inception(*_INCEPTION["inception3b"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(*_INCEPTION["inception4a"])
        self.inception4b = Inception(*_INCEPTION["inception4b"])
        self.inception4c = Inception(*_INCEPTION["inception4c"])
        self.inception4d = Inception(*_INCEPTION["inception4d"])
        self.inception4e = Inception(*_INCEPTION["inception4e"])
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(*_INCEPTION["inception5a"])
        self.inception5b = Inception(*_INCEPTION["inception5b"])
        if self.aux_logits:
            self.aux1: Optional[InceptionAux] = InceptionAux(512, num_classes, dropout_aux)
            self.aux2: Optional[InceptionAux] = InceptionAux(528, num_classes, dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = linear_or_identity(1024, num_classes)

        if init_weights:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _transform_input(self, x: Tensor) -> Tensor:
        # ImageNet-normalised input -> the (x - 0.5) / 0.5 normalisation the original used.
        if not self.transform_input:
            return x
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _trunk(
        self, x: Tensor, with_aux: bool
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        use_aux = with_aux and self.training and self.aux1 is not None
        aux1 = self.aux1(x) if use_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if use_aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        return x, aux2, aux1

    def forward_features(self, x: Tensor) -> Tensor:
        """The inception5b map ``[N, 1024, H/32, W/32]`` (auxiliary heads are not run)."""
        return self._trunk(x, with_aux=False)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if pre_logits:
            return x
        return self.fc(self.dropout(x))

    def forward(self, x: Tensor) -> Union[GoogLeNetOutputs, Tensor]:
        x, aux2, aux1 = self._trunk(x, with_aux=True)
        logits = self.forward_head(x)
        if self.training and self.aux1 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the main classifier and, when present, the auxiliary heads' last layers."""
        self.num_classes = check_num_classes(num_classes)
        self.fc = linear_or_identity(1024, num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = linear_or_identity(1024, num_classes)


def googlenet_loss(
    outputs: Union[GoogLeNetOutputs, Tensor],
    target: Tensor,
    criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    aux_weight: float = AUX_LOSS_WEIGHT,
) -> Tensor:
    """Training loss ``criterion(logits) + aux_weight * (criterion(aux1) + criterion(aux2))``
    (paper: ``aux_weight = 0.3``); a plain tensor of logits gets ``criterion(logits)``."""
    criterion = criterion if criterion is not None else F.cross_entropy
    if isinstance(outputs, Tensor):
        return criterion(outputs, target)
    loss = criterion(outputs.logits, target)
    for aux in (outputs.aux_logits1, outputs.aux_logits2):
        if aux is not None:
            loss = loss + aux_weight * criterion(aux, target)
    return loss


@register_model
def googlenet(
    *,
    num_classes: int = 1000,
    aux_logits: bool = True,
    transform_input: bool = False,
    dropout: float = 0.2,
    dropout_aux: float = 0.7,
) -> GoogLeNet:
    """GoogLeNet: 13,004,888 parameters with the auxiliary heads, 6,624,904 without."""
    return GoogLeNet(
        num_classes=num_classes,
        aux_logits=aux_logits,
        transform_input=transform_input,
        dropout=dropout,
        dropout_aux=dropout_aux,
    )
