"""The contrastive (CLIP) command end to end on tiny data: its outputs, zero-shot prediction
from its checkpoint through ``cvops.predict``, and 2-process DDP (features gathered across the
processes) taking the same steps as one process on the same global batch."""

import json
import os

import pytest
import torch

from cvops import predict
from cvops.train import contrastive
from cvops.train.engine import load_checkpoint
from tests.train._launch import torchrun

# a micro CLIP (width 32, one layer per tower); SGD (not AdamW, whose normalised steps hide a
# gradient's scale) without clipping, so that a DDP gradient of the wrong scale shows
TINY = (
    "--tiny --model-arg embed_dim=32 --model-arg vision_width=32 --model-arg vision_layers=1 "
    "--model-arg text_width=32 --model-arg text_layers=1 --image-size 16 --train-size 32 "
    "--val-size 12 --batch-size 16 --epochs 1 --optimizer sgd --lr 0.5 --warmup-iters 0 "
    "--vis-samples 2 --clip-grad 0 --no-progress"
).split()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    contrastive.main(TINY + ["--out", str(out)])
    return out


def test_training_writes_its_outputs(trained):
    for name in ("checkpoint_last.pt", "metrics.json", "curves.png", "predictions.png"):
        assert os.path.isfile(os.path.join(trained, name)), name
    with open(os.path.join(trained, "metrics.json")) as f:
        (record,) = json.load(f)
    assert record["step"] == 2 and record["train_loss"] > 0
    assert 0 <= record["val"]["zero_shot_acc"] <= 1
    meta = load_checkpoint(str(trained / "checkpoint_last.pt"))["meta"]
    assert meta["task"] == "contrastive" and meta["model"] == "clip_vit_b_32"


def test_predict_prints_zero_shot_probabilities(trained, tmp_path, capsys):
    from PIL import Image

    from cvops.data import SyntheticCaptions

    image = SyntheticCaptions(1, 16).generate(0)[0]
    path = str(tmp_path / "a.png")
    Image.fromarray((image.permute(1, 2, 0) * 255).byte().numpy()).save(path)
    checkpoint = str(trained / "checkpoint_last.pt")
    predict.main(["--checkpoint", checkpoint, "--image", path, "--labels", "red circle,dog"])
    lines = capsys.readouterr().out.strip().splitlines()
    labels = sorted(line.rsplit(None, 1)[0].strip() for line in lines)
    probs = [float(line.rsplit(None, 1)[1]) for line in lines]
    assert labels == ["dog", "red circle"]
    assert sum(probs) == pytest.approx(1, abs=2e-4) and probs[0] >= probs[1]
    with pytest.raises(ValueError, match="at least two"):
        predict.main(["--checkpoint", checkpoint, "--image", path, "--labels", "cat"])


def test_ddp_two_processes_match_one(trained, tmp_path):
    """Each process holds 8 of the 16 pairs; the loss is over all 16 (gathered features) and
    the local features' gradient is scaled so that DDP's average equals the 1-process
    gradient: the weights after two SGD steps agree."""
    torchrun("cvops.train.contrastive", TINY + ["--out", tmp_path / "ddp"])
    two = load_checkpoint(str(tmp_path / "ddp" / "checkpoint_last.pt"))["model"]
    one = load_checkpoint(str(trained / "checkpoint_last.pt"))["model"]
    init = {k: v for k, v in contrastive_initial_weights().items()}
    assert two.keys() == one.keys()
    moved = 0.0
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=2e-5, msg=k)
        moved = max(moved, (one[k] - init[k]).abs().max().item())
    assert moved > 1e-2  # the steps changed the weights (a comparison that can fail)


def contrastive_initial_weights():
    """The adapter's weights before training (the engine seeds with --seed 0 first)."""
    args = contrastive.parser().parse_args(TINY)
    task = contrastive.ContrastiveTask(args)
    torch.manual_seed(args.seed)
    return task.build_model().state_dict()
