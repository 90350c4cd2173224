"""CLIP's symmetric contrastive loss (InfoNCE from images to texts and from texts to images),
with the features of all processes under ``torch.distributed``.

Each process gathers every process's features, so the similarity matrix covers the global
batch (more negatives), and puts its own features back in with their autograd history: the
other processes' features are constants here, their gradients are computed where they live.

With DDP, the gradient reaching a process's local features is then only the part of the global
loss's gradient that flows through them, and DDP *averages* parameter gradients over the W
processes: summing those parts gives the full gradient, averaging gives 1/W of it. The local
features' gradient is therefore scaled by W (:class:`_ScaleGrad`), so a W-process run takes the
same steps as one process on the same global batch. ``logit_scale`` sees the whole loss in
every process already and is not scaled.
"""

from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(*features: Tensor) -> Tuple[Tensor, ...]:
    """Each tensor ``[n_r, D]`` of every process concatenated in rank order ``[sum n_r, D]``,
    this process's rows keeping their gradient (scaled by the world size, see the module
    docstring). Processes may hold different row counts. Without a process group: unchanged."""
    if not _distributed():
        return features
    world, rank = dist.get_world_size(), dist.get_rank()
    device = features[0].device
    count = torch.tensor([features[0].shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    largest = max(counts)
    out = []
    for local in features:
        if local.shape[0] != counts[rank]:
            raise ValueError("the features given to gather_features differ in row count")
        padded = F.pad(local.detach(), (0, 0, 0, largest - local.shape[0]))
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        parts = [p[:c] for p, c in zip(parts, counts)]
        parts[rank] = _ScaleGrad.apply(local, float(world))
        out.append(torch.cat(parts))
    return tuple(out)


def clip_contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    gather: bool = True,
) -> Tensor:
    """``(CE(logits_per_image, arange) + CE(logits_per_text, arange)) / 2`` with
    ``logits_per_image = logit_scale * image_features @ text_features.T``: row ``i`` of the
    images is paired with row ``i`` of the texts, every other row is a negative.

    ``image_features``/``text_features``: ``[N, D]``, L2-normalised by the caller (CLIP's
    forward does it). ``logit_scale``: the multiplier (``model.logit_scale.exp()``), a scalar.
    ``gather``: under ``torch.distributed``, use the global batch (:func:`gather_features`).
    """
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "image_features and text_features must be [N, D] of the same shape, got %s and %s"
            % (tuple(image_features.shape), tuple(text_features.shape))
        )
    if logit_scale.numel() != 1:
        raise ValueError("logit_scale must be a scalar, got shape %s" % (tuple(logit_scale.shape),))
    if gather:
        image_features, text_features = gather_features(image_features, text_features)
    logits = logit_scale.reshape(()) * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
