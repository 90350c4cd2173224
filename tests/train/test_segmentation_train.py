"""The segmentation command end to end on tiny data (32 px images, a depth-2 U-Net of width 8):
training, resume, prediction, the VOC layout, AMP, and 2-process DDP against 1 process."""

import json
import os

import pytest
import torch

from cvops.data import SyntheticSegmentation, write_segmentation_dataset
from cvops.train import segmentation
from cvops.train.engine import load_checkpoint
from tests.conftest import requires_ops
from tests.train._launch import torchrun

TINY = (
    "--model unet --depth 2 --base-width 8 --image-size 32 --train-size 32 --val-size 8 "
    "--batch-size 8 --no-progress"
).split()


def train(out, *args):
    return segmentation.main(TINY + ["--out", str(out)] + [str(a) for a in args])


def metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def weights(path):
    return load_checkpoint(str(path))["model"]


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=atol), k


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    train(out, "--epochs", 2, "--save-every", 1)
    return out


def test_training_reduces_the_loss_and_writes_its_outputs(trained):
    for name in (
        "checkpoint_last.pt",
        "checkpoint_epoch001.pt",
        "metrics.json",
        "curves.png",
        "predictions.png",
    ):
        assert os.path.isfile(os.path.join(trained, name)), name
    h = metrics(trained)
    assert [r["epoch"] for r in h] == [1, 2] and [r["step"] for r in h] == [4, 8]
    assert h[-1]["train_loss"] < 0.8 * h[0]["train_loss"]
    assert h[-1]["val_loss"] < h[0]["val_loss"]
    val = h[-1]["val"]
    assert val["pixels"] == 8 * 32 * 32 and len(val["iou"]) == 4
    assert 0 <= val["miou"] <= 1 and 0 <= val["pixel_acc"] <= 1
    ck = load_checkpoint(os.path.join(trained, "checkpoint_last.pt"))
    assert ck["meta"]["model"] == "unet" and ck["meta"]["num_classes"] == 4
    assert ck["meta"]["model_kwargs"]["depth"] == 2 and ck["step"] == 8


def test_resume_continues_from_the_saved_step(trained, tmp_path):
    # Resume the 2-epoch run from its epoch-1 checkpoint: the same last epoch again.
    train(tmp_path, "--epochs", 2, "--resume", trained / "checkpoint_epoch001.pt")
    h = metrics(tmp_path)
    assert [r["step"] for r in h] == [4, 8]  # history carried over, one epoch added
    assert h[0] == metrics(trained)[0]
    assert h[1]["train_loss"] == pytest.approx(metrics(trained)[1]["train_loss"], rel=1e-5)
    assert_same_weights(
        weights(tmp_path / "checkpoint_last.pt"), weights(trained / "checkpoint_last.pt"), atol=1e-5
    )
    # A schedule of another length cannot continue the saved one.
    with pytest.raises(ValueError, match="same --epochs"):
        train(tmp_path / "longer", "--epochs", 3, "--resume", trained / "checkpoint_epoch001.pt")


def test_predict_writes_the_overlay(trained, tmp_path):
    from PIL import Image

    from cvops import predict

    image, _ = SyntheticSegmentation(1, (36, 40), seed=9)[0]
    src = tmp_path / "a.png"
    Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(src)
    out, mask_out = tmp_path / "a_pred.png", tmp_path / "a_mask.png"
    predict.main(
        [
            "--checkpoint",
            str(trained / "checkpoint_last.pt"),
            "--image",
            str(src),
            "--out",
            str(out),
            "--mask-out",
            str(mask_out),
        ]
    )
    with Image.open(out) as im:
        assert im.size == (40, 36) and im.mode == "RGB"
    with Image.open(mask_out) as im:
        assert im.size == (40, 36) and int(torch.tensor(list(im.tobytes())).max()) < 4


def test_voc_layout_through_the_command(tmp_path):
    root = tmp_path / "VOC"
    write_segmentation_dataset(
        SyntheticSegmentation(8, 40, seed=0, ignore_border=1),
        str(root),
        layout="voc",
        split="train",
    )
    write_segmentation_dataset(
        SyntheticSegmentation(3, 40, seed=1, ignore_border=1), str(root), layout="voc", split="val"
    )
    train(
        tmp_path / "out",
        "--epochs",
        1,
        "--data",
        "voc",
        "--data-root",
        root,
        "--num-classes",
        4,
        "--batch-size",
        4,
    )
    val = metrics(tmp_path / "out")[0]["val"]
    # val images resized to 32 x 32; the 255 outlines are not counted
    assert 0 < val["pixels"] < 3 * 32 * 32 and len(val["iou"]) == 4


@requires_ops
@pytest.mark.parametrize(
    "extra",
    [["--loss", "dice_focal"], ["--binary", "--loss", "dice", "--clip-grad", "1.0"]],
    ids=["dice_focal", "binary_dice"],
)
def test_amp_and_fused_losses(tmp_path, extra):
    train(tmp_path, "--epochs", 1, "--amp", "--ignore-border", 1, "--warmup-iters", 2, *extra)
    r = metrics(tmp_path)[0]
    assert r["train_loss"] == r["train_loss"] and r["val_loss"] is not None  # finite, not NaN
    assert len(r["val"]["iou"]) == (2 if "--binary" in extra else 4)


def test_ddp_two_processes_match_one(tmp_path):
    """2 CPU processes (torchrun, gloo) against 1 process on the same data.

    What makes them equal: the global batch is split over the processes and the
    DistributedSampler's permutation depends only on (seed, epoch), so every step sees the same
    samples, augmented the same way (seeded per sample); the weights start from the same seed;
    the model has no BatchNorm (per-process batch statistics would differ) and no pixel is
    ignored (CE's mean is then over equal pixel counts per process, so the DDP average of the
    per-process means is the global mean); evaluation reduces the confusion matrix over the
    whole validation set. What is left differs by float rounding only (the gradient is summed
    in another order; convolutions run on 4 instead of 8 images)."""
    args = TINY + ["--epochs", "2", "--model-arg", "batch_norm=False", "--lr", "0.1"]
    torchrun("cvops.train.segmentation", args + ["--out", tmp_path / "ddp"])
    segmentation.main(args + ["--out", str(tmp_path / "one")])
    two, one = metrics(tmp_path / "ddp"), metrics(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [4, 8]
    for a, b in zip(two, one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["val"]["pixels"] == b["val"]["pixels"] == 8 * 32 * 32  # each sample once
        cm_a, cm_b = (
            torch.tensor(a["val"]["confusion_matrix"]),
            torch.tensor(b["val"]["confusion_matrix"]),
        )
        assert (cm_a - cm_b).abs().sum() <= 8  # a few argmax ties at most
        assert a["val"]["miou"] == pytest.approx(b["val"]["miou"], abs=1e-3)
    assert_same_weights(
        weights(tmp_path / "ddp" / "checkpoint_last.pt"),
        weights(tmp_path / "one" / "checkpoint_last.pt"),
        atol=1e-5,
    )
