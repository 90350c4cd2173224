"""The detection command end to end on tiny data (64 px synthetic COCO, a ResNet-18-FPN Mask
R-CNN with small heads): the loss on a fixed batch, training with COCO evaluation and its
outputs, resume, prediction, and 2-process DDP with the evaluation gathered over both ranks."""

import json
import os

import pytest
import torch

from cvops.data.coco import CocoDetection
from cvops.train import detection
from cvops.train.engine import load_checkpoint
from tests.conftest import requires_ops
from tests.train._launch import torchrun

pytestmark = requires_ops

# a light Mask R-CNN: ResNet-18-FPN, anchors for 64 px images, small RoI samples
LIGHT = (
    "--backbone resnet18 --anchor-sizes 16,32,64,128,256 "
    "--model-arg rpn_post_nms_top_n_train=50 --model-arg rpn_post_nms_top_n_test=50 "
    "--model-arg box_batch_size_per_image=16 --model-arg box_detections_per_img=20"
).split()
# 5 synthetic images, the last one empty: 4 for training, 1 step of 4 per epoch
TINY = (
    LIGHT
    + (
        "--model maskrcnn_resnet50_fpn --image-size 64 --train-size 5 --val-size 4 --batch-size 4 "
        "--clip-grad 1 --warmup-iters 0 --vis-samples 2 --no-progress"
    ).split()
)
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("det_data"))


def train(out, data_root, *args):
    argv = TINY + ["--data-root", data_root, "--out", str(out)] + [str(a) for a in args]
    return detection.main(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("det")
    train(out, data_root, "--epochs", 2, "--save-every", 1)
    return out


def test_loss_goes_down_on_a_fixed_batch(trained, data_root):
    folder = [d for d in os.listdir(data_root) if d.startswith("train_")][0]
    ds = CocoDetection(
        os.path.join(data_root, folder, "images"),
        os.path.join(data_root, folder, "instances.json"),
        remove_images_without_annotations=True,
        drop_crowd=True,
    )
    torch.manual_seed(0)
    build = load_checkpoint(os.path.join(trained, "checkpoint_last.pt"))["meta"]["build"]
    model = detection.DetectorAdapter(
        detection.build_detector("maskrcnn_resnet50_fpn", ds.num_classes, **build)
    ).train()
    inputs, targets = detection.collate([ds[0], ds[1]])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    losses = []
    for _ in range(4):
        loss_dict = model(inputs)
        assert {"loss_classifier", "loss_mask", "loss_objectness"} <= set(loss_dict)
        loss = detection.total_loss(loss_dict)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses


def test_training_writes_coco_metrics_and_outputs(trained):
    written = set(os.listdir(trained))
    assert {"checkpoint_last.pt", "checkpoint_epoch001.pt", "metrics.json"} <= written
    assert {"curves.png", "predictions.png"} <= written
    history = metrics(trained)
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 1), (2, 2)]
    record = history[-1]
    assert record["train_loss"] > 0 and record["val_loss"] is None  # detections carry no loss
    val = record["val"]
    assert val["num_images"] == 4
    for iou_type in ("bbox", "segm"):
        for key in COCO_KEYS:
            assert -1 <= val["%s_%s" % (iou_type, key)] <= 1
    meta = load_checkpoint(os.path.join(trained, "checkpoint_last.pt"))["meta"]
    assert meta["task"] == "detection" and meta["num_classes"] == 4
    assert meta["classes"] == ["__background__", "rectangle", "triangle", "disc"]
    assert meta["build"]["backbone"] == "resnet18" and meta["build"]["min_size"] == 64
    from PIL import Image

    with Image.open(os.path.join(trained, "predictions.png")) as im:
        assert im.size[0] > 2 * 64 and im.size[1] > 2 * 64  # 2 rows of (truth, prediction)


def test_resume_matches_the_uninterrupted_run(trained, data_root, tmp_path):
    out = tmp_path / "resumed"
    ck = os.path.join(trained, "checkpoint_epoch001.pt")
    history = train(out, data_root, "--epochs", 2, "--resume", ck)
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 1), (2, 2)]
    assert history[-1]["train_loss"] == pytest.approx(metrics(trained)[-1]["train_loss"], rel=1e-5)
    resumed = load_checkpoint(str(out / "checkpoint_last.pt"))["model"]
    straight = load_checkpoint(os.path.join(trained, "checkpoint_last.pt"))["model"]
    for key, value in straight.items():
        assert torch.allclose(resumed[key].float(), value.float(), atol=1e-5), key


def test_predict_command_and_function(trained, data_root, tmp_path):
    folder = [d for d in os.listdir(data_root) if d.startswith("val_")][0]
    images = os.path.join(data_root, folder, "images")
    image = os.path.join(images, sorted(os.listdir(images))[0])
    out = tmp_path / "pred.png"
    dets = detection.main(
        [
            "predict",
            "--checkpoint",
            os.path.join(trained, "checkpoint_last.pt"),
            "--image",
            image,
            "--out",
            str(out),
            "--score-thresh",
            "0.0",
        ]
    )
    assert {"boxes", "labels", "scores", "masks"} <= set(dets)
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (64, 64)
    # the shared predict tool hands a detection checkpoint to the detection task
    from cvops import predict

    shared = tmp_path / "shared.png"
    checkpoint = os.path.join(trained, "checkpoint_last.pt")
    predict.main(["--checkpoint", checkpoint, "--image", image, "--out", str(shared)])
    with Image.open(shared) as im:
        assert im.size == (64, 64)
    model, meta = detection.load_detector(os.path.join(trained, "checkpoint_last.pt"))
    from cvops.data import read_image

    picture = detection.predict_image(model, read_image(image), meta["classes"], 0.0, scale=2)
    assert picture.dtype == torch.uint8 and picture.shape == (3, 128, 128)
    # a perfect "detection" (the ground truth) is drawn: the picture changes
    target = {
        "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]),
        "labels": torch.tensor([1]),
        "masks": torch.zeros(1, 64, 64, dtype=torch.uint8),
    }
    drawn = detection.draw_detections(torch.zeros(3, 64, 64), target, meta["classes"])
    assert drawn.shape == (3, 64, 64) and drawn.sum() > 0


def test_ddp_two_processes_gather_the_evaluation(trained, data_root, tmp_path):
    """torchrun with 2 gloo processes: trains, evaluates each validation image once over the
    two ranks, and rank 0's COCO numbers equal a 1-process evaluation of its checkpoint."""
    ddp = tmp_path / "ddp"
    torchrun(
        "cvops.train.detection", TINY + ["--data-root", data_root, "--epochs", 1, "--out", ddp]
    )
    (two,) = metrics(ddp)
    assert two["step"] == 1 and two["val"]["num_images"] == 4
    # evaluate the DDP checkpoint in one process (resumed at its last epoch: evaluation only)
    one = train(tmp_path / "one", data_root, "--epochs", 1, "--resume", ddp / "checkpoint_last.pt")
    assert len(one) == 2 and one[-1]["eval_only"]
    for key, value in one[-1]["val"].items():
        assert two["val"][key] == pytest.approx(value, abs=1e-3), key


@pytest.mark.parametrize(
    "name, losses",
    [
        ("fasterrcnn_resnet50_fpn", {"loss_classifier", "loss_box_reg", "loss_objectness"}),
        ("retinanet_resnet50_fpn", {"classification", "bbox_regression"}),
    ],
)
def test_light_builders_train_and_detect(name, losses):
    torch.manual_seed(0)
    model = detection.build_detector(
        name, 3, backbone="resnet18", min_size=64, max_size=64, anchor_sizes=[16, 32, 64, 128, 256]
    )
    model = detection.DetectorAdapter(model).train()
    image = torch.rand(3, 64, 64)
    target = {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what --amp does on CPU
        loss_dict = model(([image], [target]))
    assert set(loss_dict) >= losses
    detection.total_loss(loss_dict).backward()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (dets,) = model.eval()(([image], None))
    # detections in float32 under autocast too
    assert {"boxes", "labels", "scores"} <= set(dets) and dets["boxes"].dtype == torch.float32
