"""Pieces the segmentation models share: argument checks, the ``weights`` guard, the
torchvision-style output dict, an ``IntermediateLayerGetter`` and the FCN head."""

from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._conv_bn import FrozenBatchNorm2d
from .._fused_layers import conv_block
from ..classification._base import check_num_classes


def check_weights(**weights) -> None:
    """``weights``/``weights_backbone`` are accepted only as None: nothing is downloaded here.
    Load a checkpoint with ``model.load_state_dict(state_dict)`` instead."""
    for name, value in weights.items():
        if value is not None:
            raise ValueError(
                "%s=%r is not supported: cvops builds models with random weights and never "
                "downloads; pass %s=None and load a checkpoint with "
                "model.load_state_dict(torch.load(path))" % (name, value, name)
            )


def check_seg_classes(num_classes) -> int:
    """A segmentation head needs at least one output channel."""
    num_classes = check_num_classes(num_classes)
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1 for a segmentation model, got %d" % num_classes)
    return num_classes


def check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s must be an int, got %s" % (name, type(value).__name__))
    if value < minimum:
        raise ValueError("%s must be >= %d, got %d" % (name, minimum, value))
    return value


def check_choice(value, name: str, choices):
    if value not in choices:
        raise ValueError(
            "%s must be one of %s, got %r" % (name, ", ".join(repr(c) for c in choices), value)
        )
    return value


def resize_to(x: Tensor, size: List[int]) -> Tensor:
    """Bilinear resize (align_corners=False) to ``size``, torchvision's segmentation upsampling."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class IntermediateLayerGetter(nn.ModuleDict):
    """The children of ``model`` up to the last one named in ``return_layers``
    (``{child name: output name}``), run in order; ``forward`` returns an OrderedDict of the
    named outputs. Keys equal torchvision's ``IntermediateLayerGetter``'s (the children's
    names), so e.g. a ResNet body keeps ``conv1``, ``bn1``, ``layer1``... and drops
    ``avgpool``/``fc``."""

    def __init__(self, model: nn.Module, return_layers: Dict[str, str]):
        names = [name for name, _ in model.named_children()]
        missing = set(return_layers) - set(names)
        if missing:
            raise ValueError(
                "return_layers %s are not children of the model (%s)"
                % (sorted(missing), ", ".join(names))
            )
        wanted = dict(return_layers)
        layers = OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = OrderedDict()
        if torch.jit.is_scripting():  # each child on its own (conv_block takes modules)
            for name, module in self.items():
                x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out
        items = list(self.items())
        i = 0
        while i < len(items):
            if self._conv_bn_relu_at(items, i):
                # a ResNet stem: one convolution with the BN folded and the ReLU fused; its
                # output is the ReLU's
                x = conv_block(items[i][1], x, items[i + 1][1], relu=True)
                i += 2
            else:
                x = items[i][1](x)
            name = items[i][0]
            if name in self.return_layers:
                out[self.return_layers[name]] = x
            i += 1
        return out

    def _conv_bn_relu_at(self, items: List[Tuple[str, nn.Module]], i: int) -> bool:
        """Whether children i, i + 1, i + 2 are a conv, a BatchNorm and a ReLU whose
        intermediate outputs nobody asked for."""
        if i + 2 >= len(items) or type(items[i][1]) is not nn.Conv2d:
            return False
        bn, relu = items[i + 1][1], items[i + 2][1]
        return (
            isinstance(bn, (nn.BatchNorm2d, FrozenBatchNorm2d))
            and isinstance(relu, nn.ReLU)
            and items[i][0] not in self.return_layers
            and items[i + 1][0] not in self.return_layers
        )


class FCNHead(nn.Sequential):
    """3x3 conv (in/4 channels, no bias) - BN - ReLU - Dropout(0.1) - 1x1 conv to classes:
    torchvision's ``FCNHead`` (same keys ``0``, ``1``, ``4``)."""

    def __init__(self, in_channels: int, channels: int):
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, channels, 1),
        )


class SimpleSegmentationModel(nn.Module):
    """``backbone`` (returning a dict with "out" and, with an aux head, "aux" features), a
    ``classifier`` and an optional ``aux_classifier``; logits are resized bilinearly to the
    input size. Keys and behaviour equal torchvision's ``_SimpleSegmentationModel`` (FCN,
    DeepLabV3)."""

    def __init__(
        self, backbone: nn.Module, classifier: nn.Module, aux_classifier: Optional[nn.Module]
    ):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result: Dict[str, Tensor] = OrderedDict()
        result["out"] = resize_to(self.classifier(features["out"]), size)
        if self.aux_classifier is not None:
            result["aux"] = resize_to(self.aux_classifier(features["aux"]), size)
        return result


def resnet_backbone(
    name: str, *, output_stride: int = 8, aux: bool = False, norm_layer=None
) -> IntermediateLayerGetter:
    """The dilated cvops ResNet body torchvision's FCN/DeepLabV3 use: ``layer4`` as "out"
    (and ``layer3`` as "aux" when ``aux``), output stride 8 (layer3 and layer4 dilated) or
    16 (layer4 dilated)."""
    from ..classification import resnet as _resnet

    builders = {"resnet50": _resnet.resnet50, "resnet101": _resnet.resnet101}
    check_choice(name, "backbone", tuple(builders))
    check_choice(output_stride, "output_stride", (8, 16))
    dilation = [False, output_stride == 8, True]
    body = builders[name](
        num_classes=0, replace_stride_with_dilation=dilation, norm_layer=norm_layer
    )
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    return IntermediateLayerGetter(body, return_layers)


def build_resnet_segmentation(
    model_cls,
    backbone_name: str,
    make_head: Callable[[int, int, int], nn.Module],
    *,
    weights=None,
    progress: bool = True,
    num_classes: Optional[int] = 21,
    aux_loss: Optional[bool] = None,
    weights_backbone=None,
    output_stride: int = 8,
) -> nn.Module:
    """torchvision's segmentation builder signature (``weights``, ``progress``,
    ``num_classes``, ``aux_loss``, ``weights_backbone``) plus ``output_stride``:
    ``model_cls(resnet body, make_head(2048, num_classes, output_stride), aux FCNHead)``."""
    del progress  # accepted for torchvision's signature; nothing is downloaded
    check_weights(weights=weights, weights_backbone=weights_backbone)
    num_classes = check_seg_classes(21 if num_classes is None else num_classes)
    aux = bool(aux_loss)
    backbone = resnet_backbone(backbone_name, output_stride=output_stride, aux=aux)
    aux_classifier = FCNHead(1024, num_classes) if aux else None
    return model_cls(backbone, make_head(2048, num_classes, output_stride), aux_classifier)
