"""The VGG-16 trunk the paper segmentation models (FCN, DeepLab v1/v2) share, built by
``cvops.models.classification.vgg.make_features`` (so its keys are torchvision's
``features.*`` without the prefix), and the conversion of a torchvision ``vgg16`` state_dict
into these models ("convolutionalisation" of the fully connected layers)."""

from collections import OrderedDict
from typing import Dict, List

import torch
import torch.nn as nn
from torch import Tensor

from ..classification.vgg import CONFIGS, make_features

# Indices of the max pools in vgg16's ``features`` (after conv3_3, conv4_3, conv5_3...).
POOL_INDICES = (4, 9, 16, 23, 30)
CONV5_INDICES = (24, 26, 28)


def vgg16_trunk(*, first_padding: int = 1, ceil_mode: bool = False, dilated: bool = False):
    """vgg16's 13 convs and 5 pools as an ``nn.Sequential``.

    ``first_padding``: conv1_1's padding (FCN pads by 100 so any input size gives a valid
    fc6 map). ``ceil_mode``: Caffe's rounding of the 2x2 pools (FCN). ``dilated``: DeepLab's
    output-stride-8 trunk: pools 1-3 become 3x3/2 pad 1, pools 4-5 3x3/1 pad 1, conv5 dilation 2.
    """
    features = make_features(CONFIGS["D"])
    features[0].padding = (first_padding, first_padding)
    for n, i in enumerate(POOL_INDICES):
        if dilated:
            features[i] = nn.MaxPool2d(3, stride=2 if n < 3 else 1, padding=1)
        else:
            features[i] = nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode)
    if dilated:
        for i in CONV5_INDICES:
            features[i].dilation = (2, 2)
            features[i].padding = (2, 2)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def run_trunk(features: nn.Sequential, x: Tensor, taps=(16, 23)) -> List[Tensor]:
    """Run ``features``; the outputs after the layers in ``taps`` (default pool3, pool4) and
    the final output, in order."""
    outs = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            outs.append(x)
    outs.append(x)
    return outs


def convolutionalize_vgg16(
    state_dict: Dict[str, Tensor],
    *,
    fc_prefixes=("",),
    fc6_channels: int = 4096,
    fc6_kernel: int = 7,
) -> Dict[str, Tensor]:
    """A torchvision ``vgg16`` state_dict as ``backbone.*`` and, for each prefix in
    ``fc_prefixes``, ``{prefix}fc6.*``, ``{prefix}fc7.*`` conv weights: ``classifier.0``
    (25088 -> 4096) becomes a 7x7 conv, ``classifier.3`` a 1x1 conv (FCN). With
    ``fc6_channels=1024, fc6_kernel=3`` the fc layers are decimated as in DeepLab (every 4th
    filter, every 3rd spatial tap: 4096x7x7 -> 1024x3x3, 4096x4096 -> 1024x1024).
    The classifier ``classifier.6`` is dropped."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("features."):
            out["backbone." + key[len("features.") :]] = value
    w6 = state_dict["classifier.0.weight"].reshape(4096, 512, 7, 7)
    b6 = state_dict["classifier.0.bias"]
    w7 = state_dict["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    b7 = state_dict["classifier.3.bias"]
    if (fc6_channels, fc6_kernel) != (4096, 7):
        if 4096 % fc6_channels or 6 % (fc6_kernel - 1):
            raise ValueError(
                "cannot decimate fc6 4096x7x7 to %dx%dx%d" % (fc6_channels, fc6_kernel, fc6_kernel)
            )
        step, tap = 4096 // fc6_channels, 6 // (fc6_kernel - 1)
        w6, b6 = w6[::step, :, ::tap, ::tap], b6[::step]
        w7, b7 = w7[::step, ::step], b7[::step]
    for p in fc_prefixes:
        out.update({p + "fc6.weight": w6, p + "fc6.bias": b6, p + "fc7.weight": w7})
        out[p + "fc7.bias"] = b7
    return {k: v.clone().contiguous() for k, v in out.items()}


def fc_layers(
    fc6: nn.Conv2d, fc7_channels: int, num_classes: int, score_name: str = "fc8"
) -> nn.Sequential:
    """fc6 - ReLU - Dropout - fc7 (1x1) - ReLU - Dropout - the 1x1 scoring layer, with the
    Caffe names (``fc6``, ``fc7``, and ``score_name``: FCN's ``score_fr``, DeepLab's ``fc8``)."""
    return nn.Sequential(
        OrderedDict(
            [
                ("fc6", fc6),
                ("relu6", nn.ReLU(inplace=True)),
                ("drop6", nn.Dropout(0.5)),
                ("fc7", nn.Conv2d(fc6.out_channels, fc7_channels, 1)),
                ("relu7", nn.ReLU(inplace=True)),
                ("drop7", nn.Dropout(0.5)),
                (score_name, nn.Conv2d(fc7_channels, num_classes, 1)),
            ]
        )
    )


@torch.no_grad()
def init_normal_(module: nn.Module, std: float = 0.01) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
