"""Helpers for the detection model tests: inputs, targets, and an order-insensitive
comparison of detections (random weights give exactly tied scores, and torchvision's NMS
orders ties differently from ours)."""

import copy

import torch
import torchvision.models.detection as tvdet

import cvops.models as cm
from cvops.bench.cases.detection import CUT_MARGIN, float32_errors

from ._equiv import build_on_meta, randomize_constants_, transplant

BOX_ATOL, SCORE_ATOL, MASK_IOU = 1e-3, 1e-4, 0.99


def images(seed=0, sizes=((3, 120, 150), (3, 100, 90))):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(s, generator=g) for s in sizes]


def targets(imgs, with_masks=False):
    out = []
    for i, img in enumerate(imgs):
        h, w = img.shape[-2:]
        boxes = torch.tensor([[5.0, 8.0, w * 0.6, h * 0.7], [w * 0.3, h * 0.2, w - 4.0, h - 6.0]])
        t = {"boxes": boxes, "labels": torch.tensor([1 + i, 7])}
        if with_masks:
            masks = torch.zeros(2, h, w, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
                masks[k, y1 + 2 : y2 - 2, x1 + 3 : x2 - 1] = 1
            t["masks"] = masks
        out.append(t)
    return out


def reference_and_ours(name, **kwargs):
    """torchvision's ``name`` (weights=None, non-trivial BN statistics) and ours built with
    the same options, its weights loaded with strict=True (and ours back into it)."""
    torch.manual_seed(0)
    ref = getattr(tvdet, name)(weights=None, weights_backbone=None, **kwargs)
    randomize_constants_(ref)
    ours = transplant(ref, build_on_meta(cm.get_model_builder(name), **kwargs))
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref, ours


@torch.no_grad()
def eval_both(ref, ours, imgs):
    return ref.eval()(imgs), ours.eval()(imgs)


def mask_iou(a, b):
    a, b = a > 0.5, b > 0.5
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


@torch.no_grad()
def rounding_tolerances(ref, imgs, expected, actual, factor=6.0):
    """(box, score) bounds for ours vs torchvision, from both sides' float32 error against
    torchvision's float64 run on ``imgs`` (each detection paired with the nearest float64 box
    of its label): ours folds BatchNorm into the convs and, at CPU inference, runs oneDNN's
    channels-last convolutions with the add and ReLU fused (models/_fused_layers.py), so it
    rounds differently from torchvision, and on these random-weight models torchvision's own
    float32 box error is ~0.001-0.01 px, near or above BOX_ATOL, which only an op-for-op copy
    meets. Our error must stay within ``factor`` x torchvision's (the channels-last
    convolutions' rms error per feature map measured 2.3x NCHW's, the largest detection error
    up to 4x torchvision's), and a pair of detections may then differ by the sum of the two
    errors. A wrong weight, eps or layer order misses by orders of magnitude."""
    exact = copy.deepcopy(ref).double().eval()([img.double() for img in imgs])
    tv_box, tv_score = float32_errors(expected, exact)
    our_box, our_score = float32_errors(actual, exact)
    assert our_box <= max(BOX_ATOL, factor * tv_box), (our_box, tv_box)
    assert our_score <= max(SCORE_ATOL, factor * tv_score), (our_score, tv_score)
    return max(BOX_ATOL, tv_box + our_box), max(SCORE_ATOL, tv_score + our_score)


def compare_detections(
    expected, actual, min_detections=10, atol=(BOX_ATOL, SCORE_ATOL), max_unpaired=0
):
    """Pair every reference detection with one of ours with the same label, box and score
    within ``atol`` (box, score); returns the max box and score differences (and the
    min mask IoU when there are masks). A reference detection at its list's cut (within
    CUT_MARGIN of its lowest score) may go unpaired, and so may ``max_unpaired`` others per
    image (a proposal at the RPN's top-k or NMS cut can flip with rounding too, and take a
    detection with it)."""
    max_box = max_score = 0.0
    min_iou = 1.0
    for e, a in zip(expected, actual, strict=True):
        assert set(a) == set(e)
        n = len(e["scores"])
        assert len(a["scores"]) == n
        assert n >= min_detections, "too few detections to compare"
        box_d = (e["boxes"][:, None, :] - a["boxes"][None, :, :]).abs().amax(-1)
        score_d = (e["scores"][:, None] - a["scores"][None, :]).abs()
        ok = (e["labels"][:, None] == a["labels"][None, :]) & (box_d <= atol[0])
        ok &= score_d <= atol[1]
        used = torch.zeros(n, dtype=torch.bool)
        unpaired = 0
        for i in range(n):
            cand = torch.where(ok[i] & ~used)[0]
            if len(cand) == 0 and e["scores"][i] <= e["scores"].min() + CUT_MARGIN:
                continue
            if len(cand) == 0 and unpaired < max_unpaired:
                unpaired += 1
                continue
            assert len(cand) > 0, "reference detection %d has no match" % i
            j = int(cand[0])
            used[j] = True
            max_box = max(max_box, box_d[i, j].item())
            max_score = max(max_score, score_d[i, j].item())
            if "masks" in e:
                assert a["masks"][j].shape == e["masks"][i].shape
                min_iou = min(min_iou, mask_iou(e["masks"][i], a["masks"][j]))
    return max_box, max_score, min_iou


def compare_losses(expected, actual, atol=1e-4, rtol=1e-6):
    """Each loss within atol + rtol * |expected|: the relative part covers losses too large
    for atol alone (a random RetinaNet's ~3e4 classification loss is summed over its anchors
    in another order on one thread, and one float32 ulp there is 2e-3)."""
    assert set(actual) == set(expected)
    diffs = {k: (actual[k] - expected[k]).abs().item() for k in expected}
    bounds = {k: atol + rtol * expected[k].abs().item() for k in expected}
    assert all(diffs[k] <= bounds[k] for k in expected), (diffs, bounds)
    assert all(torch.isfinite(v) and v.requires_grad for v in actual.values())
    return diffs


def train_losses(model, imgs, tgts, seed=0):
    model.train()
    torch.manual_seed(seed)
    return model(imgs, tgts)
