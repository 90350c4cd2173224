"""Contrastive image-text training (CLIP) on the engine: ``python -m cvops.train.contrastive``.

    python -m cvops.train.contrastive --model clip_vit_b_32 --data synthetic --tiny \\
        --lr 2e-3 --epochs 6 --out runs/clip     # zero-shot 0.74 (chance 0.083), ~8 CPU min
    torchrun --nproc_per_node=2 -m cvops.train.contrastive --tiny ...     # DDP (gloo on CPU)
    python -m cvops.predict --checkpoint runs/clip/checkpoint_last.pt --image a.png \\
        --labels "red circle,blue triangle"

The loss is CLIP's symmetric InfoNCE over the global batch (features gathered across the
processes, :func:`~cvops.models.vision_language.clip_contrastive_loss`); a DDP run takes the
same steps as one process with the same global batch. After each epoch the held-out images
(another seed of the synthetic set) are classified zero-shot from the class prompts
("a photo of a red circle."): ``zero_shot_acc`` in ``metrics.json`` (chance: 1/12).
``--tiny`` swaps in a small configuration of the chosen model (width 64, 2 layers per tower,
4x4 patches, context 16) that learns the synthetic task on a CPU in minutes (colour first,
then shape: see docs/vision_language.md).
"""

import argparse
import sys
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.captions import ZERO_SHOT_TEMPLATES, SyntheticCaptions
from ..models.vision_language.clip_checkpoint import TRAIN_PREFIX
from ..models.vision_language.clip_loss import clip_contrastive_loss
from ..models.vision_language.clip_tokenizer import get_tokenizer
from .engine import (
    Engine,
    Task,
    add_engine_args,
    all_reduce_sum,
    config_from_args,
    model_builder,
    parse_key_values,
)

# --tiny: CLIPConfig overrides for a model that trains on a CPU in minutes (ViT towers)
TINY = dict(
    embed_dim=64,
    vision_width=64,
    vision_layers=2,
    vision_head_width=32,
    vision_patch_size=4,
    text_width=64,
    text_heads=2,
    text_layers=2,
    context_length=16,
)
MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned temperature at 100


class ContrastiveAdapter(nn.Module):
    """The engine calls ``model(inputs)``; ``inputs`` is ``(images, tokens)``. Returns the
    normalised features and the logit scale (at most 100), and in evaluation also the zero-shot
    logits of the images against the class prompts ``prompts`` (token ids, one row per class
    and template; the class weight is the mean over its templates). State-dict keys get
    ``clip.``."""

    def __init__(self, clip: nn.Module, prompts: Tensor, num_classes: int):
        super().__init__()
        self.clip = clip
        self.num_classes = num_classes
        self.register_buffer("prompts", prompts, persistent=False)

    def class_weights(self) -> Tensor:
        text = self.clip.encode_text(self.prompts, normalize=True)
        text = text.reshape(self.num_classes, -1, text.shape[-1]).mean(dim=1)
        return F.normalize(text, dim=-1)

    def forward(self, inputs) -> Dict[str, Any]:
        images, tokens = inputs
        image_features = self.clip.encode_image(images, normalize=True)
        text_features = self.clip.encode_text(tokens, normalize=True)
        scale = self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        out = dict(
            image_features=image_features,
            text_features=text_features,
            logit_scale=scale,
            gather=self.training,  # evaluation shards may be uneven: local loss only
        )
        if not self.training:
            out["zero_shot_logits"] = scale * image_features @ self.class_weights().t()
        return out


class ZeroShotAccuracy:
    """Top-1 zero-shot accuracy, summed over the processes."""

    def __init__(self):
        self.correct, self.count = 0, 0

    def update(self, outputs, targets: Tensor) -> None:
        pred = outputs["zero_shot_logits"].argmax(dim=-1)
        self.correct += int((pred == targets).sum())
        self.count += int(targets.numel())

    def compute(self, device) -> Dict[str, float]:
        correct, count = all_reduce_sum([self.correct, self.count], device)
        return {"zero_shot_acc": correct / max(count, 1)}


def contrastive_loss(outputs) -> Tensor:
    return clip_contrastive_loss(
        outputs["image_features"],
        outputs["text_features"],
        outputs["logit_scale"],
        gather=outputs["gather"],
    )


class ContrastiveTask(Task):
    primary_metric = "zero_shot_acc"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        kwargs = dict(TINY) if args.tiny else {}
        kwargs.update(image_size=args.image_size)
        kwargs.update(parse_key_values(args.model_arg))
        self.model_kwargs = kwargs
        self.tokenizer = get_tokenizer()
        self.context_length = None  # set by build_model

    def build_model(self) -> nn.Module:
        clip = model_builder(self.args.model)(**self.model_kwargs)
        self.context_length = clip.context_length
        self.classes = self.val_set().classes
        prompts = [t.format(c) for c in self.classes for t in ZERO_SHOT_TEMPLATES]
        tokens = self.tokenizer(prompts, self.context_length)
        return ContrastiveAdapter(clip, tokens, len(self.classes))

    def val_set(self) -> SyntheticCaptions:
        a = self.args
        return SyntheticCaptions(a.val_size, a.image_size, seed=a.data_seed + 1)

    def datasets(self):
        a = self.args
        return SyntheticCaptions(a.train_size, a.image_size, seed=a.data_seed), self.val_set()

    def collate_fn(self, batch):
        """``((images, tokens), labels)``."""
        images, captions, labels = zip(*batch)
        tokens = self.tokenizer(list(captions), self.context_length)
        return (torch.stack(images), tokens), torch.tensor(labels, dtype=torch.long)

    def loss(self, outputs, targets) -> Tensor:
        return contrastive_loss(outputs)

    def evaluator(self) -> ZeroShotAccuracy:
        return ZeroShotAccuracy()

    def save_predictions(self, model, dataset, path: str, device) -> None:
        """A row of validation images, 4x enlarged, each titled with the zero-shot prediction
        (green when right, red when wrong)."""
        from PIL import Image, ImageDraw

        n = min(self.args.vis_samples, len(dataset))
        samples = [dataset[i] for i in range(n)]
        (images, tokens), labels = self.collate_fn(samples)
        model.eval()
        with torch.no_grad():
            logits = model((images.to(device), tokens.to(device)))["zero_shot_logits"]
        pred = logits.argmax(dim=-1).cpu()
        size = self.args.image_size * 4
        canvas = Image.new("RGB", (n * (size + 8), size + 16), "white")
        draw = ImageDraw.Draw(canvas)
        for i in range(n):
            raw = dataset.generate(i)[0]
            pixels = (raw.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (i * (size + 8), 16))
            right = int(pred[i]) == int(labels[i])
            draw.text(
                (i * (size + 8), 2), self.classes[int(pred[i])], fill="green" if right else "red"
            )
        canvas.save(path)

    def meta(self) -> Dict[str, Any]:
        return {
            "task": "contrastive",
            "model": self.args.model,
            "model_kwargs": self.model_kwargs,
            "prefix": TRAIN_PREFIX,
            "classes": getattr(self, "classes", None),
        }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cvops.train.contrastive", description=__doc__.split("\n")[0]
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="clip_vit_b_32",
        help="registered CLIP builder, or module:function (default: %(default)s)",
    )
    g.add_argument("--tiny", action="store_true", help="small configuration (see TINY)")
    g.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="CLIPConfig override (VALUE a Python literal), repeatable",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("synthetic",), default="synthetic")
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--train-size", type=int, default=16384, help="synthetic training samples")
    g.add_argument("--val-size", type=int, default=240, help="held-out synthetic samples")
    g.add_argument("--data-seed", type=int, default=0, help="synthetic data seed (val: +1)")
    g.add_argument("--vis-samples", type=int, default=8, help="images in predictions.png")
    add_engine_args(
        p,
        out="runs/contrastive",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.1,
        batch_size=64,
        warmup_iters=20,
        warmup_factor=0.1,
        clip_grad=1.0,
    )
    return p


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    args = parser().parse_args(argv)
    return Engine(ContrastiveTask(args), config_from_args(args)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
