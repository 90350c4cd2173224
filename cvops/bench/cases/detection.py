"""Detector cases: Faster R-CNN and Mask R-CNN R50-FPN at 512x512, inference and one training
step, cvops against torchvision's model carrying the same weights.

Both sides are built as torchvision's COCO checkpoints are (FrozenBatchNorm2d backbone, 91
classes) with ``min_size = max_size = 512`` (no resize of the 512x512 input) and
``box_score_thresh = 0``, so that random weights still give the full 100 detections per image
and the mask head runs on them, as with a trained model. cvops runs as shipped: at CPU
inference every conv-BN(-add)(-ReLU) and the box head's linears are single oneDNN primitives
with packed weights, BN folded, the add and ReLU fused, channels-last activations
(models/_fused_layers.py), plus cvops' RoI Align, NMS and box code; the "channels-last" rows
add ``model.to(memory_format=torch.channels_last)`` on the cvops side (the opt-in of before
the oneDNN path; now it only changes the stem's input copy).

Before timing, ``make`` checks that the two give the same detections (the ratio compares the
same computation), against float32 rounding measured, not assumed: both sides' detections are
compared with torchvision's model run in float64 on the same image; cvops' own error must be
within 6x torchvision's, and cvops' detections must pair with torchvision's within the sum of
the two errors (at least 1e-3 px for boxes, 1e-4 for scores). Folding, channels-last and the
fused post-ops change the rounding of every conv, which these random weights amplify
(torchvision's own box error is ~0.0015 px at 512; see BENCHMARKS.md).
"""

import torch

from ..harness import BenchCase, register

SIZE, TRAIN_BATCH = 512, 2
# case name -> (cvops builder, torchvision model class)
_MODELS = {
    "fasterrcnn_resnet50_fpn": ("fasterrcnn_resnet50_fpn", "FasterRCNN"),
    "maskrcnn_resnet50_fpn": ("maskrcnn_resnet50_fpn", "MaskRCNN"),
}
_OPTIONS = dict(num_classes=91, min_size=SIZE, max_size=SIZE, box_score_thresh=0.0)


def _models(name: str, device: str):
    """(cvops model, torchvision model) with the same weights, FrozenBatchNorm2d backbones."""
    import torchvision
    from torchvision.models.detection import backbone_utils
    from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

    import cvops.models
    from cvops.models.segmentation.fpn import FrozenBatchNorm2d

    builder, ref_cls = _MODELS[name]
    body = torchvision.models.resnet50(norm_layer=TorchvisionFrozenBN)
    backbone = backbone_utils._resnet_fpn_extractor(body, 3)
    ref = getattr(torchvision.models.detection, ref_cls)(backbone, **_OPTIONS)
    ours = cvops.models.get_model(builder, norm_layer=FrozenBatchNorm2d, **_OPTIONS)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.to(device), ref.to(device)


# A detection this close (in score) to the lowest score of the float64 run's list sits at the
# list's cut (the detections-per-image top-k or the score threshold): float32 rounding on
# either side may keep another box in its place, which has no float64 counterpart.
CUT_MARGIN = 2e-3


def float32_errors(dets, exact):
    """(box, score) distance of float32 detections from the float64 run's, each detection
    paired with the nearest float64 box of its label, those at the list's cut (CUT_MARGIN)
    left out (also the detector tests' bound)."""
    box = score = 0.0
    for d, x in zip(dets, exact):
        keep = d["scores"].double() > x["scores"].min() + CUT_MARGIN
        boxes, labels, scores = d["boxes"][keep], d["labels"][keep], d["scores"][keep]
        if len(scores) == 0:
            continue
        dist = (boxes.double()[:, None, :] - x["boxes"][None, :, :]).abs().amax(-1)
        dist = torch.where(labels[:, None] == x["labels"][None, :], dist, float("inf"))
        nearest = dist.min(1)
        box = max(box, nearest.values.max().item())
        score = max(score, (scores.double() - x["scores"][nearest.indices]).abs().max().item())
    return box, score


def _same_detections(a, b, box_atol=1e-3, score_atol=1e-4, min_matched: float = 0.95) -> bool:
    """Whether two detectors' outputs agree: per image, the same number of detections and at
    least ``min_matched`` of them paired with one of the other side's of the same label, score
    within ``score_atol`` and box within ``box_atol``. A pairing, not an element-wise
    comparison: random weights give exactly tied scores, NMS keeps tied boxes in either order,
    and a tie at the 100-detection cut can swap which box is kept. The 5% slack also takes the
    odd detection whose float32 rounding error is an outlier (one box of 100 moved 0.043 px,
    3x torchvision's own largest error, while our float64 run equals torchvision's to 1.5e-5:
    see BENCHMARKS.md)."""
    for da, db in zip(a, b):
        sa, sb = da["scores"], db["scores"]
        if sa.shape != sb.shape:
            return False
        close = (
            (da["labels"][:, None] == db["labels"][None, :])
            & ((sa[:, None] - sb[None, :]).abs() <= score_atol)
            & ((da["boxes"][:, None, :] - db["boxes"][None, :, :]).abs().amax(-1) <= box_atol)
        )
        if len(sa) and close.any(1).float().mean() < min_matched:
            return False
    return True


def _check_same_detections(name, ours, ref, images):
    """Raise unless cvops' detections equal torchvision's up to float32 rounding (module
    docstring); the tolerance comes from torchvision's own float64 run."""
    import copy

    with torch.inference_mode():
        expected, actual = ref(images), ours(images)
        exact = copy.deepcopy(ref).double()([img.double() for img in images])
    box_err, score_err = float32_errors(expected, exact)
    our_box, our_score = float32_errors(actual, exact)
    if our_box > max(1e-3, 6 * box_err) or our_score > max(1e-4, 6 * score_err):
        raise RuntimeError(
            "%s: cvops' float32 error (%.4f px / %.1e score) is over 6x torchvision's "
            "(%.4f px / %.1e)" % (name, our_box, our_score, box_err, score_err)
        )
    box_atol, score_atol = max(1e-3, box_err + our_box), max(1e-4, score_err + our_score)
    if not _same_detections(actual, expected, box_atol, score_atol):
        raise RuntimeError(
            "%s: cvops and torchvision detect differently (beyond %.4f px / %.1e score, the "
            "sum of the two sides' float32 errors)" % (name, box_atol, score_atol)
        )


def _inference(name: str, channels_last: bool = False):
    def make(device):
        torch.manual_seed(0)  # the same weights and image on every run
        ours, ref = _models(name, device)
        if channels_last:
            ours = ours.to(memory_format=torch.channels_last)
        images = [torch.rand(3, SIZE, SIZE, device=device)]
        ours.eval()
        ref.eval()

        def run(model):
            def step():
                with torch.inference_mode():
                    return model(images)

            return step

        _check_same_detections(name, ours, ref, images)
        return run(ours), run(ref)

    return make


def _targets(device, generator):
    """A few boxes per image with their masks (the box interiors) and labels."""
    targets = []
    for _ in range(TRAIN_BATCH):
        xy = torch.rand(4, 2, generator=generator) * (SIZE - 160)
        wh = torch.rand(4, 2, generator=generator) * 120 + 32
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(4, SIZE, SIZE, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, 91, (4,), generator=generator)
        targets.append(
            {"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)}
        )
    return targets


def _training(name: str):
    def make(device):
        ours, ref = _models(name, device)
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(3, SIZE, SIZE, generator=g).to(device) for _ in range(TRAIN_BATCH)]
        targets = _targets(device, g)

        def run(model):
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

            def step():
                opt.zero_grad(set_to_none=True)
                sum(model(images, targets).values()).backward()
                opt.step()

            return step

        return run(ours), run(ref)

    return make


for _name in _MODELS:
    for _channels_last in (False, True):
        register(
            BenchCase(
                _name,
                "[1,3,%d,%d] inference, FrozenBN, 100 detections%s"
                % (SIZE, SIZE, ", channels-last" if _channels_last else ""),
                "float32",
                _inference(_name, _channels_last),
                "torchvision, same weights",
                devices=("cpu", "cuda"),
            )
        )
    register(
        BenchCase(
            _name,
            "[%d,3,%d,%d] training step (SGD)" % (TRAIN_BATCH, SIZE, SIZE),
            "float32",
            _training(_name),
            "torchvision, same weights",
            devices=("cpu", "cuda"),
        )
    )
