"""YOLO through the detection command (tiny synthetic COCO at 64 px): training with the YOLO
augmentation and the weight EMA, COCO evaluation, the checkpoint, resume and prediction;
and the engine's ModelEMA on its own."""

import json
import os

import pytest
import torch
from torch import nn

from cvops.train import detection
from cvops.train.engine import ModelEMA, load_checkpoint
from cvops.train.yolo_hooks import yolo_train_transform
from tests.conftest import requires_ops
from tests.train._launch import torchrun

TINY = (
    "--model yolov8n --image-size 64 --train-size 4 --val-size 2 --batch-size 2 "
    "--optimizer adamw --lr 0.001 --warmup-iters 1 --vis-samples 1 --no-progress --ema 0.99"
).split()


@requires_ops
def test_train_evaluate_resume_predict(tmp_path):
    out = str(tmp_path / "run")
    argv = TINY + ["--data-root", str(tmp_path / "data"), "--out", out]
    history = detection.main(argv + ["--epochs", "1"])
    assert history[-1]["train_loss"] > 0
    with open(os.path.join(out, "metrics.json")) as f:
        record = json.load(f)[-1]
    assert "bbox_AP" in record["val"] and record["val"]["num_images"] == 2
    for name in ("checkpoint_last.pt", "predictions.png", "curves.png"):
        assert os.path.isfile(os.path.join(out, name))
    ck = load_checkpoint(os.path.join(out, "checkpoint_last.pt"))
    # the EMA is saved as the model, the trained weights to resume from beside it
    assert ck["ema_updates"] == ck["step"] >= 1 and set(ck["train_model"]) == set(ck["model"])
    assert ck["meta"]["build"]["image_size"] == 64
    differs = [k for k in ck["model"] if not torch.equal(ck["model"][k], ck["train_model"][k])]
    assert differs
    # resuming the finished run only evaluates: the restored EMA scores as before
    again = detection.main(argv + ["--epochs", "1", "--resume", "last"])
    assert again[-1].get("eval_only") and again[-1]["val"] == record["val"]
    # predict one image with the checkpoint
    from PIL import Image

    image_path = str(tmp_path / "a.png")
    Image.fromarray((torch.rand(64, 48, 3) * 255).byte().numpy()).save(image_path)
    dets = detection.main(
        [
            "predict",
            "--checkpoint",
            os.path.join(out, "checkpoint_last.pt"),
            "--image",
            image_path,
            "--out",
            str(tmp_path / "a_pred.png"),
        ]
    )
    assert set(dets) == {"boxes", "labels", "scores"}
    assert (dets["boxes"][:, 0::2] <= 48).all() and (dets["labels"] >= 1).all()


@requires_ops
def test_ddp_two_processes_with_ema(tmp_path):
    """torchrun, 2 gloo processes: every validation image scored once over the ranks, and the
    saved EMA model scores the same when one process evaluates the checkpoint."""
    data = ["--data-root", str(tmp_path / "data"), "--train-size", "8", "--val-size", "3"]
    ddp = str(tmp_path / "ddp")
    torchrun("cvops.train.detection", TINY + data + ["--epochs", "1", "--out", ddp])
    with open(os.path.join(ddp, "metrics.json")) as f:
        (two,) = json.load(f)
    assert two["val"]["num_images"] == 3
    argv = TINY + data + ["--epochs", "1", "--out", str(tmp_path / "one")]
    one = detection.main(argv + ["--resume", os.path.join(ddp, "checkpoint_last.pt")])
    for key, value in one[-1]["val"].items():
        assert two["val"][key] == pytest.approx(value, abs=1e-3), key


def test_yolo_augmentation_moves_boxes_with_pixels():
    args = detection.parser().parse_args(["--model", "yolov8n", "--hflip", "1", "--scale", "0"])
    transform = yolo_train_transform(args)
    image = torch.zeros(3, 32, 48)
    image[:, 8:16, 4:12] = 1.0
    target = {"boxes": torch.tensor([[4.0, 8, 12, 16]]), "labels": torch.tensor([1])}
    torch.manual_seed(0)
    out_image, out_target = transform(image, target)
    assert out_target["boxes"].tolist() == [[36.0, 8.0, 44.0, 16.0]]  # mirrored
    # the bright square moved with its box (colour jitter keeps it the brightest region)
    inside = out_image[:, 8:16, 36:44].mean()
    assert inside > out_image.mean() + 0.2


def test_model_ema_average():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # tau ~0: the decay is 0.5 from the start
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.module.weight.tolist() == [[2.0, 2.0]]  # 0.5 * 1 + 0.5 * 3
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)
    assert ema.module.weight.tolist() == [[3.0, 3.0]]
    assert not ema.module.weight.requires_grad
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.5)
