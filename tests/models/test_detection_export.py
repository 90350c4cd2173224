"""The fixed-size detectors (cvops.models.detection.export.FixedSizeDetector): detections equal
the regular path's on random images and weights, the eval forward exports with torch.export
(strict=False) and round-trips through save/load, compiles with fullgraph=True, and on CUDA
replays from a captured CUDA graph."""

import io

import pytest
import torch

import cvops
import cvops.models as cm
import cvops.models._fused_layers as fused_layers
from cvops.models.detection import FasterRCNN, maskrcnn_resnet50_fpn
from cvops.models.detection.export import FixedSizeDetector
from cvops.models.detection.fixed_ops import PAD_LABEL, best_kept, nms_keep_mask
from cvops.models.detection.fixed_rpn import fixed_proposals
from cvops.models.detection.image_list import ImageList
from tests.conftest import requires_cuda, requires_ops

pytestmark = requires_ops

BOX_ATOL, SCORE_ATOL = 1e-4, 1e-5
SMALL = dict(num_classes=5, min_size=128, max_size=192)
# Per-level top 100, NMS at 0.5 and 200 proposals after NMS: the RPN keeps fewer than 200 on
# these images, so padded proposals reach the box head (and must be masked there). Score threshold
# 0.8: random weights give softmax scores up to ~0.99, fewer than 100 detections pass it.
RCNN = dict(
    SMALL,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=200,
    rpn_nms_thresh=0.5,
    box_score_thresh=0.8,
)
# RetinaNet's prior makes every score ~0.01: a threshold inside the random spread, so each
# level has both masked (below) and valid scores, and the top 1000 binds on the fine levels.
RETINA = dict(SMALL, score_thresh=0.0105)


def _images(n=2, seed=1, size=(100, 150)):  # resized to 128 x 192 by the transform
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _build(name, **kwargs):
    torch.manual_seed(0)
    return cm.get_model(name, **kwargs).eval()


@pytest.fixture(scope="module")
def rcnn():
    """(model, detector, images, fixed output, regular output)."""
    model = _build("fasterrcnn_resnet50_fpn", **RCNN)
    det = FixedSizeDetector(model)
    x = _images()
    with torch.no_grad():
        return model, det, x, det(x), model(list(x))


@pytest.fixture(scope="module")
def one_image(rcnn):
    """(detector, one image, its fixed output): tracing cost grows with the batch, as the
    postprocess is unrolled per image. The output is the eager run on the reference ops: export
    and torch.compile trace those (the oneDNN inference path of models/_fused_layers.py is
    eager-only and rounds differently)."""
    det, x = rcnn[1], rcnn[2][:1]
    fused_layers.ONEDNN = False
    try:
        with torch.no_grad():
            return det, x, det(x)
    finally:
        fused_layers.ONEDNN = True


def _canonical(boxes, scores, labels):
    """Rows sorted by (score desc, label, box): the same set in the same order whichever way
    NMS ordered exactly equal scores."""
    rows = sorted(
        zip(scores.tolist(), labels.tolist(), boxes.tolist()),
        key=lambda r: (-r[0], r[1], r[2]),
    )
    if not rows:
        return boxes, scores, labels
    s, lab, b = zip(*rows)
    return torch.tensor(b), torch.tensor(s), torch.tensor(lab)


def assert_same_detections(fixed, regular, ordered=True):
    """Each image's first counts[i] rows equal the regular detections (labels exactly, boxes
    within BOX_ATOL, scores within SCORE_ATOL; with ``ordered=False`` compared as sets, see
    _canonical) and the rest is padding. Returns the counts."""
    boxes, scores, labels, counts = fixed
    k = boxes.shape[1]
    assert boxes.shape == (len(regular), k, 4) and scores.shape == labels.shape == (len(regular), k)
    assert labels.dtype == counts.dtype == torch.int64
    for i, r in enumerate(regular):
        n = int(counts[i])
        assert n == len(r["scores"]), (n, len(r["scores"]))
        got = (boxes[i, :n], scores[i, :n], labels[i, :n])
        want = (r["boxes"], r["scores"], r["labels"])
        if not ordered:
            got, want = _canonical(*got), _canonical(*want)
        assert torch.equal(got[2], want[2])
        assert (got[0] - want[0]).abs().max().item() <= BOX_ATOL
        assert (got[1] - want[1]).abs().max().item() <= SCORE_ATOL
        assert (boxes[i, n:] == 0).all() and (scores[i, n:] == 0).all()
        assert (labels[i, n:] == PAD_LABEL).all()
    return counts.tolist()


def test_nms_keep_mask_is_nms_of_the_valid_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 30], 1)
    scores = (torch.rand(300, generator=g) * 20).round() / 20  # many exact ties
    valid = torch.rand(300, generator=g) > 0.3
    kept = torch.where(valid)[0][cvops.nms(boxes[valid], scores[valid], 0.5)]
    assert len(kept) > 25 and len(scores[kept].unique()) < len(kept)  # capped, and ties kept
    for cap in (1000, 25):
        want = torch.zeros(300, dtype=torch.bool)
        want[kept[:cap]] = True
        assert torch.equal(nms_keep_mask(boxes, scores, valid, 0.5, cap), want)
    # ranked like nms: score descending, equal scores by index (want: the first 25 kept)
    order, count = best_kept(scores, want, 40)
    assert int(count) == 25 and torch.equal(order[:25], kept[:25])
    assert not want[order[25:]].any()


def test_rpn_proposals_equal_regular_proposals(rcnn):
    model, det, x, _, _ = rcnn
    with torch.no_grad():
        batch, size = det.preprocess(x)
        features = model.backbone(batch)
        images = ImageList(batch, [size] * len(x))
        regular, _ = model.rpn(images, features)
        levels = list(features.values())
        anchors = model.rpn.anchor_generator(images, levels)[0]
        proposals, counts = fixed_proposals(model.rpn, levels, anchors, size)
    assert proposals.shape == (2, 200, 4)
    for p, n, r in zip(proposals, counts.tolist(), regular):
        assert n == len(r) < 200  # padded proposals present
        assert torch.equal(p[:n], r)


def test_faster_rcnn_equals_regular_path(rcnn):
    model, det, x, fixed, regular = rcnn
    counts = assert_same_detections(fixed, regular)
    # padding exercised, and enough detections for the comparison to mean something
    assert all(10 <= c < det.max_detections for c in counts), counts
    # the wrapper shares the model's modules and weights
    assert det.model is model
    assert {id(p) for p in det.parameters()} == {id(p) for p in model.parameters()}


def test_faster_rcnn_max_detections_cuts_like_the_regular_path(rcnn):
    model, _, x, _, regular = rcnn
    det = FixedSizeDetector(model, max_detections=7)
    with torch.no_grad():
        fixed = det(x)  # (the same batch: a batch of one convolves to other roundings)
    # the regular path with detections_per_img = 7 keeps the first 7 of its ranking
    first = [{k: v[:7] for k, v in r.items()} for r in regular]
    assert assert_same_detections(fixed, first) == [7, 7]


def test_retinanet_equals_regular_path():
    model = _build("retinanet_resnet50_fpn", **RETINA)
    det = FixedSizeDetector(model, max_detections=150)
    model.detections_per_img = 150
    x = _images()
    with torch.no_grad():
        fixed, regular = det(x), model(list(x))
    # a pairing: the regular path's topk orders exactly equal scores as it likes
    counts = assert_same_detections(fixed, regular, ordered=False)
    assert all(c == 150 for c in counts), counts


def test_export_round_trip_and_save_load(one_image):
    det, x, fixed = one_image
    with torch.no_grad():
        ep = torch.export.export(det, (x,), strict=False)
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        # no data-dependent shapes or host reads left in the graph
        assert not any("nonzero" in t or "_local_scalar_dense" in t for t in targets), targets
        assert "cvops.nms_fixed.default" in targets
        # (the saved and loaded program's .module() is run: one forward proves both)
        buffer = io.BytesIO()
        torch.export.save(ep, buffer)
        buffer.seek(0)
        loaded = torch.export.load(buffer)
        for out, want in zip(loaded.module()(x), fixed):
            assert torch.equal(out, want)


@pytest.mark.slow
def test_retinanet_export_and_compile():
    model = _build("retinanet_resnet50_fpn", **RETINA)
    det = FixedSizeDetector(model)
    x = _images(n=1)
    with torch.no_grad():
        fused_layers.ONEDNN = False  # the ops export and compile trace (see one_image)
        try:
            fixed = det(x)
        finally:
            fused_layers.ONEDNN = True
        exported = torch.export.export(det, (x,), strict=False).module()(x)
        torch._dynamo.reset()
        compiled = torch.compile(det, fullgraph=True, backend="eager")(x)
        torch._dynamo.reset()
    assert int(fixed[3]) > 0
    for a, b, c in zip(fixed, exported, compiled):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_compile_fullgraph(one_image):
    det, x, fixed = one_image
    torch._dynamo.reset()
    compiled = torch.compile(det, fullgraph=True, backend="eager")
    with torch.no_grad():
        out = compiled(x)
    torch._dynamo.reset()
    for got, want in zip(out, fixed):
        assert torch.equal(got, want)


def test_bad_arguments(rcnn):
    model, det, x, _, _ = rcnn
    with pytest.raises(TypeError, match="model must be"):
        FixedSizeDetector(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_detections"):
        FixedSizeDetector(model, max_detections=0)
    with pytest.raises(TypeError, match="max_detections"):
        FixedSizeDetector(model, max_detections=2.0)
    with torch.device("meta"):
        masked = maskrcnn_resnet50_fpn(num_classes=3)
    assert isinstance(masked, FasterRCNN)
    with pytest.raises(ValueError, match="mask"):
        FixedSizeDetector(masked)
    with pytest.raises(ValueError, match="images"):
        det(list(x))
    with pytest.raises(ValueError, match="channels"):
        det(x[:, :1])
    with pytest.raises(TypeError, match="floating point"):
        det((x * 255).to(torch.uint8))
    det.train()
    try:
        with pytest.raises(RuntimeError, match="inference only"):
            det(x)
    finally:
        det.eval()


@requires_cuda
@pytest.mark.cuda
def test_cuda_graph_capture_replays_the_detections():
    model = _build("fasterrcnn_resnet50_fpn", **RCNN).cuda()
    det = FixedSizeDetector(model)
    static_x = _images(seed=1).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        det(static_x)  # warm-up: kernels loaded, anchors cached on the device
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = det(static_x)
    for seed in (2, 3):
        x = _images(seed=seed).cuda()
        static_x.copy_(x)
        graph.replay()
        with torch.no_grad():
            eager, regular = det(x), model(list(x))
        assert torch.equal(static_out[3], eager[3]) and torch.equal(static_out[2], eager[2])
        assert torch.allclose(static_out[0], eager[0], rtol=0, atol=BOX_ATOL)
        assert torch.allclose(static_out[1], eager[1], rtol=0, atol=SCORE_ATOL)
        assert_same_detections([t.cpu() for t in static_out], _to_cpu(regular))


def _to_cpu(detections):
    return [{k: v.cpu() for k, v in d.items()} for d in detections]
