"""Every public op and module scripts with torch.jit.script and gives the eager results."""

import warnings

import pytest
import torch

import cvops
from cvops.ops import boxes as B
from tests.conftest import requires_ops

pytestmark = [
    requires_ops,
    # torch.jit.script is deprecated in this torch, but deployments still script detectors.
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _script(obj):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(obj)


def _feature_map():
    return torch.randn(2, 3, 10, 12)


def _rois():
    return torch.tensor([[0, 1.0, 1.0, 7.5, 6.0], [1, 0.0, 2.0, 3.0, 9.0], [1, 2.0, 2.0, 2.5, 2.5]])


def _per_image(rois):
    return [rois[rois[:, 0] == i, 1:] for i in range(2)]


def _xyxy(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30], 1)


@pytest.mark.parametrize("op", [cvops.roi_align, cvops.roi_pool])
def test_roi_functions(op):
    scripted = _script(op)
    x, rois = _feature_map(), _rois()
    expected = op(x, rois, (3, 2), 0.5)
    assert torch.equal(scripted(x, rois, (3, 2), 0.5), expected)
    assert torch.equal(scripted(x, _per_image(rois), [3, 2], 0.5), expected)
    assert torch.equal(scripted(x, rois, 4), op(x, rois, 4))  # int output_size broadcast


def test_roi_align_keyword_arguments():
    scripted = _script(cvops.roi_align)
    x, rois = _feature_map(), _rois()
    kwargs = dict(spatial_scale=0.5, sampling_ratio=2, aligned=True)
    assert torch.equal(scripted(x, rois, 3, **kwargs), cvops.roi_align(x, rois, 3, **kwargs))


@pytest.mark.parametrize(
    "module",
    [
        cvops.ops.RoIAlign((3, 2), 0.5, 2, aligned=True),
        cvops.ops.RoIAlign([3, 3], 1.0, -1),
        cvops.ops.RoIPool(3, 0.5),
    ],
    ids=["RoIAlign", "RoIAlign-list", "RoIPool"],
)
def test_roi_modules(module):
    scripted = _script(module)
    x, rois = _feature_map(), _rois()
    assert torch.equal(scripted(x, rois), module(x, rois))
    assert torch.equal(scripted(x, _per_image(rois)), module(x, rois))


def test_multiscale_roi_align_module():
    pooler = cvops.ops.MultiScaleRoIAlign(["p2", "p3"], 3, 2)
    feats = {"p2": torch.randn(2, 3, 16, 16), "p3": torch.randn(2, 3, 8, 8)}
    boxes = [torch.tensor([[0, 0, 60, 60.0], [1, 1, 5, 5]]), torch.tensor([[2, 2, 30, 40.0]])]
    shapes = [(64, 64), (60, 64)]
    scripted = _script(pooler)
    out = scripted(feats, boxes, shapes)
    assert torch.equal(out, pooler(feats, boxes, shapes))
    assert scripted.scales == pooler.scales == [0.25, 0.125]
    assert (scripted.k_min, scripted.k_max) == (2, 3)


def test_nms_functions():
    boxes, scores = _xyxy(40), torch.rand(40)
    idxs = torch.randint(0, 3, (40,))
    assert torch.equal(_script(cvops.nms)(boxes, scores, 0.3), cvops.nms(boxes, scores, 0.3))
    assert torch.equal(
        _script(cvops.batched_nms)(boxes, scores, idxs, 0.3),
        cvops.batched_nms(boxes, scores, idxs, 0.3),
    )
    empty = torch.zeros(0, 4)
    assert _script(cvops.batched_nms)(empty, empty[:, 0], empty[:, 0].long(), 0.5).shape == (0,)
    for got, want in zip(
        _script(cvops.nms_fixed)(boxes, scores, 0.3, 8), cvops.nms_fixed(boxes, scores, 0.3, 8)
    ):
        assert torch.equal(got, want)
    for method in ("linear", "gaussian"):
        got = _script(cvops.soft_nms)(boxes, scores, 0.3, 0.5, 0.01, method)
        want = cvops.soft_nms(boxes, scores, 0.3, 0.5, 0.01, method)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize(
    "in_fmt,out_fmt",
    [("xyxy", "cxcywh"), ("xywh", "xyxy"), ("cxcywhr", "xyxyxyxy"), ("xyxyxyxy", "xywhr")],
)
def test_box_convert(in_fmt, out_fmt):
    boxes = torch.rand(5, {"xywhr": 5, "cxcywhr": 5, "xyxyxyxy": 8}.get(in_fmt, 4)) * 20
    got = _script(B.box_convert)(boxes, in_fmt, out_fmt)
    assert torch.equal(got, B.box_convert(boxes, in_fmt, out_fmt))


@pytest.mark.parametrize(
    "name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]
)
def test_pairwise_box_functions(name):
    a, b = _xyxy(6, 1), _xyxy(4, 2)
    fn = getattr(B, name)
    assert torch.equal(_script(fn)(a, b), fn(a, b))


def test_box_iou_rotated_and_other_box_functions():
    rotated = torch.tensor([[10.0, 10, 8, 4, 30], [12, 11, 6, 6, -45], [40, 40, 2, 3, 0]])
    scripted_iou = _script(B.box_iou)
    assert torch.equal(
        scripted_iou(rotated, rotated, "cxcywhr"), B.box_iou(rotated, rotated, "cxcywhr")
    )
    boxes = _xyxy(10, 3) - 10
    assert torch.equal(_script(B.box_area)(boxes, "xyxy"), B.box_area(boxes))
    clip = _script(B.clip_boxes_to_image)
    assert torch.equal(clip(boxes, (30, 40)), B.clip_boxes_to_image(boxes, (30, 40)))
    small = _script(B.remove_small_boxes)
    assert torch.equal(small(boxes, 10.0), B.remove_small_boxes(boxes, 10.0))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_loss(reduction):
    scripted = _script(cvops.sigmoid_focal_loss)
    logits = torch.randn(6, 5, requires_grad=True)
    targets = (torch.rand(6, 5) > 0.7).float()
    got = scripted(logits, targets, alpha=0.3, gamma=1.5, reduction=reduction)
    want = cvops.sigmoid_focal_loss(logits, targets, alpha=0.3, gamma=1.5, reduction=reduction)
    assert torch.equal(got, want)
    (g_script,) = torch.autograd.grad(got.sum(), logits)
    (g_eager,) = torch.autograd.grad(want.sum(), logits)
    assert torch.equal(g_script, g_eager)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_depthwise_conv2d(padding_mode):
    layer = cvops.ops.DepthwiseConv2d(4, 3, stride=2, padding=1, padding_mode=padding_mode)
    x = torch.randn(1, 4, 9, 9)
    assert torch.equal(_script(layer)(x), layer(x))
    fn = _script(cvops.depthwise_conv2d)
    # An int default of a BroadcastingList argument is not broadcast when a scripted function
    # is called from Python (a TorchScript limitation): pass every pair here.
    got = fn(x, layer.weight, layer.bias, 2, 1, 1)
    assert torch.equal(got, cvops.depthwise_conv2d(x, layer.weight, layer.bias, 2, 1))
