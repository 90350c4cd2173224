"""The YOLO reference models for the equivalence tests, imported lazily: ultralytics
(YOLOv8) and the ``yolov5`` package (a packaged copy of ultralytics/yolov5). A test skips
with the import error when a reference is missing or does not import (``yolov5`` imports
``pkg_resources``, which setuptools >= 81 no longer ships: requirements-test.txt pins
``setuptools<81``)."""

import os
import warnings

import pytest


def ultralytics_model(cfg: str, nc: int = 80):
    """ultralytics' ``DetectionModel`` for ``cfg`` (e.g. ``"yolov8n.yaml"``), random weights,
    with the default training hyperparameters as ``.args`` (its loss reads them)."""
    try:
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip("ultralytics (the YOLOv8 reference) does not import: %r" % e)
    model = DetectionModel(cfg, nc=nc, verbose=False)
    model.args = get_cfg()
    return model


def yolov5_model(scale: str, nc: int = 80):
    """The ``yolov5`` package's ``DetectionModel`` of ``yolov5{scale}.yaml``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources' deprecation warning
            import yolov5
            from yolov5.models.yolo import DetectionModel
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip("the yolov5 package (the YOLOv5 reference) does not import: %r" % e)
    cfg = os.path.join(os.path.dirname(yolov5.__file__), "models", "yolov5%s.yaml" % scale)
    return DetectionModel(cfg, nc=nc)


def yolov5_compute_loss(model, hyp):
    from yolov5.utils.loss import ComputeLoss

    model.hyp = hyp
    return ComputeLoss(model)


def ultralytics_loss(model):
    from ultralytics.utils.loss import v8DetectionLoss

    return v8DetectionLoss(model)


def normalized_targets(boxes, labels, height, width):
    """Per-image xyxy pixel boxes -> the references' ``(image, class, cx, cy, w, h)`` rows
    normalised by the image size."""
    import torch

    rows = []
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        for (x1, y1, x2, y2), c in zip(b.tolist(), lab.tolist()):
            rows.append(
                [
                    i,
                    c,
                    (x1 + x2) / 2 / width,
                    (y1 + y2) / 2 / height,
                    (x2 - x1) / width,
                    (y2 - y1) / height,
                ]
            )
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def run_both(ref, ours, shape, seed: int, train: bool):
    """Both models on the same random input of ``shape``, in train or eval mode."""
    import torch

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    for model in (ref, ours):
        model.train(train)
    with torch.no_grad():
        return ref(x), ours(x)


def assert_same_outputs(actual, expected, atol: float = 1e-4):
    """Tensors, or (nested) tuples / lists / dicts of them (the raw head outputs; dict keys
    the two share: ultralytics' ``feats`` are not ours), equal in shape and within ``atol``;
    every tensor varies (a constant output could not tell the models apart)."""
    import torch

    if isinstance(expected, torch.Tensor):
        assert actual.shape == expected.shape
        assert expected.float().std() > 1e-3, "reference output is degenerate"
        assert (actual - expected).abs().max() < atol
    elif isinstance(expected, dict):
        for key in ("boxes", "scores"):
            assert_same_outputs(actual[key], expected[key], atol)
    else:
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_outputs(a, e, atol)
