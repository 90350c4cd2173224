"""Detector cases: Faster R-CNN and Mask R-CNN R50-FPN at 512x512, inference and one training
step, cvops against torchvision's model carrying the same weights.

Both sides are built as torchvision's COCO checkpoints are (FrozenBatchNorm2d backbone, 91
classes) with ``min_size = max_size = 512`` (no resize of the 512x512 input) and
``box_score_thresh = 0``, so that random weights still give the full 100 detections per image
and the mask head runs on them, as with a trained model. Before timing, ``make`` checks that
the two give the same detections: the ratio compares the same computation. Nothing here is
tuned yet (no BatchNorm folding, no channels-last): the backbone and FPN convolutions are the
same oneDNN calls on both sides, so the ratio shows what the RoI heads' ops (RoI Align, NMS,
box coding) change at the model level.
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


def _same_detections(a, b, min_matched: float = 0.95) -> bool:
    """Whether two detectors' outputs agree: per image, the scores sorted in descending order
    within 1e-4, and at least ``min_matched`` of the detections paired with one of the other
    side's of the same label, score within 1e-4 and box within 1e-3. Random weights give
    exactly tied scores and NMS keeps tied boxes in either order, and a tie at the 100-detection
    cut can swap which box is kept: so a pairing, not an element-wise comparison."""
    for da, db in zip(a, b):
        sa, sb = da["scores"], db["scores"]
        if sa.shape != sb.shape:
            return False
        if not torch.allclose(sa.sort(descending=True)[0], sb.sort(descending=True)[0], atol=1e-4):
            return False
        close = (
            (da["labels"][:, None] == db["labels"][None, :])
            & ((sa[:, None] - sb[None, :]).abs() <= 1e-4)
            & ((da["boxes"][:, None, :] - db["boxes"][None, :, :]).abs().amax(-1) <= 1e-3)
        )
        if len(sa) and close.any(1).float().mean() < min_matched:
            return False
    return True


def _inference(name: str):
    def make(device):
        torch.manual_seed(0)  # the same weights and image on every run
        ours, ref = _models(name, device)
        images = [torch.rand(3, SIZE, SIZE, device=device)]
        ours.eval()
        ref.eval()

        def run(model):
            def step():
                with torch.inference_mode():
                    return model(images)

            return step

        if not _same_detections(run(ours)(), run(ref)()):
            raise RuntimeError("%s: cvops and torchvision detect differently" % name)
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
    register(
        BenchCase(
            _name,
            "[1,3,%d,%d] inference, FrozenBN, 100 detections" % (SIZE, SIZE),
            "float32",
            _inference(_name),
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
