"""Feature Pyramid Network (Lin et al., CVPR 2017, arXiv:1612.03144) as torchvision builds it,
and the ResNet-FPN backbone the detectors share.

``FeaturePyramidNetwork`` has ``torchvision.ops.FeaturePyramidNetwork``'s parameter names
(``inner_blocks.{i}.0``: 1x1 lateral convs; ``layer_blocks.{i}.0``: 3x3 output convs; ``.1``
norms when ``norm_layer`` is given), its inputs and outputs (an ordered dict of feature maps,
finest first, in; the same names, plus the extra blocks', out), nearest-neighbour top-down
up-sampling to each lateral's exact size, and its extra blocks (``LastLevelMaxPool``: "pool"
= ``max_pool2d(k=1, s=2)`` of the last output; ``LastLevelP6P7``: RetinaNet's P6/P7).
``resnet_fpn_backbone`` mirrors ``torchvision.models.detection.backbone_utils``'s builder:
``body`` (the ResNet's children up to the last returned layer), ``fpn``, ``out_channels``;
its state_dict loads into torchvision's and back with ``strict=True``.
"""

from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._conv_bn import FrozenBatchNorm2d
from .._fused_layers import conv_block
from ..classification import resnet as _resnet
from ._utils import IntermediateLayerGetter, check_int, check_weights


class ExtraFPNBlock(nn.Module):
    """Base of the blocks run on the FPN outputs: ``forward(results, x, names)`` returns the
    extended ``(results, names)`` (``x`` are the FPN's inputs)."""

    def forward(
        self, results: List[Tensor], x: List[Tensor], names: List[str]
    ) -> Tuple[List[Tensor], List[str]]:  # pragma: no cover - abstract
        raise NotImplementedError


class LastLevelMaxPool(ExtraFPNBlock):
    """Adds "pool": ``max_pool2d(kernel_size=1, stride=2)`` of the last FPN output."""

    def forward(self, results, x, names):
        names.append("pool")
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return results, names


class LastLevelP6P7(ExtraFPNBlock):
    """RetinaNet's P6 (3x3/2 conv of P5, or of C5 when its width differs from the FPN's) and
    P7 (3x3/2 conv of ReLU(P6))."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.use_P5 = in_channels == out_channels

    def forward(self, results, x, names):
        p6 = self.p6(results[-1] if self.use_P5 else x[-1])
        p7 = self.p7(F.relu(p6))
        results.extend([p6, p7])
        names.extend(["p6", "p7"])
        return results, names


def _conv_norm(c_in: int, c_out: int, k: int, norm_layer) -> nn.Sequential:
    layers: List[nn.Module] = [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(c_out))
    return nn.Sequential(*layers)


def _conv_norm_block(block: nn.Module, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
    """A :func:`_conv_norm` block's ``norm(conv(x)) + residual``."""
    return conv_block(block[0], x, block[1] if len(block) > 1 else None, residual=residual)


class FeaturePyramidNetwork(nn.Module):
    """torchvision's ``FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks,
    norm_layer)``; ``forward`` takes and returns ``OrderedDict[str, Tensor]`` (finest first)."""

    _version = 2

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: Optional[nn.Module] = None,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
    ):
        super().__init__()
        if len(in_channels_list) == 0:
            raise ValueError("in_channels_list must name at least one level")
        for c in in_channels_list:
            check_int(c, "in_channels_list entries")
        check_int(out_channels, "out_channels")
        if extra_blocks is not None and not isinstance(extra_blocks, nn.Module):
            raise TypeError(
                "extra_blocks must be an nn.Module (e.g. LastLevelMaxPool()), got %s"
                % type(extra_blocks).__name__
            )
        self.inner_blocks = nn.ModuleList(
            [_conv_norm(c, out_channels, 1, norm_layer) for c in in_channels_list]
        )
        self.layer_blocks = nn.ModuleList(
            [_conv_norm(out_channels, out_channels, 3, norm_layer) for _ in in_channels_list]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.extra_blocks = extra_blocks

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # Checkpoints of torchvision's version 1 had the convs directly at ``inner_blocks.{i}``.
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            for blocks in ("inner_blocks", "layer_blocks"):
                for i in range(len(self.inner_blocks)):
                    for kind in ("weight", "bias"):
                        old = "%s%s.%d.%s" % (prefix, blocks, i, kind)
                        if old in state_dict:
                            state_dict["%s%s.%d.0.%s" % (prefix, blocks, i, kind)] = state_dict.pop(
                                old
                            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def forward(self, x: Dict[str, Tensor]) -> "OrderedDict[str, Tensor]":
        names = list(x.keys())
        feats = list(x.values())
        if len(feats) != len(self.inner_blocks):
            raise ValueError(
                "FeaturePyramidNetwork was built for %d levels, got %d"
                % (len(self.inner_blocks), len(feats))
            )
        last_inner = _conv_norm_block(self.inner_blocks[-1], feats[-1])
        results = [_conv_norm_block(self.layer_blocks[-1], last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            size = feats[idx].shape[-2:]
            top_down = F.interpolate(last_inner, size=size, mode="nearest")
            # the lateral 1x1 conv plus the upsampled coarser level (the add fused into it)
            last_inner = _conv_norm_block(self.inner_blocks[idx], feats[idx], top_down)
            results.insert(0, _conv_norm_block(self.layer_blocks[idx], last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """``body`` (an ``IntermediateLayerGetter``) followed by ``fpn``; ``out_channels`` is
    the FPN's width."""

    def __init__(
        self,
        backbone: nn.Module,
        return_layers: Dict[str, str],
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: Optional[nn.Module] = None,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
    ):
        super().__init__()
        if extra_blocks is None:
            extra_blocks = LastLevelMaxPool()
        self.body = IntermediateLayerGetter(backbone, return_layers)
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks, norm_layer)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))


RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_TRAINABLE_ORDER = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def resnet_fpn_extractor(
    backbone: nn.Module,
    trainable_layers: int,
    returned_layers: Optional[Sequence[int]] = None,
    extra_blocks: Optional[nn.Module] = None,
    norm_layer: Optional[Callable[[int], nn.Module]] = None,
) -> BackboneWithFPN:
    """A ``BackboneWithFPN`` on a cvops ``ResNet``: freezes all but the last
    ``trainable_layers`` (0-5) stages, returns ``layer{k}`` for k in ``returned_layers``
    (default 1-4) as "0", "1", ...; ``norm_layer`` is the FPN's (None: convs with bias)."""
    check_int(trainable_layers, "trainable_layers", minimum=0)
    if trainable_layers > 5:
        raise ValueError("trainable_layers must be in [0, 5], got %d" % trainable_layers)
    train = _TRAINABLE_ORDER[:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
    for name, p in backbone.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            p.requires_grad_(False)
    returned_layers = [1, 2, 3, 4] if returned_layers is None else list(returned_layers)
    if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError("returned_layers must be in [1, 4], got %r" % (returned_layers,))
    return_layers = {"layer%d" % k: str(v) for v, k in enumerate(returned_layers)}
    stage2 = backbone.inplanes // 8  # layer1's output width (64 or 256)
    in_channels_list = [stage2 * 2 ** (k - 1) for k in returned_layers]
    return BackboneWithFPN(backbone, return_layers, in_channels_list, 256, extra_blocks, norm_layer)


def resnet_fpn_backbone(
    *,
    backbone_name: str,
    weights=None,
    norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
    trainable_layers: int = 3,
    returned_layers: Optional[Sequence[int]] = None,
    extra_blocks: Optional[nn.Module] = None,
) -> BackboneWithFPN:
    """``torchvision.models.detection.backbone_utils.resnet_fpn_backbone`` on a cvops ResNet
    (``backbone_name`` resnet18/34/50/101/152; ``norm_layer`` the ResNet's:
    ``FrozenBatchNorm2d`` by default, or ``nn.BatchNorm2d``; ``weights`` only None)."""
    check_weights(weights=weights)
    if backbone_name not in RESNETS:
        raise ValueError(
            "backbone_name must be one of %s, got %r" % (", ".join(RESNETS), backbone_name)
        )
    body = getattr(_resnet, backbone_name)(num_classes=0, norm_layer=norm_layer)
    return resnet_fpn_extractor(body, trainable_layers, returned_layers, extra_blocks)
