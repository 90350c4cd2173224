"""NMS cases: random boxes in an 800x800 image, against torchvision.ops (nms, batched_nms)
and, for soft-NMS (which torchvision lacks), the pure-PyTorch reference."""

import torch

import cvops

from ..harness import BenchCase, register


def random_boxes(n, device, image=800.0, min_wh=16.0, max_wh=128.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * image
    wh = torch.rand(n, 2, generator=g) * (max_wh - min_wh) + min_wh
    scores = torch.rand(n, generator=g)
    return torch.cat([xy, xy + wh], 1).to(device), scores.to(device)


def _nms_case(n, threshold=0.5):
    def make(device):
        from torchvision.ops import nms as tv_nms

        boxes, scores = random_boxes(n, device)
        return (
            lambda: cvops.nms(boxes, scores, threshold),
            lambda: tv_nms(boxes, scores, threshold),
        )

    return make


def _batched_case(n, classes=80, threshold=0.5):
    def make(device):
        from torchvision.ops import batched_nms as tv_batched_nms

        boxes, scores = random_boxes(n, device)
        idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1))
        idxs = idxs.to(device)
        return (
            lambda: cvops.batched_nms(boxes, scores, idxs, threshold),
            lambda: tv_batched_nms(boxes, scores, idxs, threshold),
        )

    return make


def _nms_fixed_case(n, max_output=1000, threshold=0.5):
    def make(device):
        from torchvision.ops import nms as tv_nms

        boxes, scores = random_boxes(n, device)
        return (
            lambda: cvops.nms_fixed(boxes, scores, threshold, max_output),
            lambda: tv_nms(boxes, scores, threshold)[:max_output],
        )

    return make


def _soft_nms_case(n, method="gaussian", reference="python"):
    def make(device):
        from ...ops._reference import soft_nms_reference

        boxes, scores = random_boxes(n, device)
        boxes_cpu, scores_cpu = boxes.cpu(), scores.cpu()
        ref = soft_nms_reference if reference == "python" else cvops.soft_nms
        return (
            lambda: cvops.soft_nms(boxes, scores, method=method),
            lambda: ref(boxes_cpu, scores_cpu, method=method),
        )

    return make


for _n in (500, 2000, 10000, 50000):
    register(BenchCase("nms", "N=%d iou=0.5" % _n, "float32", _nms_case(_n)))
for _n in (10000, 50000):
    register(BenchCase("batched_nms", "N=%d 80 classes" % _n, "float32", _batched_case(_n)))
register(
    BenchCase(
        "soft_nms",
        "N=2000 gaussian",
        "float32",
        _soft_nms_case(2000),
        reference="pure-PyTorch reference (CPU)",
        devices=("cpu",),
    )
)
register(
    BenchCase(
        "soft_nms",
        "N=2000 gaussian",
        "float32",
        _soft_nms_case(2000, reference="cvops-cpu"),
        reference="cvops CPU kernel",
        devices=("cuda",),
    )
)
for _n in (2000, 50000):
    register(
        BenchCase(
            "nms_fixed",
            "N=%d max_output=1000" % _n,
            "float32",
            _nms_fixed_case(_n),
            reference="torchvision nms",
            devices=("cuda",),
        )
    )
