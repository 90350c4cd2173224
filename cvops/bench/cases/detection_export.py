"""Fixed-size Faster R-CNN (cvops.models.detection.export.FixedSizeDetector) exported with
``torch.export`` or compiled with ``torch.compile(fullgraph=True)`` (Inductor), and on CUDA
replayed from a captured CUDA graph, against the eager regular model it wraps, in the same
process: ``speedup`` is regular eager time over fixed-size time.

The model is the one of ``cases/detection.py`` (R50-FPN, FrozenBatchNorm2d, 91 classes,
512x512 without resize, ``box_score_thresh = 0`` so random weights give the full 100
detections). Before timing, ``make`` checks that the two detect the same (the pairing of
``cases/detection.py``: Inductor's fused arithmetic rounds differently from eager).
"""

import torch

from ..harness import BenchCase, register
from .detection import _OPTIONS, SIZE, _same_detections


def _unpadded(outputs):
    boxes, scores, labels, counts = (t.cpu() for t in outputs)
    return [
        {"boxes": b[:n], "scores": s[:n], "labels": lab[:n]}
        for b, s, lab, n in zip(boxes, scores, labels, counts.tolist())
    ]


def _exported(det, x):
    with torch.no_grad():
        return torch.export.export(det, (x,), strict=False).module()


def _compiled(det, x):
    return torch.compile(det, fullgraph=True)


def _cuda_graph(det, x):
    """A function replaying ``det(x)`` from a CUDA graph (the input copied in each call)."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        det(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = det(static_x)

    def replay(images):
        static_x.copy_(images)
        graph.replay()
        return static_out

    return replay


def _make(prepare):
    def make(device):
        from cvops.models import get_model
        from cvops.models.detection.export import FixedSizeDetector
        from cvops.models.segmentation.fpn import FrozenBatchNorm2d

        torch.manual_seed(0)  # the same weights and image on every run
        model = get_model("fasterrcnn_resnet50_fpn", norm_layer=FrozenBatchNorm2d, **_OPTIONS)
        model = model.to(device).eval()
        x = torch.rand(1, 3, SIZE, SIZE, device=device)
        fixed = prepare(FixedSizeDetector(model), x)

        def run_fixed():
            with torch.inference_mode():
                return fixed(x)

        def run_regular():
            with torch.inference_mode():
                return model(list(x))

        if not _same_detections(_unpadded(run_fixed()), run_regular()):
            raise RuntimeError("the fixed-size detector and the regular model detect differently")
        return run_fixed, run_regular

    return make


_NAME = "fasterrcnn_fixed"
_CASE = "[1,3,%d,%d] inference, FrozenBN, 100 detections" % (SIZE, SIZE)
_REFERENCE = "cvops regular model, eager"
register(BenchCase(_NAME, _CASE + ", torch.export", "float32", _make(_exported), _REFERENCE))
register(BenchCase(_NAME, _CASE + ", torch.compile", "float32", _make(_compiled), _REFERENCE))
register(
    BenchCase(
        _NAME, _CASE + ", CUDA graph", "float32", _make(_cuda_graph), _REFERENCE, devices=("cuda",)
    )
)
