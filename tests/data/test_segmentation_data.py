import os

import pytest
import torch

from cvops.data import (
    IGNORE_INDEX,
    SegmentationTransform,
    SyntheticSegmentation,
    folder_dataset,
    ignore_borders,
    read_mask,
    seeded,
    voc_dataset,
    write_segmentation_dataset,
)


def test_synthetic_is_deterministic_and_valid():
    a = SyntheticSegmentation(6, (40, 48), num_classes=5, seed=3)
    b = SyntheticSegmentation(6, (40, 48), num_classes=5, seed=3)
    other = SyntheticSegmentation(6, (40, 48), num_classes=5, seed=4)
    seen = set()
    for i in range(len(a)):
        image, mask = a[i]
        assert image.shape == (3, 40, 48) and image.dtype == torch.float32
        assert mask.shape == (40, 48) and mask.dtype == torch.int64
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        assert set(mask.unique().tolist()) <= set(range(5))
        seen |= set(mask.unique().tolist())
        x2, m2 = b[i]
        assert torch.equal(image, x2) and torch.equal(mask, m2)
        assert not torch.equal(image, other[i][0])
    assert len(seen) >= 3  # background and several object classes
    with pytest.raises(IndexError):
        a[6]


def test_synthetic_every_class_occurs_and_binary():
    ds = SyntheticSegmentation(24, 32, num_classes=4, seed=0)
    counts = torch.zeros(4, dtype=torch.long)
    for i in range(len(ds)):
        counts += torch.bincount(ds[i][1].flatten(), minlength=4)
    assert (counts > 0).all()
    binary = SyntheticSegmentation(4, 32, num_classes=4, seed=0, binary=True)
    assert binary.num_classes == 2
    assert set(binary[0][1].unique().tolist()) <= {0, 1}
    # Same objects: the binary mask is the foreground of the multi-class one.
    assert torch.equal(binary[1][1], (ds[1][1] > 0).long())


def test_ignore_border_marks_outlines_only():
    mask = torch.zeros(12, 12, dtype=torch.long)
    mask[4:8, 4:8] = 2
    out = ignore_borders(mask, 1)
    assert out[5:7, 5:7].eq(2).all()  # interior kept
    assert out[0:2].eq(0).all() and out[:, 10:].eq(0).all()  # far background kept
    assert out[3, 4] == IGNORE_INDEX and out[4, 4] == IGNORE_INDEX and out[8, 7] == IGNORE_INDEX
    ds = SyntheticSegmentation(2, 32, seed=0, ignore_border=1)
    plain = SyntheticSegmentation(2, 32, seed=0)
    m, p = ds[0][1], plain[0][1]
    assert (m == IGNORE_INDEX).any()
    keep = m != IGNORE_INDEX
    assert torch.equal(m[keep], p[keep])


def test_seeded_augmentation_is_per_sample_and_epoch():
    base = SyntheticSegmentation(4, 32, seed=0)
    ds = seeded(base, SegmentationTransform(24, train=True), seed=5)
    x, m = ds[2]
    assert x.shape == (3, 24, 24) and m.shape == (24, 24) and m.dtype == torch.int64
    assert type(x) is torch.Tensor and type(m) is torch.Tensor
    torch.manual_seed(123)  # the global RNG does not matter
    x2, m2 = ds[2]
    assert torch.equal(x, x2) and torch.equal(m, m2)
    assert set(m.unique().tolist()) <= set(base[2][1].unique().tolist())  # nearest for masks
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], x)
    assert ds.num_classes == base.num_classes


def test_eval_transform_resizes_masks_with_nearest():
    mask = torch.zeros(20, 30, dtype=torch.long)
    mask[5:15, 10:20] = 3
    mask[0] = IGNORE_INDEX
    x, m = SegmentationTransform((10, 15))(torch.rand(3, 20, 30), mask)
    assert x.shape == (3, 10, 15) and m.shape == (10, 15)
    assert set(m.unique().tolist()) == {0, 3, IGNORE_INDEX}


def test_folder_round_trip(tmp_path):
    ds = SyntheticSegmentation(3, (24, 32), num_classes=4, seed=1, ignore_border=1)
    ids = write_segmentation_dataset(ds, str(tmp_path), layout="folder", split="val")
    assert len(ids) == 3
    back = folder_dataset(str(tmp_path), "val", num_classes=4)
    assert len(back) == 3
    for i in range(3):
        (x, m), (x2, m2) = ds[i], back[i]
        assert torch.equal(m, m2)  # masks exact, ignore included
        assert torch.equal((x * 255).round() / 255, x2)  # PNG: exact up to 8-bit quantisation
    binary = folder_dataset(str(tmp_path), "val", num_classes=4, binary=True)
    m, mb = ds[0][1], binary[0][1]
    assert binary.num_classes == 2
    assert torch.equal(mb, torch.where((m > 0) & (m != IGNORE_INDEX), 1, m))


def test_voc_round_trip(tmp_path):
    from PIL import Image

    ds = SyntheticSegmentation(4, 32, num_classes=4, seed=2)
    write_segmentation_dataset(ds, str(tmp_path), layout="voc", split="train")
    write_segmentation_dataset(ds, str(tmp_path), layout="voc", split="val")
    with open(os.path.join(tmp_path, "ImageSets", "Segmentation", "train.txt")) as f:
        ids = f.read().split()
    assert ids == ["train_%06d" % i for i in range(4)]
    mask_path = os.path.join(tmp_path, "SegmentationClass", ids[1] + ".png")
    with Image.open(mask_path) as im:
        assert im.mode == "P"  # palette PNG, as VOC's
    assert os.path.isfile(os.path.join(tmp_path, "JPEGImages", ids[1] + ".jpg"))
    back = voc_dataset(str(tmp_path), "train", num_classes=4)
    assert len(back) == 4
    x, m = ds[1]
    x2, m2 = back[1]
    assert torch.equal(m, m2) and torch.equal(read_mask(mask_path), m)
    assert (x - x2).abs().mean() < 0.05  # JPEG
    assert len(voc_dataset(str(tmp_path), "val")) == 4
