"""YOLOv8n: inference on one 640x640 image including decoding and NMS, and one training step
on two images, cvops against ultralytics' ``DetectionModel`` carrying the same weights.

Inference: cvops' detector interface (``model([image])``: letterbox, network, decoding, every
(cell, class) pair above 0.25, class-aware ``cvops.batched_nms`` at IoU 0.7, 300 detections)
against ultralytics' network + ``non_max_suppression`` with the same settings
(``multi_label=True``, as its validator). The BatchNorm statistics are calibrated on a
random batch and the class biases set so that ~500 candidates pass the threshold, as with a
trained model on a busy image (plain random weights give none and leave NMS out). ``make``
checks that both keep the same detections.

Training step: forward, the loss (cvops' YOLOv8 loss; ultralytics' ``v8DetectionLoss``) and
backward, and an SGD step, on the same images and boxes.

Registered only when ultralytics is installed (requirements-bench.txt); otherwise importing
this module warns that the cases are skipped.
"""

import importlib.util
import warnings

import torch

from ..harness import BenchCase, register

SIZE, TRAIN_BATCH, CONF, IOU, MAX_DET = 640, 2, 0.25, 0.7, 300


@torch.no_grad()
def _calibrate_batchnorm(model) -> None:
    """BatchNorm statistics of a random batch: with the initial ones (mean 0, variance 1)
    random weights shrink the signal layer after layer and every class score is the same."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: one batch sets the statistics exactly
    model.train()
    model(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)))
    for m in norms:
        m.momentum = 0.03


def _models(device: str):
    """(cvops yolov8n, ultralytics DetectionModel) with the same seeded weights."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from cvops.models.yolo import yolov8n

    torch.manual_seed(0)
    ref = DetectionModel("yolov8n.yaml", verbose=False)
    ref.args = get_cfg()
    _calibrate_batchnorm(ref)
    with torch.no_grad():
        for branch in ref.model[-1].cv3:  # class priors of a trained model's busy image
            branch[-1].bias.fill_(-3.0)
    ours = yolov8n(score_thresh=CONF, nms_thresh=IOU, detections_per_img=MAX_DET)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.to(device), ref.to(device)


def _same_detections(ours, theirs) -> bool:
    """Sorted scores within 1e-4; boxes (ultralytics' clipped to the image, as its predictor
    does later) and labels (cvops': 1 + class index) of equal scores the same."""
    a, b = ours["scores"].sort(descending=True), theirs[:, 4].sort(descending=True)
    if a[0].shape != b[0].shape or not torch.allclose(a[0], b[0], atol=1e-4):
        return False
    boxes = theirs[b[1], :4].clamp(0, SIZE)
    same_labels = torch.equal(ours["labels"][a[1]] - 1, theirs[b[1], 5].long())
    return same_labels and torch.allclose(ours["boxes"][a[1]], boxes, atol=1e-3)


def _inference(device):
    from ultralytics.utils.nms import non_max_suppression

    ours, ref = _models(device)
    ours.eval()
    ref.eval()
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).to(device)

    def ours_step():
        with torch.inference_mode():
            return ours([image])[0]

    def ref_step():
        with torch.inference_mode():
            preds = ref(image[None])
            return non_max_suppression(
                preds, CONF, IOU, multi_label=True, max_det=MAX_DET, max_time_img=1e9
            )[0]

    got, expected = ours_step(), ref_step()
    if len(expected) < 10 or not _same_detections(got, expected):
        raise RuntimeError("yolov8n: cvops and ultralytics detect differently")
    return ours_step, ref_step


def _training(device):
    from ultralytics.utils.loss import v8DetectionLoss

    ours, ref = _models(device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(TRAIN_BATCH, 3, SIZE, SIZE, generator=g).to(device)
    xy = torch.rand(TRAIN_BATCH, 4, 2, generator=g) * (SIZE - 200)
    wh = torch.rand(TRAIN_BATCH, 4, 2, generator=g) * 160 + 32
    boxes = torch.cat((xy, xy + wh), -1).to(device)
    labels = torch.randint(0, 80, (TRAIN_BATCH, 4), generator=g).to(device)
    targets = [{"boxes": boxes[i], "labels": labels[i]} for i in range(TRAIN_BATCH)]
    cxcywh = torch.cat(((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), -1)
    batch = {
        "batch_idx": torch.arange(TRAIN_BATCH, device=device).repeat_interleave(4).float(),
        "cls": labels.flatten().float(),
        "bboxes": cxcywh.flatten(0, 1) / SIZE,
    }
    ref.train()
    ours.train()
    criterion = v8DetectionLoss(ref)

    def run(model, loss_fn):
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(images)).backward()
            opt.step()

        return step

    def ours_loss(raw):
        return sum(ours.loss(raw, targets).values()) * TRAIN_BATCH  # ultralytics' scale

    return run(ours, ours_loss), run(ref, lambda preds: criterion(preds, batch)[0].sum())


if importlib.util.find_spec("ultralytics") is not None:
    register(
        BenchCase(
            "yolov8n",
            "[1,3,%d,%d] inference + NMS (conf %.2f, IoU %.1f)" % (SIZE, SIZE, CONF, IOU),
            "float32",
            _inference,
            "ultralytics, same weights",
        )
    )
    register(
        BenchCase(
            "yolov8n",
            "[%d,3,%d,%d] training step (loss, SGD)" % (TRAIN_BATCH, SIZE, SIZE),
            "float32",
            _training,
            "ultralytics, same weights",
        )
    )
else:
    warnings.warn(
        "ultralytics is not installed: the YOLOv8 benchmark cases are skipped "
        "(pip install ultralytics)",
        stacklevel=1,
    )
