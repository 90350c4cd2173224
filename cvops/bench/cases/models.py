"""Model cases: MobileNetV2 (batch 8, 224x224) inference and a training step (forward, loss,
backward, SGD step), cvops vs torchvision's mobilenet_v2 carrying the same weights."""

import torch
import torch.nn.functional as F

from ..harness import BenchCase, register

BATCH, SIZE = 8, 224


def _pair(device):
    import torchvision

    import cvops.models

    ref = torchvision.models.mobilenet_v2(weights=None).to(device)
    ours = cvops.models.mobilenet_v2().to(device)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _inference(device):
    ours, ref = _pair(device)
    ours.eval()
    ref.eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=device)

    def run(model):
        def step():
            with torch.inference_mode():
                return model(x)

        return step

    return run(ours), run(ref)


def _training(device):
    ours, ref = _pair(device)
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


register(
    BenchCase(
        "mobilenet_v2",
        "batch %d %dx%d inference" % (BATCH, SIZE, SIZE),
        "float32",
        _inference,
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
