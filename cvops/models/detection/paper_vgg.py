"""The VGG pieces the paper detectors share: a width-scaled VGG conv trunk (cvops'
``make_features``, so at width 1 its keys are torchvision's ``features.*``), the fc6/fc7 head
with dropout, and the map from a ``torchvision.models.vgg16`` state_dict onto them."""

from typing import Dict, List, Union

from torch import Tensor, nn
from torch.nn import functional as F

from ..classification.vgg import CONFIGS, make_features
from .roi_heads import TwoMLPHead


def check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError("width must be a number > 0 (1.0 is the paper's VGG), got %r" % (width,))
    return float(width)


def scaled_config(config: str, width: float) -> List[Union[int, str]]:
    """VGG configuration ``config`` ("D" is VGG16) with every conv width times ``width``
    (at least 1 channel): narrow networks for CPU runs."""
    width = check_width(width)
    return [v if v == "M" else max(1, int(round(v * width))) for v in CONFIGS[config]]


def vgg_trunk(
    config: str = "D", width: float = 1.0, last_pool: bool = True, batch_norm: bool = False
) -> nn.Sequential:
    """The conv layers of VGG ``config`` (indices as torchvision's ``features``, or
    ``vgg16_bn``'s with ``batch_norm``, which trains from scratch where plain VGG16 does not);
    ``last_pool=False`` drops pool5 (Fast R-CNN pools RoIs from conv5_3, stride 16)."""
    layers = make_features(scaled_config(config, width), batch_norm)
    return layers if last_pool else layers[:-1]


def trunk_channels(trunk: nn.Sequential) -> int:
    return [m for m in trunk if isinstance(m, nn.Conv2d)][-1].out_channels


class VGGFCHead(TwoMLPHead):
    """VGG's fc6 and fc7, each followed by ReLU and dropout (0.5 in VGG and both papers)."""

    def __init__(self, in_channels: int, representation_size: int = 4096, dropout: float = 0.5):
        super().__init__(in_channels, representation_size)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.relu(self.fc6(x.flatten(start_dim=1))), self.dropout, self.training)
        return F.dropout(F.relu(self.fc7(x)), self.dropout, self.training)


def map_torchvision_vgg(
    state_dict: Dict[str, Tensor], features_prefix: str, head_prefix: str
) -> Dict[str, Tensor]:
    """torchvision VGG16 keys -> ours: ``features.N.*`` -> ``{features_prefix}N.*``,
    ``classifier.0.*`` (fc6) and ``classifier.3.*`` (fc7) -> ``{head_prefix}fc6/fc7.*``; the
    ImageNet classifier (``classifier.6``) is dropped, as in both papers."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("features."):
            out[features_prefix + key[len("features.") :]] = value
        elif key.startswith("classifier.0."):
            out[head_prefix + "fc6." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("classifier.3."):
            out[head_prefix + "fc7." + key.rsplit(".", 1)[1]] = value
        elif not key.startswith("classifier.6."):
            raise KeyError("%r is not a key of torchvision's VGG16" % key)
    return out
