"""The panoptic command end to end on tiny data (64 px synthetic COCO panoptic, a ResNet-18-FPN
Panoptic FPN with small heads): PQ/SQ/RQ after the epoch, the outputs, the checkpoint's meta,
the predictions picture, and 2-process DDP with the PQ gathered over both ranks."""

import os

import pytest
import torch

from cvops.train import panoptic
from cvops.train.engine import load_checkpoint
from tests.conftest import requires_ops
from tests.train._launch import torchrun
from tests.train.test_detection_train import LIGHT, metrics

pytestmark = requires_ops

# the detection tests' light Mask R-CNN; 5 synthetic images (the last one without things):
# 1 step of 4 per epoch, 3 to evaluate
TINY = (
    LIGHT
    + (
        "--image-size 64 --train-size 5 --val-size 3 --batch-size 4 --num-stuff 2 "
        "--warmup-iters 0 --vis-samples 2 --no-progress --epochs 1"
    ).split()
)
KEYS = [name + part for part in ("", "_th", "_st") for name in ("PQ", "SQ", "RQ")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pan_data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("pan")
    panoptic.main(TINY + ["--data-root", data_root, "--out", str(out)])
    return out


def test_training_writes_pq_and_outputs(trained):
    assert {"checkpoint_last.pt", "metrics.json", "curves.png", "predictions.png"} <= set(
        os.listdir(trained)
    )
    (record,) = metrics(trained)
    assert record["step"] == 1 and record["train_loss"] > 0 and record["val_loss"] is None
    val = record["val"]
    assert val["num_images"] == 3
    for key in KEYS:  # one step from scratch: anything in [0, 1], or no class of the kind
        assert val[key] is None or 0 <= val[key] <= 1, key
    assert val["PQ"] is not None
    meta = load_checkpoint(os.path.join(trained, "checkpoint_last.pt"))["meta"]
    assert meta["task"] == "panoptic" and (meta["num_things"], meta["num_stuff"]) == (3, 2)
    assert meta["stuff_classes"] == ["things", "sky", "ground"]
    assert meta["category_ids"] == {1: 1, 2: 3, 3: 5, 4: 101, 5: 102}
    build = meta["build"]
    assert build["backbone"] == "resnet18" and build["min_size"] == 64
    assert build["panoptic_stuff_area"] == round(4096 * (64 / 800) ** 2)  # 26 px at 64 px
    from PIL import Image

    with Image.open(os.path.join(trained, "predictions.png")) as im:
        assert im.size[0] > 3 * 64 and im.size[1] > 2 * 64  # 2 rows of image | truth | prediction


def test_ddp_two_processes_gather_pq(trained, data_root, tmp_path):
    """2 gloo processes: the PQ of rank 0 covers the 3 validation images of both ranks and
    equals a 1-process evaluation of the same checkpoint."""
    ddp = tmp_path / "ddp"
    torchrun("cvops.train.panoptic", TINY + ["--data-root", data_root, "--out", ddp])
    (two,) = metrics(ddp)
    assert two["val"]["num_images"] == 3
    one = tmp_path / "one"
    resume = ["--resume", str(ddp / "checkpoint_last.pt")]
    panoptic.main(TINY + ["--data-root", data_root, "--out", str(one)] + resume)
    evaluated = metrics(one)[-1]
    assert evaluated["eval_only"]
    for key in KEYS:  # as written to JSON (a NaN, no class of the kind, is null in both)
        if two["val"][key] is None:
            assert evaluated["val"][key] is None, key
        else:
            assert two["val"][key] == pytest.approx(evaluated["val"][key], abs=1e-6), key


def test_build_panoptic_rejects_other_models():
    with pytest.raises(ValueError, match="--model"):
        panoptic.build_panoptic("maskrcnn_resnet50_fpn", 3, 2, backbone="resnet18")
    torch.manual_seed(0)
    model = panoptic.build_panoptic(MODEL := panoptic.MODEL, 3, 2, backbone="resnet18")
    assert model.num_things == 3 and MODEL == "panoptic_fpn_resnet50"
