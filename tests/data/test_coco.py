import json
import os

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cvops.data.coco import (
    SYNTHETIC_SHAPES,
    CocoDetection,
    category_maps,
    collate_detection,
    detection_transforms,
    make_synthetic_coco,
)
from cvops.data.transforms import SeededTransform

pytestmark = pytest.mark.filterwarnings(
    # pycocotools' Cython decode under numpy 2 (not ours)
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SIZE = (72, 88)  # not square: catches H/W mix-ups


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images, ann_file = make_synthetic_coco(
        str(root), 6, image_size=SIZE, num_classes=3, seed=1, image_format="png"
    )
    with open(ann_file) as f:
        raw = json.load(f)
    return images, ann_file, raw


def _decode(segm, h, w):
    if isinstance(segm, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segm, h, w)))
    if isinstance(segm["counts"], list):
        return mask_utils.decode(mask_utils.frPyObjects(segm, h, w))
    return mask_utils.decode({"size": segm["size"], "counts": segm["counts"].encode()})


def test_writer_format_and_determinism(synthetic, tmp_path):
    images, ann_file, raw = synthetic
    assert set(raw) >= {"images", "annotations", "categories"}
    assert [c["id"] for c in raw["categories"]] == [1, 3, 5]  # not contiguous, like COCO
    assert [c["name"] for c in raw["categories"]] == list(SYNTHETIC_SHAPES[:3])
    kinds = {"polygon": 0, "rle": 0, "crowd": 0}
    for a in raw["annotations"]:
        segm = a["segmentation"]
        if a["iscrowd"]:
            kinds["crowd"] += 1
            assert isinstance(segm["counts"], list)  # uncompressed RLE, as real COCO crowds
        elif isinstance(segm, list):
            kinds["polygon"] += 1
        else:
            kinds["rle"] += 1
            assert isinstance(segm["counts"], str)
    assert kinds["polygon"] and kinds["rle"] and kinds["crowd"] == 1
    for im in raw["images"]:
        assert os.path.isfile(os.path.join(images, im["file_name"]))
        assert (im["height"], im["width"]) == SIZE
    # the same arguments write the same files; another seed other images
    again = make_synthetic_coco(str(tmp_path / "a"), 6, SIZE, 3, seed=1, image_format="png")
    with open(again[1]) as f:
        assert json.load(f) == raw
    name = raw["images"][0]["file_name"]
    with open(os.path.join(images, name), "rb") as f:
        first = f.read()
    with open(os.path.join(again[0], name), "rb") as f:
        assert f.read() == first
    other = make_synthetic_coco(str(tmp_path / "b"), 6, SIZE, 3, seed=2, image_format="png")
    with open(other[1]) as f:
        assert json.load(f)["annotations"] != raw["annotations"]


def test_round_trip_through_dataset(synthetic):
    images, ann_file, raw = synthetic
    ds = CocoDetection(images, ann_file)
    assert len(ds) == 6 and ds.num_classes == 4
    assert ds.contiguous_id == {1: 1, 3: 2, 5: 3} and ds.coco_id == {1: 1, 2: 3, 3: 5}
    assert ds.classes == ["__background__"] + list(SYNTHETIC_SHAPES[:3])
    by_image = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for index in range(len(ds)):
        image, t = ds[index]
        h, w = SIZE
        assert image.shape == (3, h, w) and image.dtype == torch.float32
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        anns = by_image.get(t["image_id"], [])
        n = len(anns)
        assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
        assert t["masks"].shape == (n, h, w) and t["masks"].dtype == torch.uint8
        assert t["labels"].dtype == torch.int64 and t["iscrowd"].dtype == torch.int64
        for i, a in enumerate(anns):
            x, y, bw, bh = a["bbox"]
            assert t["boxes"][i].tolist() == [x, y, x + bw, y + bh]
            assert int(t["labels"][i]) == ds.contiguous_id[a["category_id"]]
            assert int(t["iscrowd"][i]) == a["iscrowd"]
            assert float(t["area"][i]) == a["area"]
            m = t["masks"][i]
            assert np.array_equal(m.numpy(), _decode(a["segmentation"], h, w))
            assert int(m.sum()) == a["area"]
            ys, xs = torch.nonzero(m, as_tuple=True)  # the box is the mask's extent
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == t["boxes"][i].tolist()
            if not a["iscrowd"]:  # the object is painted in its class colour
                inside, outside = image[:, m.bool()].mean(1), image[:, ~m.bool()].mean(1)
                assert (inside - outside).abs().max() > 0.1


def test_empty_image_and_training_filter(synthetic):
    images, ann_file, raw = synthetic
    ds = CocoDetection(images, ann_file)
    image, t = ds[len(ds) - 1]  # the writer's last image has no objects
    assert t["image_id"] == 6
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert t["masks"].shape == (0, *SIZE) and t["iscrowd"].shape == (0,)
    train = CocoDetection(images, ann_file, remove_images_without_annotations=True)
    assert 6 not in train.ids and len(train) == 5
    no_crowd = CocoDetection(images, ann_file, drop_crowd=True, return_masks=False)
    crowd_image = next(a["image_id"] for a in raw["annotations"] if a["iscrowd"])
    t = no_crowd[no_crowd.ids.index(crowd_image)][1]
    assert "masks" not in t and int(t["iscrowd"].sum()) == 0


def test_degenerate_boxes_dropped(tmp_path, synthetic):
    images, ann_file, raw = synthetic
    raw = json.loads(json.dumps(raw))
    first = raw["annotations"][0]
    extra = dict(first, id=1000, bbox=[5.0, 5.0, 0.0, 10.0])
    raw["annotations"] += [extra, dict(first, id=1001, bbox=[5.0, 5.0, 4.0, -1.0])]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    ds = CocoDetection(images, str(path))
    t = ds[ds.ids.index(first["image_id"])][1]
    n = sum(a["image_id"] == first["image_id"] for a in raw["annotations"]) - 2
    assert len(t["boxes"]) == n and bool((t["boxes"][:, 2:] > t["boxes"][:, :2]).all())


def test_coco_ids_as_labels(synthetic):
    images, ann_file, raw = synthetic
    ds = CocoDetection(images, ann_file, contiguous_ids=False)
    assert ds.contiguous_id == ds.coco_id == {1: 1, 3: 3, 5: 5}
    assert ds.classes == ["__background__", "rectangle", "N/A", "triangle", "N/A", "disc"]
    assert ds.num_classes == 6
    labels = torch.cat([ds[i][1]["labels"] for i in range(len(ds))]).tolist()
    assert labels == [a["category_id"] for a in raw["annotations"]]


def test_category_maps_sorted():
    class Fake:
        def getCatIds(self):
            return [90, 7, 12]

    contiguous, coco = category_maps(Fake())
    assert contiguous == {7: 1, 12: 2, 90: 3} and coco == {1: 7, 2: 12, 3: 90}


def test_flip_moves_boxes_and_masks_together(synthetic):
    images, ann_file, _ = synthetic
    ds = CocoDetection(images, ann_file)
    image, t = ds[0]
    flip = detection_transforms(train=True, hflip=1.0)
    fimage, ft = flip(image, t)
    w = SIZE[1]
    assert torch.equal(fimage, image.flip(-1))
    assert torch.equal(ft["masks"], t["masks"].flip(-1))
    expected = t["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
        [w, 0, w, 0]
    )
    assert torch.allclose(ft["boxes"], expected)
    for box, m in zip(ft["boxes"], ft["masks"]):  # each box still bounds its mask
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()
    assert type(ft["boxes"]) is torch.Tensor and type(fimage) is torch.Tensor
    assert torch.equal(ft["labels"], t["labels"]) and ft["image_id"] == t["image_id"]
    same = detection_transforms(train=False)(image, t)
    assert same[0] is image and same[1] is t


def test_scale_jitter_and_sanitize(synthetic):
    images, ann_file, _ = synthetic
    ds = CocoDetection(images, ann_file)
    image, t = ds[0]
    jitter = detection_transforms(train=True, hflip=0.0, scale_range=(0.5, 0.5), size=SIZE)
    jimage, jt = jitter(image, t)
    h, w = jimage.shape[1:]
    assert (h, w) == (SIZE[0] // 2, SIZE[1] // 2)
    assert jt["masks"].shape == (len(jt["boxes"]), h, w)
    assert torch.allclose(jt["boxes"], t["boxes"] * 0.5, atol=1)
    # a box pushed out of the image goes, with its label, mask, iscrowd and area
    t2 = dict(t, boxes=t["boxes"].clone())
    t2["boxes"][0] = torch.tensor([200.0, 200.0, 210.0, 210.0])
    _, st = detection_transforms(train=True, hflip=1.0)(image, t2)
    n = len(t["boxes"]) - 1
    assert len(st["boxes"]) == len(st["labels"]) == len(st["masks"]) == n
    assert len(st["iscrowd"]) == len(st["area"]) == n


def test_collate_and_seeded_augmentation(synthetic):
    images, ann_file, _ = synthetic
    ds = SeededTransform(CocoDetection(images, ann_file), detection_transforms(True), seed=0)
    assert ds.coco_id == {1: 1, 2: 3, 3: 5}  # forwarded to the dataset
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_detection)
    batch_images, targets = next(iter(loader))
    assert len(batch_images) == len(targets) == 3 and targets[0]["image_id"] == 1
    again = next(iter(loader))
    for a, b in zip(batch_images, again[0]):
        assert torch.equal(a, b)
