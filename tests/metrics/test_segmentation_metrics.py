import math

import pytest
import torch

from cvops.metrics import ConfusionMatrix, confusion_matrix, metrics_from_matrix

# target / prediction with a hand-computed confusion matrix (rows: target, columns: prediction)
TARGET = torch.tensor([[0, 0, 1, 1, 2, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 1, 2, 0, 2]])
MATRIX = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_confusion_matrix_hand_computed():
    m = confusion_matrix(PRED, TARGET, 3, ignore_index=255)
    assert m.dtype == torch.int64
    assert m.tolist() == MATRIX


def test_metrics_hand_computed():
    r = metrics_from_matrix(torch.tensor(MATRIX))
    # IoU = TP / (TP + FP + FN): 1/(2+2-1), 2/(2+3-2), 1/(2+1-1)
    assert r["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert r["miou"] == pytest.approx(0.5)
    assert r["dice"] == pytest.approx([2 / 4, 4 / 5, 2 / 3])
    assert r["mean_dice"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r["class_acc"] == pytest.approx([0.5, 1.0, 0.5])
    assert r["pixel_acc"] == pytest.approx(4 / 6)
    assert r["fw_iou"] == pytest.approx((2 * (1 / 3) + 2 * (2 / 3) + 2 * 0.5) / 6)
    assert r["pixels"] == 6


def test_absent_class_is_left_out_of_the_means():
    acc = ConfusionMatrix(4, ignore_index=255)
    acc.update(PRED, TARGET)
    r = acc.compute()
    assert math.isnan(r["iou"][3]) and math.isnan(r["dice"][3])
    assert r["miou"] == pytest.approx(0.5)
    assert r["confusion_matrix"][3] == [0, 0, 0, 0]


def test_accumulation_over_batches_and_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 9, 7, generator=g)
    target = torch.randint(0, 5, (6, 9, 7), generator=g)
    target[:, 0] = 255
    whole = ConfusionMatrix(5)
    whole.update(logits.argmax(1), target)
    parts = ConfusionMatrix(5)
    for i in range(0, 6, 4):
        parts.update(logits[i : i + 4], target[i : i + 4])  # logits: argmax inside
    assert torch.equal(whole.matrix, parts.matrix)
    assert int(whole.matrix.sum()) == 6 * 8 * 7


def test_binary_logits():
    acc = ConfusionMatrix(2, binary=True)
    acc.update(torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]]]]), torch.tensor([[[0, 1], [0, 255]]]))
    assert acc.matrix.tolist() == [[1, 1], [0, 1]]  # (t, p): (0, 0), (1, 1), (0, 1)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_against_torchmetrics(ignore_index):
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(1)
    c = 6
    pred = torch.randint(0, c, (4, 16, 16), generator=g)
    target = torch.randint(0, c, (4, 16, 16), generator=g)
    target[pred == target] = torch.randint(0, c, (int((pred == target).sum()),), generator=g)
    if ignore_index is not None:
        target[:, :3] = ignore_index
    acc = ConfusionMatrix(c, ignore_index=ignore_index)
    acc.update(pred[:2], target[:2])
    acc.update(pred[2:], target[2:])
    r = acc.compute()
    kw = dict(num_classes=c, ignore_index=ignore_index)
    iou = tm.MulticlassJaccardIndex(average="none", **kw)(pred, target)
    miou = tm.MulticlassJaccardIndex(average="macro", **kw)(pred, target)
    f1 = tm.MulticlassF1Score(average="none", multidim_average="global", **kw)(pred, target)
    pix = tm.MulticlassAccuracy(average="micro", **kw)(pred, target)
    cm = tm.MulticlassConfusionMatrix(**kw)(pred, target)
    assert r["confusion_matrix"] == cm.tolist()
    assert r["iou"] == pytest.approx(iou.tolist(), abs=1e-6)
    assert r["miou"] == pytest.approx(float(miou), abs=1e-6)
    assert r["dice"] == pytest.approx(f1.tolist(), abs=1e-6)
    assert r["pixel_acc"] == pytest.approx(float(pix), abs=1e-6)
