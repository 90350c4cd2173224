"""Model cases: MobileNetV2 (batch 8, 224x224) inference and a training step (forward, loss,
backward, SGD step), cvops vs torchvision's mobilenet_v2 carrying the same weights.

cvops' MobileNetV2 gains at inference from two things: its depthwise kernel, and folding each
eval-mode BatchNorm into the conv before it. ``_INFERENCE`` is the one table that decides the
inference rows, so that each effect shows on its own: cvops with BN unfolded against
torchvision (the depthwise kernel alone), cvops as shipped (BN folded) against cvops with BN
unfolded (the folding alone), and cvops as shipped against torchvision (both).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..harness import BenchCase, register

BATCH, SIZE = 8, 224


class _UnfoldedBN(nn.Module):
    """Wraps a BatchNorm2d so that cvops' models do not fold it (they fold modules that are
    BatchNorm2d in eval mode, ``cvops.models.classification._mobile``): the layer then runs
    the conv, then the BN, as torchvision's does."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn
        self.ran = False

    def forward(self, x):
        self.ran = True
        return self.bn(x)


def _unfold_bn(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm2d wrapped in ``_UnfoldedBN`` (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, _UnfoldedBN(child))
    return model


def _models(device):
    """torchvision's mobilenet_v2 and cvops' with the same weights, in eval mode."""
    import torchvision

    import cvops.models

    ref = torchvision.models.mobilenet_v2(weights=None).to(device)
    ours = cvops.models.mobilenet_v2().to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _cvops_unfolded(device, x):
    ours, _ = _models(device)
    _unfold_bn(ours.eval())
    with torch.inference_mode():
        ours(x)
    wrapped = [m for m in ours.modules() if isinstance(m, _UnfoldedBN)]
    if not wrapped or not all(m.ran for m in wrapped):  # the folding moved elsewhere
        raise RuntimeError("cvops' MobileNetV2 no longer runs its BatchNorms unfolded here")
    return ours


# case suffix -> (cvops side, reference side, reference label); sides: "cvops" (as shipped,
# BN folded), "cvops unfolded", "torchvision"
_INFERENCE = {
    "inference": ("cvops", "torchvision", "torchvision"),
    "inference, BN unfolded (depthwise kernel alone)": (
        "cvops unfolded",
        "torchvision",
        "torchvision",
    ),
    "inference, BN folding alone": ("cvops", "cvops unfolded", "cvops, BN unfolded"),
}


def _inference(ours_side, ref_side):
    def make(device):
        x = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
        ours, ref = _models(device)
        side = {
            "cvops": lambda: ours.eval(),
            "torchvision": lambda: ref.eval(),
            "cvops unfolded": lambda: _cvops_unfolded(device, x),
        }

        def run(model):
            def step():
                with torch.inference_mode():
                    return model(x)

            return step

        return run(side[ours_side]()), run(side[ref_side]())

    return make


def _training(device):
    ours, ref = _models(device)
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, 1000, (BATCH,), device=device)

    def run(model):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step

    return run(ours), run(ref)


for _suffix, (_ours, _ref, _label) in _INFERENCE.items():
    register(
        BenchCase(
            "mobilenet_v2",
            "batch %d %dx%d %s" % (BATCH, SIZE, SIZE, _suffix),
            "float32",
            _inference(_ours, _ref),
            _label,
            devices=("cpu", "cuda"),
        )
    )
register(
    BenchCase(
        "mobilenet_v2",
        "batch %d %dx%d training step (SGD)" % (BATCH, SIZE, SIZE),
        "float32",
        _training,
        devices=("cpu", "cuda"),
    )
)
