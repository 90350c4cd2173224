"""What each issue-17 step gives a detector's CPU inference, in one process, interleaved:
torchvision; cvops on the plain ops (``_fused_layers.ONEDNN = False``) with the BatchNorm
folding switched off (cvops' RoI Align, NMS and box code only), then folded, then folded +
channels-last; cvops' oneDNN path of models/_fused_layers.py (folded, packed weights, fused
add and ReLU, channels-last) without Winograd; and cvops as shipped (its 3x3 convolutions of
64+ channels as Winograd F(2x2, 3x3), models/_winograd.py). Same weights and image as the
benchmark's detector case.

    python benchmarks/microbench/detector_steps.py maskrcnn_resnet50_fpn 7

Switching the folding off patches ``cvops.models._conv_bn.can_fold``, and Winograd off raises
``cvops.models._winograd.MIN_CHANNELS``, for this measurement only; cvops has no such switches.
"""

import copy
import statistics
import sys
import time

import torch

import cvops.models._conv_bn as conv_bn
import cvops.models._fused_layers as fused_conv
import cvops.models._winograd as winograd
from cvops.bench.cases.detection import _models


def main(name: str, rounds: int) -> None:
    torch.manual_seed(0)
    ours, ref = _models(name, "cpu")
    ours.eval()
    ref.eval()
    channels_last = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    images = [torch.rand(3, 512, 512)]
    can_fold = conv_bn.can_fold

    min_channels = winograd.MIN_CHANNELS

    def run(model, fold=True, onednn=False, use_winograd=True):
        conv_bn.can_fold = can_fold if fold else (lambda conv, bn: False)
        fused_conv.ONEDNN = onednn
        winograd.MIN_CHANNELS = min_channels if use_winograd else 1 << 62
        try:
            with torch.inference_mode():
                return model(images)
        finally:
            conv_bn.can_fold = can_fold
            fused_conv.ONEDNN = True
            winograd.MIN_CHANNELS = min_channels

    variants = {
        "torchvision": lambda: run(ref),
        "cvops, BN unfolded": lambda: run(ours, fold=False),
        "cvops, BN folded": lambda: run(ours),
        "cvops, folded + channels-last": lambda: run(channels_last),
        "cvops, oneDNN, no Winograd": lambda: run(ours, onednn=True, use_winograd=False),
        "cvops as shipped (+ Winograd)": lambda: run(ours, onednn=True),
    }
    for f in variants.values():  # warm-up
        f()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["torchvision"])
    for k, v in times.items():
        med = statistics.median(v)
        print("%-32s median %.3f s  min %.3f s  %.2fx" % (k, med, min(v), base / med))


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "maskrcnn_resnet50_fpn",
        int(sys.argv[2]) if len(sys.argv) > 2 else 7,
    )
