"""DeepLab v1, v2, v3.

- ``deeplabv1_largefov``: Chen et al., "Semantic Image Segmentation with Deep Convolutional
  Nets and Fully Connected CRFs" (ICLR 2015, arXiv:1412.7062), DeepLab-LargeFOV: VGG-16 with
  pool4/pool5 at stride 1 (3x3 pools), conv5 dilation 2, fc6 a 3x3 conv with dilation 12 and
  1024 channels, fc7 1x1 1024, fc8 1x1 to classes; output stride 8, logits up-sampled
  bilinearly (the CRF post-processing is not part of the network).
- ``deeplabv2``: Chen et al., "DeepLab: ... Atrous Convolution, and Fully Connected CRFs"
  (TPAMI 2017, arXiv:1606.00915), ASPP-L: four branches at rates 6/12/18/24 whose logits are
  summed. ``backbone="vgg16"``: each branch is fc6 (3x3, rate r, 1024) - fc7 (1x1 1024) -
  fc8; ``backbone="resnet101"``: each branch is one 3x3 conv at rate r from the dilated
  ResNet-101's layer4 (output stride 8) to the classes. The ResNet is cvops's (torchvision's
  "v1.5", stride on the 3x3), not the Caffe ResNet's stride-on-1x1.
- ``deeplabv3_resnet50/101``: Chen et al., "Rethinking Atrous Convolution for Semantic Image
  Segmentation" (arXiv:1706.05587) as torchvision builds it (same state_dict keys and
  outputs): ASPP (1x1, three 3x3 at rates 12/24/36, image pooling; 256 ch with BN; concat,
  1x1 256, dropout 0.5), 3x3 256 - BN - ReLU, 1x1 to classes, optional aux ``FCNHead`` on
  layer3. ``output_stride=16`` (not in torchvision) dilates only layer4 and uses rates
  6/12/18, as in the paper.
- ``deeplabv3_mobilenet_v2``: the same head on cvops's MobileNetV2 (cvops depthwise
  kernels), the 320-channel features at output stride 16 (default) or 8, aux head on the
  32-channel stride-8 features.
"""

from collections import OrderedDict
from typing import Dict, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .._conv_bn import is_depthwise
from .._registry import register_model
from ..classification import mobilenet_v2 as _mobilenet_v2
from ._utils import (
    FCNHead,
    IntermediateLayerGetter,
    SimpleSegmentationModel,
    build_resnet_segmentation,
    check_choice,
    check_seg_classes,
    check_weights,
    resize_to,
    resnet_backbone,
)
from ._vgg import convolutionalize_vgg16, fc_layers, init_normal_, vgg16_trunk

ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


# ---------------------------------------------------------------------------- v1 and v2


class DeepLabVGG(nn.Module):
    """DeepLab v1 (one fc branch) or v2 (ASPP-L: several, summed) on the dilated VGG-16."""

    def __init__(self, *, num_classes: int = 21, rates: Sequence[int] = (12,)):
        super().__init__()
        self.num_classes = check_seg_classes(num_classes)
        self.rates = tuple(rates)
        self.backbone = vgg16_trunk(dilated=True)
        branches = [
            fc_layers(nn.Conv2d(512, 1024, 3, padding=r, dilation=r), 1024, num_classes)
            for r in self.rates
        ]
        if len(branches) == 1:
            self.classifier = branches[0]
        else:
            self.classifier = ASPPSum(branches)
        init_normal_(self.classifier, 0.01)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return {"out": resize_to(self.classifier(self.backbone(x)), x.shape[-2:])}

    def load_vgg16_state_dict(self, state_dict: Dict[str, Tensor]) -> None:
        """Initialise the trunk and every fc6/fc7 from a torchvision ``vgg16`` state_dict,
        the fc layers decimated to 1024 channels and 3x3 taps as in DeepLab; fc8 is kept."""
        prefixes = (
            tuple("classifier.branches.%d." % i for i in range(len(self.rates)))
            if isinstance(self.classifier, ASPPSum)
            else ("classifier.",)
        )
        converted = convolutionalize_vgg16(
            state_dict, fc_prefixes=prefixes, fc6_channels=1024, fc6_kernel=3
        )
        own = self.state_dict()
        own.update(converted)
        self.load_state_dict(own, strict=True)


class ASPPSum(nn.Module):
    """DeepLab v2's ASPP: parallel branches (one per rate) whose logits are summed."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        logits = [branch(x) for branch in self.branches]  # (TorchScript: no ModuleList slices)
        out = logits[0]
        for branch_logits in logits[1:]:
            out = out + branch_logits
        return out


class DeepLabV2ResNet(nn.Module):
    """DeepLab v2 on the dilated ResNet (output stride 8): ASPP-L of 3x3 convs on layer4."""

    def __init__(
        self, *, num_classes: int = 21, backbone: str = "resnet101", rates=(6, 12, 18, 24)
    ):
        super().__init__()
        self.num_classes = check_seg_classes(num_classes)
        self.rates = tuple(rates)
        self.backbone = resnet_backbone(backbone, output_stride=8)
        self.classifier = ASPPSum(
            [nn.Conv2d(2048, num_classes, 3, padding=r, dilation=r) for r in self.rates]
        )
        init_normal_(self.classifier, 0.01)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.backbone(x)["out"]
        return {"out": resize_to(self.classifier(features), x.shape[-2:])}


@register_model
def deeplabv1_largefov(*, num_classes: int = 21, weights=None, weights_backbone=None):
    """DeepLab-LargeFOV (v1) on VGG-16; 20,505,429 parameters at 21 classes."""
    check_weights(weights=weights, weights_backbone=weights_backbone)
    return DeepLabVGG(num_classes=num_classes, rates=(12,))


@register_model
def deeplabv2(
    *, num_classes: int = 21, backbone: str = "resnet101", weights=None, weights_backbone=None
):
    """DeepLab v2 ASPP-L (rates 6/12/18/24, summed logits) on ``backbone`` "resnet101"
    (default) or "vgg16"."""
    check_weights(weights=weights, weights_backbone=weights_backbone)
    check_choice(backbone, "backbone", ("resnet101", "vgg16"))
    if backbone == "vgg16":
        return DeepLabVGG(num_classes=num_classes, rates=(6, 12, 18, 24))
    return DeepLabV2ResNet(num_classes=num_classes, backbone=backbone)


# ---------------------------------------------------------------------------- v3


class ASPPConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Sequential):
    """Image pooling: global average, 1x1 conv - BN - ReLU, broadcast back (bilinear)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:  # (a loop, not super().forward: TorchScript has no super())
            x = module(x)
        return resize_to(x, size)


class ASPP(nn.Module):
    """DeepLab v3's ASPP (torchvision's keys: ``convs.{0..4}``, ``project``)."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.atrous_rates = tuple(atrous_rates)
        modules = [
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
        ]
        modules += [ASPPConv(in_channels, out_channels, r) for r in self.atrous_rates]
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(
            nn.Conv2d(len(modules) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP - 3x3 256 - BN - ReLU - 1x1 to classes (torchvision's ``DeepLabHead``)."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates=(12, 24, 36)):
        super().__init__(
            ASPP(in_channels, atrous_rates),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )


class DeepLabV3(SimpleSegmentationModel):
    """torchvision's ``DeepLabV3``: ``backbone`` dict -> ``classifier`` (+ ``aux_classifier``)."""


def _deeplabv3_head(in_channels: int, num_classes: int, output_stride: int) -> DeepLabHead:
    return DeepLabHead(in_channels, num_classes, ASPP_RATES[output_stride])


@register_model
def deeplabv3_resnet50(**kwargs) -> DeepLabV3:
    """torchvision's ``deeplabv3_resnet50`` (same keys and outputs at ``output_stride=8``);
    39,638,869 parameters at 21 classes, 42,004,074 with ``aux_loss=True``. Keywords:
    ``num_classes`` (21), ``aux_loss`` (False), ``weights``/``weights_backbone`` (None
    only), ``progress`` (ignored), ``output_stride`` (8: rates 12/24/36; 16: 6/12/18)."""
    return build_resnet_segmentation(DeepLabV3, "resnet50", _deeplabv3_head, **kwargs)


@register_model
def deeplabv3_resnet101(**kwargs) -> DeepLabV3:
    """torchvision's ``deeplabv3_resnet101``; keywords as ``deeplabv3_resnet50``."""
    return build_resnet_segmentation(DeepLabV3, "resnet101", _deeplabv3_head, **kwargs)


def dilate_(features: nn.Module, output_stride: int) -> None:
    """Replace the strides of the spatial (k > 1) convs in ``features`` past
    ``output_stride`` by dilation, in place (parameters unchanged). As ResNet's
    ``replace_stride_with_dilation``: the conv that loses its stride keeps the previous
    dilation, the ones after it get the multiplied one."""
    stride, dilation = 1, 1
    for conv in features.modules():
        is_conv = isinstance(conv, nn.Conv2d) or is_depthwise(conv)
        if not is_conv or conv.kernel_size == (1, 1):
            continue
        s = conv.stride[0]
        d = dilation
        if s > 1 and stride >= output_stride:
            conv.stride = (1, 1)
            dilation *= s
        else:
            stride *= s
        k = conv.kernel_size[0]
        conv.dilation, conv.padding = (d, d), (d * (k - 1) // 2,) * 2


@register_model
def deeplabv3_mobilenet_v2(
    *,
    num_classes: int = 21,
    aux_loss=None,
    output_stride: int = 16,
    width_mult: float = 1.0,
    weights=None,
    weights_backbone=None,
) -> DeepLabV3:
    """DeepLabV3 on cvops's MobileNetV2 (output stride 16 with rates 6/12/18, or 8 with
    12/24/36). ``backbone`` keys are ``mobilenet_v2``'s ``features.{0..17}`` without the
    prefix, so a torchvision/cvops ``mobilenet_v2`` checkpoint loads into ``model.backbone``
    after dropping ``features.18`` and ``classifier``."""
    check_weights(weights=weights, weights_backbone=weights_backbone)
    num_classes = check_seg_classes(21 if num_classes is None else num_classes)
    check_choice(output_stride, "output_stride", (8, 16))
    net = _mobilenet_v2(num_classes=0, width_mult=width_mult)
    features = net.features
    dilate_(features, output_stride)
    last = len(features) - 2  # the last inverted residual (320 ch); the 1x1 1280 conv is dropped
    aux_index = 6  # the last block at output stride 8 (32 ch)
    return_layers = OrderedDict([(str(last), "out")])
    if aux_loss:
        return_layers[str(aux_index)] = "aux"
    backbone = IntermediateLayerGetter(features, return_layers)
    head = DeepLabHead(features[last].out_channels, num_classes, ASPP_RATES[output_stride])
    aux_classifier = FCNHead(features[aux_index].out_channels, num_classes) if aux_loss else None
    return DeepLabV3(backbone, head, aux_classifier)
