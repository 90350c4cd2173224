"""YOLOv5 (v6.0+): parameter counts of every scale, the ``yolov5`` package's weights loaded
with strict=True giving the same raw and decoded head outputs (320x320), and its loss
(``ComputeLoss``, with the training script's gain scaling) on the same batch."""

import pytest
import torch

import cvops.models as cm
from cvops.models.yolo import yolov5n
from cvops.models.yolo.loss_v5 import YOLOv5Loss

from ._equiv import build_on_meta, num_params, randomize_constants_, transplant
from ._yolo_refs import (
    assert_same_outputs,
    normalized_targets,
    run_both,
    yolov5_compute_loss,
    yolov5_model,
)

# yolov5{n,s,m,l,x}.yaml at 80 classes, as the yolov5 package's model summary counts them
COUNTS = {
    "yolov5n": 1_872_157,
    "yolov5s": 7_235_389,
    "yolov5m": 21_190_557,
    "yolov5l": 46_563_709,
    "yolov5x": 86_749_405,
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count(name):
    assert num_params(build_on_meta(cm.get_model_builder(name))) == COUNTS[name]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = yolov5_model("n")
    randomize_constants_(ref)
    ours = transplant(ref, build_on_meta(yolov5n))
    return ref, ours


def test_anchor_buffer_in_grid_units(pair):
    ref, ours = pair
    assert torch.equal(ours.head.anchors, ref.model[-1].anchors)
    # the buffer the checkpoints carry is the pixel anchors divided by the level strides
    fresh = yolov5n()
    torch.testing.assert_close(fresh.head.anchors, ref.model[-1].anchors)


def test_equivalence_eval(pair):
    expected, actual = run_both(*pair, (2, 3, 320, 320), seed=1, train=False)
    assert actual[0].shape == (2, 3 * (40 * 40 + 20 * 20 + 10 * 10), 85)
    assert_same_outputs(actual, expected)  # decoded, and the raw level outputs


def test_equivalence_train_mode_non_square(pair):
    expected, actual = run_both(*pair, (1, 3, 256, 320), seed=2, train=True)
    assert_same_outputs(actual, expected)


def test_loss_matches_yolov5_package():
    torch.manual_seed(0)
    nc, size = 5, 320
    ref = yolov5_model("n", nc=nc)
    ours = yolov5n(num_classes=nc, image_size=size)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.train()
    ours.train()
    # a small box (matches no anchor of the coarse levels), boxes near cell edges (neighbour
    # cells), an image without objects
    boxes = [
        torch.tensor([[20.0, 30, 120, 140], [150, 40, 300, 200], [8, 8, 20, 16]]),
        torch.tensor([[10.0, 10, 60, 90], [100, 100, 200, 250], [40, 40, 90, 70]]),
        torch.zeros(0, 4),
    ]
    labels = [torch.tensor([1, 3, 2]), torch.tensor([0, 4, 2]), torch.zeros(0, dtype=torch.long)]
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    # the reference training script scales the gains to the classes and the image size
    hyp = dict(
        box=0.05,
        obj=(size / 640) ** 2,
        cls=0.5 * nc / 80,
        anchor_t=4.0,
        fl_gamma=0.0,
        cls_pw=1.0,
        obj_pw=1.0,
        label_smoothing=0.0,
    )
    total, items = yolov5_compute_loss(ref, hyp)(
        ref(x), normalized_targets(boxes, labels, size, size)
    )
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
    actual = YOLOv5Loss(nc, image_size=size)(ours(x), ours.head.anchors, targets)
    got = torch.stack([actual["loss_box"], actual["loss_obj"], actual["loss_cls"]])
    assert (items > 0).all()
    torch.testing.assert_close(got.detach(), items, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sum(actual.values()) * 3, total[0], rtol=1e-4, atol=1e-6)


def test_detector_interface_scores_are_objectness_times_class():
    model = yolov5n(num_classes=2, image_size=64, score_thresh=0.0).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        decoded, _ = model(x)
        boxes, scores = model.boxes_and_scores(decoded)
    torch.testing.assert_close(scores, decoded[..., 5:] * decoded[..., 4:5])
    xy, wh = decoded[..., :2], decoded[..., 2:4]
    torch.testing.assert_close(boxes[..., 2:] - boxes[..., :2], wh)
    torch.testing.assert_close((boxes[..., 2:] + boxes[..., :2]) / 2, xy)
