"""YOLOv7 and YOLOv7-tiny (Wang, Bochkovskiy, Liao, 2022), the training configurations of the
reference repository (WongKinYiu/yolov7, ``cfg/training/yolov7.yaml`` and ``yolov7-tiny.yaml``).

The network is the reference's flat layer list (:class:`~cvops.models.yolo.blocks.LayerGraph`):
layer ``i`` is ``model.{i}`` and reads the outputs of the layers its source names (``-1`` the
previous one, other negative indices relative, others absolute), so the reference checkpoints'
state_dicts load key for key. The builders below read like the YAML files, one call per line
or per block, with the YAML's layer numbers in the comments.

* ``yolov7``: ELAN blocks (two 1x1 splits, a chain of 3x3 convs, the concatenation of every
  other chain output), MP downsampling (a max-pool branch and a strided-conv branch,
  concatenated), SPPCSPC, a PAN neck of ELAN blocks, three RepConv and IDetect; SiLU.
  37,622,682 parameters at 80 classes.
* ``yolov7_tiny``: ELAN blocks with two 3x3 convs, plain 2x2 max pools for downsampling, an
  SPP of 5/9/13 max pools in the CSP layout spelled out as layers, strided convs in the neck,
  plain 3x3 convs before IDetect; LeakyReLU(0.1). 6,228,762 parameters at 80 classes.

E-ELAN (expand, shuffle, merge cardinality) belongs to the E6E variant only and is not here.
"""

from typing import Sequence

import torch
import torch.nn as nn

from .._registry import register_model
from .blocks import make_divisible
from .common import Conv, fuse_conv_bn
from .detector import YOLO
from .loss_v5 import YOLOv5Loss
from .yolov5 import YOLOv5
from .yolov7_blocks import MP, SP, SPPCSPC, IDetect, RepConv

__all__ = ["YOLOv7", "yolov7", "yolov7_tiny"]

# the reference configurations' anchors (pixels, w h per anchor, P3/8, P4/16, P5/32)
ANCHORS_V7 = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))
ANCHORS_TINY = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
STRIDES = (8.0, 16.0, 32.0)
# the reference's loss gains (data/hyp.scratch.p5.yaml and hyp.scratch.tiny.yaml)
LOSS_GAINS = {
    "yolov7": {"box": 0.05, "obj": 0.7, "cls": 0.3},
    "tiny": {"box": 0.05, "obj": 1.0, "cls": 0.5},
}


class YOLOv7(YOLO):
    """YOLOv7 (``variant="yolov7"``) or YOLOv7-tiny (``"tiny"``) for ``num_classes`` classes,
    built layer by layer as the reference YAML lists them.

    ``width`` scales every conv's channels (rounded up to a multiple of 8, the YAML's
    ``width_multiple``). ``model(batch)`` with a ``[B, 3, H, W]`` tensor (H, W multiples of 32)
    returns the head's output: the raw per-level maps ``[(bs, na, ny, nx, nc + 5)]`` in
    training, ``(decoded (bs, N, nc + 5), raw)`` in eval (:class:`~.common.AnchorDetect`);
    ``model(list_of_images[, targets])`` is the torchvision detector interface of
    :class:`~.detector.YOLO` (its keywords: ``image_size``, ``score_thresh``...).
    """

    head_kind = "anchor"

    def __init__(
        self, num_classes: int = 80, variant: str = "yolov7", width: float = 1.0, **detector_options
    ):
        super().__init__(num_classes, **detector_options)
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
            raise ValueError("width must be a positive number, got %r" % (width,))
        if variant not in _VARIANTS:
            raise ValueError("variant must be one of %s, got %r" % (sorted(_VARIANTS), variant))
        self.variant = variant
        self.width = float(width)
        build, self.act = _VARIANTS[variant]
        build(self, num_classes)
        # plain attribute: the loss holds no parameters or state
        self.criterion = YOLOv5Loss(
            num_classes,
            self.head.strides,
            max(self.image_size),
            **{**LOSS_GAINS[variant], **self.loss_options},
        )

    # IDetect is YOLOv5's anchor head plus implicit layers: same raw outputs, decoding and
    # loss (YOLOv5's matching; the reference trains yolov7 with its OTA assignment instead)
    loss = YOLOv5.loss
    boxes_and_scores = YOLOv5.boxes_and_scores

    # ------------------------------------------------------------ building (one YAML line each)

    def _c1(self, src: int) -> int:
        return 3 if not self.channels else self.ch(src)  # layer 0 reads the image

    def _act(self) -> nn.Module:
        return nn.SiLU() if self.act == "silu" else nn.LeakyReLU(0.1)

    def _width(self, c: int) -> int:
        return make_divisible(c * self.width)

    def conv(self, c: int, k: int = 1, s: int = 1, src: int = -1) -> int:
        c2 = self._width(c)
        return self.add(src, Conv(self._c1(src), c2, k, s, act=self._act()), c2)

    def pool(self) -> int:
        return self.add(-1, MP(2), self.ch(-1))

    def spp_pool(self, k: int, src: int) -> int:
        return self.add(src, SP(k), self.ch(src))

    def sppcspc(self, c: int) -> int:
        c2 = self._width(c)
        return self.add(-1, SPPCSPC(self.ch(-1), c2, act=self._act()), c2)

    def repconv(self, c: int, src: int) -> int:
        c2 = self._width(c)
        return self.add(src, RepConv(self.ch(src), c2, act=self._act()), c2)

    def elan(self, c_split: int, c_chain: int, n: int, taps: Sequence[int], c_out: int) -> int:
        """ELAN: two 1x1 convs of the input (``c_split``), a chain of ``n`` 3x3 convs
        (``c_chain``) on the second, the concatenation of the outputs ``taps`` (relative to the
        concat) and a 1x1 conv to ``c_out``. Returns the last layer's index."""
        self.conv(c_split, 1)
        self.conv(c_split, 1, src=-2)
        for _ in range(n):
            self.conv(c_chain, 3)
        self.concat(taps)
        return self.conv(c_out, 1)

    def up_merge(self, c: int, lateral: int) -> int:
        """Top-down neck step: ``cat(conv1x1(lateral), upsample(conv1x1(previous)))``."""
        self.conv(c, 1)
        self.upsample()
        self.conv(c, 1, src=lateral)
        return self.concat([-1, -2])

    def mp_down(self, c: int, extra: Sequence[int] = ()) -> int:
        """MP downsampling: ``cat(conv3x3/2(conv1x1 x), conv1x1(maxpool x), *extra)``."""
        self.pool()
        self.conv(c, 1)
        self.conv(c, 1, src=-3)
        self.conv(c, 3, 2)
        return self.concat([-1, -3, *extra])

    def add_head(self, num_classes: int, anchors, srcs: Sequence[int]) -> int:
        detect = IDetect(num_classes, anchors, [self.ch(j) for j in srcs], STRIDES)
        detect.initialize_biases()
        return self.add(list(srcs), detect, 0)

    @property
    def head(self) -> IDetect:
        return self.model[-1]

    @torch.no_grad()
    def fuse(self) -> "YOLOv7":
        """Deployment form: BN folded into every Conv, RepConv branches merged, IDetect's
        implicit layers folded into its convs. Same eval-mode outputs, fewer ops; switches to
        eval mode (fusion uses the BN running statistics). Not reversible."""
        self.eval()
        for module in self.modules():
            if isinstance(module, Conv) and hasattr(module, "bn"):
                module.conv = fuse_conv_bn(module.conv, module.bn)
                del module.bn
                module.forward = module.forward_fuse
            elif isinstance(module, (RepConv, IDetect)):
                module.fuse()
        return self


def _build_yolov7(g: YOLOv7, num_classes: int, anchors=ANCHORS_V7) -> None:
    six = [-1, -2, -3, -4, -5, -6]  # the neck's ELANs concatenate every chain output
    g.conv(32, 3, 1)  # 0
    g.conv(64, 3, 2)  # 1-P1/2
    g.conv(64, 3, 1)
    g.conv(128, 3, 2)  # 3-P2/4
    g.elan(64, 64, 4, [-1, -3, -5, -6], 256)  # 11
    g.mp_down(128)  # 16-P3/8
    p3 = g.elan(128, 128, 4, [-1, -3, -5, -6], 512)  # 24
    g.mp_down(256)  # 29-P4/16
    p4 = g.elan(256, 256, 4, [-1, -3, -5, -6], 1024)  # 37
    g.mp_down(512)  # 42-P5/32
    g.elan(256, 256, 4, [-1, -3, -5, -6], 1024)  # 50
    spp = g.sppcspc(512)  # 51
    g.up_merge(256, p4)
    n4 = g.elan(256, 128, 4, six, 256)  # 63
    g.up_merge(128, p3)
    o3 = g.elan(128, 64, 4, six, 128)  # 75
    g.mp_down(128, extra=[n4])
    o4 = g.elan(256, 128, 4, six, 256)  # 88
    g.mp_down(256, extra=[spp])
    o5 = g.elan(512, 256, 4, six, 512)  # 101
    r3 = g.repconv(256, o3)  # 102
    r4 = g.repconv(512, o4)
    r5 = g.repconv(1024, o5)
    g.add_head(num_classes, anchors, [r3, r4, r5])  # 105


def _build_tiny(g: YOLOv7, num_classes: int, anchors=ANCHORS_TINY) -> None:
    four = [-1, -2, -3, -4]
    g.conv(32, 3, 2)  # 0-P1/2
    g.conv(64, 3, 2)  # 1-P2/4
    g.elan(32, 32, 2, four, 64)  # 7
    g.pool()  # 8-P3/8
    p3 = g.elan(64, 64, 2, four, 128)  # 14
    g.pool()  # 15-P4/16
    p4 = g.elan(128, 128, 2, four, 256)  # 21
    g.pool()  # 22-P5/32
    g.elan(256, 256, 2, four, 512)  # 28
    # SPP in the CSP layout, as layers: a 1x1 shortcut, and a 1x1 max-pooled at 5, 9 and 13
    g.conv(256, 1)  # 29
    x = g.conv(256, 1, src=-2)
    for k in (5, 9, 13):
        g.spp_pool(k, src=x)
    g.concat(four)
    g.conv(256, 1)
    g.concat([-1, -7])
    n5 = g.conv(256, 1)  # 37
    g.up_merge(128, p4)
    n4 = g.elan(64, 64, 2, four, 128)  # 47
    g.up_merge(64, p3)
    o3 = g.elan(32, 32, 2, four, 64)  # 57
    g.conv(128, 3, 2)
    g.concat([-1, n4])
    o4 = g.elan(64, 64, 2, four, 128)  # 65
    g.conv(256, 3, 2)
    g.concat([-1, n5])
    o5 = g.elan(128, 128, 2, four, 256)  # 73
    h3 = g.conv(128, 3, 1, src=o3)  # 74
    h4 = g.conv(256, 3, 1, src=o4)
    h5 = g.conv(512, 3, 1, src=o5)
    g.add_head(num_classes, anchors, [h3, h4, h5])  # 77


# variant -> (builder, activation)
_VARIANTS = {"yolov7": (_build_yolov7, "silu"), "tiny": (_build_tiny, "leaky")}


@register_model
def yolov7(num_classes: int = 80, width: float = 1.0, **detector_options) -> YOLOv7:
    """YOLOv7 (training configuration): 37,622,682 parameters at 80 classes. ``width`` scales
    every layer's channels (rounded up to a multiple of 8), as the YAML's width_multiple."""
    return YOLOv7(num_classes, "yolov7", width, **detector_options)


@register_model
def yolov7_tiny(num_classes: int = 80, width: float = 1.0, **detector_options) -> YOLOv7:
    """YOLOv7-tiny (training configuration): 6,228,762 parameters at 80 classes. ``width``
    scales every layer's channels (rounded up to a multiple of 8)."""
    return YOLOv7(num_classes, "tiny", width, **detector_options)
