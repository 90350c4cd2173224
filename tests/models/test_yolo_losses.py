"""The pieces of the YOLO losses and inference on hand-made cases: the element-wise IoU
losses against torchvision.ops, the task-aligned assigner, YOLOv5's anchor matching, the
distribution focal loss, box decoding round trips, letterboxing and class-aware NMS."""

import math

import pytest
import torch
import torchvision.ops as tvo

import cvops
from cvops.models.yolo.anchor_points import (
    boxes_to_distances,
    distances_to_boxes,
    make_anchor_points,
)
from cvops.models.yolo.assigners import TaskAlignedAssigner, match_anchors
from cvops.models.yolo.common import decode_anchor_level, make_grid
from cvops.models.yolo.detector import (
    letterbox,
    select_detections,
    select_detections_fixed,
    unletterbox_boxes,
)
from cvops.models.yolo.loss_v8 import distribution_focal_loss
from tests.conftest import requires_ops

LOSSES = ("generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss")


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat((xy, xy + wh), 1)


# ---------------------------------------------------------------------------- IoU losses


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_loss_matches_torchvision(name, reduction):
    a, b = _random_boxes(64, 0), _random_boxes(64, 1)
    a[:4] = b[:4]  # identical boxes
    a[4, 2:] = a[4, :2] + 1e-3  # a sliver
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    ours = getattr(cvops, name)(a1, b, reduction=reduction)
    ref = getattr(tvo, name)(a2, b, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_iou_loss_batched_half_and_empty(name):
    a, b = _random_boxes(12, 2).view(3, 4, 4), _random_boxes(12, 3).view(3, 4, 4)
    fn, ref = getattr(cvops.ops, name), getattr(tvo, name)
    torch.testing.assert_close(fn(a, b), ref(a, b))
    torch.testing.assert_close(fn(a.half(), b.half()), ref(a.half(), b.half()))
    empty = torch.zeros(0, 4, requires_grad=True)
    out = fn(empty, torch.zeros(0, 4), reduction="mean")
    assert out.item() == 0.0 and out.requires_grad


@pytest.mark.parametrize("name", LOSSES)
def test_iou_loss_scriptable_and_errors(name):
    fn = getattr(cvops.ops, name)
    scripted = torch.jit.script(fn)
    a, b = _random_boxes(5, 4), _random_boxes(5, 5)
    torch.testing.assert_close(scripted(a, b, "sum"), fn(a, b, "sum"))
    with pytest.raises(ValueError, match="boxes1"):
        fn(torch.zeros(3, 5), b[:3])
    with pytest.raises(ValueError, match="reduction"):
        fn(a, b, reduction="max")


def test_complete_iou_loss_by_hand():
    # pred [0, 0, 16, 8] vs target [0, 0, 16, 16]: IoU 1/2, centres 4 px apart, hull
    # diagonal^2 = 512, aspect term v = 4/pi^2 (atan 1 - atan 2)^2
    pred, target = torch.tensor([[0.0, 0, 16, 8]]), torch.tensor([[0.0, 0, 16, 16]])
    v = 4 / math.pi**2 * (math.atan(1) - math.atan(2)) ** 2
    alpha = v / (1 - 0.5 + v)
    expected = 1 - 0.5 + 16 / 512 + alpha * v
    assert abs(cvops.complete_box_iou_loss(pred, target).item() - expected) < 1e-6
    assert abs(cvops.distance_box_iou_loss(pred, target).item() - (0.5 + 16 / 512)) < 1e-6
    # GIoU: the hull is the target itself, so 1 - IoU
    assert abs(cvops.generalized_box_iou_loss(pred, target).item() - 0.5) < 1e-6


# ---------------------------------------------------------------------- YOLOv8 assigner


def _ciou(pred, target):
    return 1 - cvops.complete_box_iou_loss(torch.tensor(pred), torch.tensor(target)).item()


def test_task_aligned_assigner_by_hand():
    # a 4x4 grid of stride 8 (centres 4, 12, 20, 28); one ground truth [0, 0, 16, 16] of
    # class 1 contains the centres of cells 0, 1, 4, 5
    points, strides = make_anchor_points([(4, 4)], [8.0])
    points = points * strides
    gt = torch.tensor([[[0.0, 0, 16, 16]]])
    pred = torch.tensor([[40.0, 40, 50, 50]]).repeat(16, 1)  # far away elsewhere
    pred[0] = torch.tensor([0.0, 0, 16, 16])  # exact
    pred[1] = torch.tensor([0.0, 0, 16, 8])  # IoU 1/2
    pred[4] = torch.tensor([0.0, 0, 8, 8])  # IoU 1/4
    pred[5] = torch.tensor([4.0, 4, 12, 12])  # IoU 1/4, same centre
    scores = torch.full((1, 16, 2), 0.5)
    assigner = TaskAlignedAssigner(num_classes=2, topk=2, alpha=0.5, beta=6.0)
    boxes, target_scores, fg, gt_idx = assigner(
        scores, pred[None], points, torch.tensor([[1]]), gt, torch.tensor([[True]])
    )
    # the two best-aligned cells: 0 (CIoU 1) and 1 (CIoU of [0,0,16,8] ~ 0.42)
    assert fg[0].nonzero().flatten().tolist() == [0, 1]
    assert torch.equal(boxes[0, 0], gt[0, 0]) and torch.equal(boxes[0, 1], gt[0, 0])
    # soft targets: alignment / best alignment x best IoU (1 here) on the gt's class only
    v = 4 / math.pi**2 * (math.atan(1) - math.atan(2)) ** 2
    ciou1 = 0.5 - 16 / 512 - v * v / (0.5 + v)  # IoU - d^2/c^2 - alpha v, by hand
    assert abs(ciou1 - _ciou([[0.0, 0, 16, 8]], [[0.0, 0, 16, 16]])) < 1e-6
    assert target_scores[0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert target_scores[0, 1].tolist() == pytest.approx([0.0, ciou1**6], rel=1e-4)
    assert target_scores[0, 2:].abs().sum() == 0


def test_task_aligned_assigner_conflict_keeps_best_overlap():
    # two ground truths both contain the single cell centre (4, 4); the prediction matches
    # the second one better, so the cell goes to it
    points = torch.tensor([[4.0, 4.0]])
    gts = torch.tensor([[[0.0, 0, 8, 8], [2.0, 2, 7, 7]]])
    pred = torch.tensor([[[2.0, 2, 7, 7]]])
    scores = torch.tensor([[[0.9, 0.1]]])
    assigner = TaskAlignedAssigner(num_classes=2, topk=1)
    _, target_scores, fg, gt_idx = assigner(
        scores, pred, points, torch.tensor([[0, 1]]), gts, torch.tensor([[True, True]])
    )
    assert fg.tolist() == [[True]] and gt_idx.tolist() == [[1]]
    assert target_scores[0, 0, 0] == 0 and target_scores[0, 0, 1] > 0


def test_task_aligned_assigner_padding_and_min_size():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    scores = torch.full((1, 2, 1), 0.5)
    pred = torch.tensor([[[0.0, 0, 8, 8], [8.0, 0, 16, 8]]])
    tiny = torch.tensor([[[5.0, 5, 7, 7], [0.0, 0, 0, 0]]])  # a 2 px box and padding
    valid = torch.tensor([[True, False]])
    labels = torch.zeros(1, 2, dtype=torch.long)
    _, _, fg, _ = TaskAlignedAssigner(1, topk=1)(scores, pred, points, labels, tiny, valid)
    assert not fg.any()  # no centre inside the tiny box, padding never assigned
    _, _, fg, _ = TaskAlignedAssigner(1, topk=1, min_gt_size=8)(
        scores, pred, points, labels, tiny, valid
    )
    assert fg.tolist() == [[True, False]]  # enlarged to 8 px about (6, 6): holds (4, 4)


# -------------------------------------------------------------- YOLOv5 anchor matching


def test_match_anchors_by_hand():
    # centre (5.3, 2.7), size 2x3 on an 8x8 grid; anchors 1x1 (ratio 3 < 4), 2x3 (1) and
    # 10x10 (5: no match). x frac 0.3 -> the left neighbour (gi 4); y frac 0.7 -> no up;
    # 8 - 2.7 = 5.3 (frac 0.3) -> the down neighbour (gj 3); 8 - 5.3 = 2.7 -> no right
    targets = torch.tensor([[0.0, 2.0, 5.3, 2.7, 2.0, 3.0]])
    anchors = torch.tensor([[1.0, 1.0], [2.0, 3.0], [10.0, 10.0]])
    img, anchor, gj, gi, box, cls = match_anchors(targets, anchors, (8, 8), anchor_t=4.0)
    assert anchor.tolist() == [0, 1, 0, 1, 0, 1]
    assert gi.tolist() == [5, 5, 4, 4, 5, 5]
    assert gj.tolist() == [2, 2, 2, 2, 3, 3]
    assert img.tolist() == [0] * 6 and cls.tolist() == [2] * 6
    expected_xy = [[0.3, 0.7], [0.3, 0.7], [1.3, 0.7], [1.3, 0.7], [0.3, -0.3], [0.3, -0.3]]
    torch.testing.assert_close(box[:, :2], torch.tensor(expected_xy), atol=1e-5, rtol=0)
    assert (box[:, 2:] == torch.tensor([2.0, 3.0])).all()


def test_match_anchors_border_and_empty():
    # a centre in the first cell has no left/up neighbour (gxy > 1 fails)
    targets = torch.tensor([[0.0, 0.0, 0.4, 0.4, 1.0, 1.0]])
    _, _, gj, gi, _, _ = match_anchors(targets, torch.tensor([[1.0, 1.0]]), (4, 4))
    assert gi.tolist() == [0] and gj.tolist() == [0]
    out = match_anchors(torch.zeros(0, 6), torch.tensor([[1.0, 1.0]]), (4, 4))
    assert all(len(t) == 0 for t in out)


# ------------------------------------------------------------------------------- DFL


def test_distribution_focal_loss_by_hand():
    # uniform logits: -log(1/16) whatever the target
    uniform = torch.zeros(2, 4, 16)
    target = torch.tensor([[0.0, 3.5, 7.25, 14.0]] * 2)
    torch.testing.assert_close(
        distribution_focal_loss(uniform, target), torch.full((2,), math.log(16))
    )
    # target 2.25: weights 0.75 on bin 2, 0.25 on bin 3; logits with log-probs known
    logp = torch.log(torch.tensor([0.1, 0.2, 0.4, 0.3]))
    loss = distribution_focal_loss(logp.view(1, 1, 4).repeat(1, 4, 1), torch.full((1, 4), 2.25))
    expected = -(0.75 * math.log(0.4) + 0.25 * math.log(0.3))
    assert abs(loss.item() - expected) < 1e-6


# ---------------------------------------------------------------------- decoding, NMS


def test_anchor_free_decoding_round_trip():
    points, strides = make_anchor_points([(2, 3), (1, 2)], [8.0, 16.0])
    assert points.tolist()[:4] == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5]]
    assert strides.flatten().tolist() == [8.0] * 6 + [16.0] * 2
    boxes = torch.tensor([[0.1, 0.2, 1.0, 1.9]]).repeat(8, 1) + points.repeat(1, 2) - 0.5
    dist = boxes_to_distances(points, boxes, 15.99)
    torch.testing.assert_close(distances_to_boxes(dist, points), boxes)


def test_anchor_based_decoding_by_hand():
    # logits giving sigmoid 0.75 (x), 0.5 (y), 0.5 (w), 1 (h) in cell (gx 2, gy 1), stride 8
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    p = torch.zeros(1, 1, 2, 3, 6)
    p[0, 0, 1, 2] = torch.tensor([logit(0.75), 0.0, 0.0, 20.0, 0.0, 0.0])
    out = decode_anchor_level(
        p, make_grid(3, 2), torch.tensor([10.0, 20.0]).view(1, 1, 1, 1, 2), 8.0
    )
    cx, cy, w, h = out[0, 1 * 3 + 2, :4].tolist()
    assert cx == pytest.approx((2 * 0.75 - 0.5 + 2) * 8)
    assert cy == pytest.approx((2 * 0.5 - 0.5 + 1) * 8)
    assert w == pytest.approx((2 * 0.5) ** 2 * 10)
    assert h == pytest.approx(4 * 20, rel=1e-6)


def test_letterbox_round_trip():
    image = torch.rand(3, 40, 80)
    canvas, scale, pad = letterbox(image, (64, 64))
    assert canvas.shape == (3, 64, 64) and scale == 0.8 and pad == (0.0, 16.0)
    assert (canvas[:, :16] == 114 / 255).all() and (canvas[:, 48:] == 114 / 255).all()
    boxes = torch.tensor([[10.0, 5.0, 70.0, 35.0]])
    on_canvas = boxes * scale + torch.tensor([pad[0], pad[1], pad[0], pad[1]])
    torch.testing.assert_close(unletterbox_boxes(on_canvas, scale, pad, (40, 80)), boxes)


@requires_ops
def test_select_detections_class_aware():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [0.0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.0, 0.0005]])
    kept_boxes, kept_scores, cls = select_detections(boxes, scores, 0.001, 0.5, max_det=10)
    # box 1 is suppressed by box 0 (same class); box 2 overlaps but is another class; box 3
    # is below the score threshold
    assert kept_scores.tolist() == pytest.approx([0.9, 0.7])
    assert cls.tolist() == [0, 1]
    assert len(select_detections(boxes, scores, 0.001, 0.5, max_det=1)[0]) == 1
    fb, fs, fc, num = select_detections_fixed(boxes, scores, 0.001, 0.5, max_det=4)
    assert int(num) == 2 and fs.tolist()[:2] == pytest.approx([0.9, 0.7])
    assert fc.tolist() == [0, 1, -1, -1] and torch.equal(fb[:2], kept_boxes)


@requires_ops
def test_detect_fixed_matches_the_dynamic_path_on_single_class():
    # one class: "each cell's best class" equals every (cell, class) pair
    from cvops.models.yolo import yolov8n

    torch.manual_seed(0)
    model = yolov8n(num_classes=1, image_size=64, score_thresh=0.0, detections_per_img=20).eval()
    batch = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        boxes, scores, labels, num = model.detect_fixed(batch)
        frames = [(1.0, (0.0, 0.0), (64, 64))] * 2
        dynamic = model.postprocess(model(batch)[0], frames)
    assert boxes.shape == (2, 20, 4) and num.tolist() == [len(d["scores"]) for d in dynamic]
    for b, d in enumerate(dynamic):
        n = int(num[b])
        torch.testing.assert_close(scores[b, :n], d["scores"])
        # the dynamic path clips to the image, the export path leaves that to the caller
        torch.testing.assert_close(boxes[b, :n].clamp(0, 64), d["boxes"], atol=1e-4, rtol=0)
        assert (labels[b, :n] == 1).all() and (labels[b, n:] == 0).all()


@requires_ops
def test_detect_fixed_exports():
    # torch.export: no data-dependent shapes on the fixed path (nms_fixed is a custom op)
    from cvops.models.yolo import yolov8n

    class Export(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.detect_fixed(x)

    torch.manual_seed(0)
    model = yolov8n(num_classes=2, image_size=64, score_thresh=0.0, detections_per_img=10).eval()
    x = torch.rand(1, 3, 64, 64)
    program = torch.export.export(Export(model), (x,))
    for a, b in zip(program.module()(x), model.detect_fixed(x), strict=True):
        assert torch.equal(a, b)
