"""The YOLOv8 benchmark case: its inference ``make`` keeps ultralytics' detections (network,
decoding and NMS at 640x640, same weights), and the training step runs on both sides."""

import pytest

from tests.conftest import requires_ops

pytest.importorskip("ultralytics", reason="ultralytics (the YOLOv8 reference) is not installed")


@requires_ops
def test_yolo_bench_cases_agree_with_ultralytics():
    from cvops.bench.cases import yolo

    ours, ref = yolo._inference("cpu")  # raises when the detections differ
    got, expected = ours(), ref()
    assert len(got["scores"]) == len(expected) == yolo.MAX_DET
    assert yolo._same_detections(got, expected)
    # the comparison can fail
    shifted = dict(got, scores=got["scores"].clone() + 0.01)
    assert not yolo._same_detections(shifted, expected)
