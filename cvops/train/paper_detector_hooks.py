"""What ``python -m cvops.train.detection`` needs for the paper detectors (``fast_rcnn_vgg16``,
``rcnn``): building them from the command's options, and datasets whose targets carry
``"proposals"`` (with the papers' flip augmentation moving the proposals too)."""

from typing import Optional, Sequence, Tuple

from torch import nn

from ..models.detection.proposals import FlipWithProposals, WithProposals, proposal_source

PAPER_FAMILIES = ("fast_rcnn", "rcnn")


def build_paper_detector(
    model: str,
    num_classes: int,
    backbone: Optional[str] = None,
    trainable_layers: Optional[int] = None,
    anchor_sizes: Optional[Sequence[int]] = None,
    min_size=None,
    max_size=None,
    **kwargs,
) -> nn.Module:
    """The registered paper detector ``model`` with ``num_classes`` (background included).
    Only VGG16 (``width=`` narrows it) and no anchors; ``trainable_layers`` (0-5): Fast
    R-CNN's last conv blocks left trainable (default all: offline runs start from random
    weights). R-CNN warps crops, so ``min_size``/``max_size`` apply to Fast R-CNN only."""
    from ..models._registry import get_model_builder

    if backbone not in (None, "vgg16"):
        raise ValueError("--backbone: the paper detectors use VGG16, got %r" % backbone)
    if anchor_sizes:
        raise ValueError("--anchor-sizes: the paper detectors have no anchors")
    builder = get_model_builder(model)
    if model.startswith("fast_rcnn"):
        if trainable_layers is not None:
            if not 0 <= trainable_layers <= 5:
                raise ValueError("--trainable-layers must be in 0..5, got %r" % trainable_layers)
            kwargs["frozen_blocks"] = 5 - trainable_layers
        for key, value in (("min_size", min_size), ("max_size", max_size)):
            if value:
                kwargs[key] = value
    elif trainable_layers is not None:
        raise ValueError("--trainable-layers applies to fast_rcnn_vgg16 only")
    return builder(num_classes=num_classes, **kwargs)


def with_proposals(
    train, val, spec: str, hflip: float = 0.0, seed: int = 0
) -> Tuple[object, object]:
    """``(train, val)`` with ``target["proposals"]`` from ``spec`` (``selective_search``,
    ``jitter`` or a JSON file, :func:`.proposals.proposal_source`); with ``hflip > 0`` the
    training samples are flipped with their proposals (seeded per sample)."""
    from ..data.transforms import SeededTransform

    source = proposal_source(spec, seed)
    train, val = WithProposals(train, source), WithProposals(val, source)
    if hflip > 0:
        train = SeededTransform(train, FlipWithProposals(hflip), seed)
    return train, val
