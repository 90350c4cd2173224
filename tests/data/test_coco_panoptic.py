"""COCO panoptic data (cvops.data.coco_panoptic): the RGB id encoding, the synthetic writer read
back through CocoPanoptic (the real format's reader) and checked against the instance JSON it
builds on (read by pycocotools through CocoDetection), the semantic labels, and the flip."""

import json
import os

import numpy as np
import pytest
import torch

from cvops.data import CocoDetection
from cvops.data.coco_panoptic import (
    IGNORE_INDEX,
    CocoPanoptic,
    PanopticFlip,
    id_to_rgb,
    make_synthetic_coco_panoptic,
    read_panoptic_png,
    rgb_to_id,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("panoptic"))
    files = make_synthetic_coco_panoptic(out, 5, (40, 48), num_things=3, num_stuff=3, seed=3)
    return out, files


def test_rgb_id_encoding():
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[1, 0].tolist() == [0, 1, 0]
    assert rgb[1, 1].tolist() == [0, 0, 1] and rgb[1, 2].tolist() == [255, 255, 255]
    assert np.array_equal(rgb_to_id(rgb), ids)
    with pytest.raises(ValueError, match="2\\^24"):
        id_to_rgb(np.array([256**3]))


def test_writer_round_trip(written):
    out, (images, ann_file, panoptic_dir) = written
    ds = CocoPanoptic(images, ann_file, panoptic_dir)
    assert len(ds) == 5 and (ds.num_things, ds.num_stuff) == (3, 3)
    assert ds.thing_ids == [1, 3, 5] and ds.stuff_ids == [101, 102, 103]
    assert ds.classes == ["__background__", "rectangle", "triangle", "disc"]
    assert ds.stuff_classes == ["things", "sky", "ground", "wall"]
    det = CocoDetection(images, os.path.join(out, "instances.json"))
    with open(ann_file) as f:
        raw = json.load(f)
    uses_high_channels = False
    for index in range(len(ds)):
        image, target = ds[index]
        ids = target["panoptic"]
        assert image.shape == (3, 40, 48) and ids.shape == (40, 48)
        # every id in the PNG has a segment and the reverse; areas and bboxes match the pixels
        segments = {s["id"]: s for s in target["segments_info"]}
        assert set(torch.unique(ids).tolist()) - {0} == set(segments)
        for s in segments.values():
            ys, xs = torch.nonzero(ids == s["id"], as_tuple=True)
            assert s["area"] == len(ys) > 0
            x0, y0 = int(xs.min()), int(ys.min())
            assert s["bbox"] == [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
            uses_high_channels |= s["id"] >= 65536
        # the things are the instance JSON's objects: same masks, boxes, classes, crowd flags
        _, instances = det[index]
        assert torch.equal(target["masks"], instances["masks"])
        assert torch.allclose(target["boxes"], instances["boxes"])
        assert torch.equal(target["labels"], instances["labels"])
        assert torch.equal(target["iscrowd"], instances["iscrowd"])
        # sem_seg: things 0, stuff 1..S, unlabeled 255
        sem = target["sem_seg"]
        assert torch.equal(sem == IGNORE_INDEX, ids == 0)
        thing_pixels = target["masks"].bool().any(0)
        assert bool((sem[thing_pixels] == 0).all())
        for s in segments.values():
            if s["category_id"] in ds.stuff_ids:
                label = ds.stuff_ids.index(s["category_id"]) + 1
                assert bool((sem[ids == s["id"]] == label).all())
        png = os.path.join(panoptic_dir, raw["annotations"][index]["file_name"])
        assert np.array_equal(read_panoptic_png(png), ids.numpy())
    assert uses_high_channels  # ids use the G and B channels too, as real COCO's
    # the last image has no things, only stuff
    assert len(ds[4][1]["labels"]) == 0 and len(ds[4][1]["segments_info"]) >= 1
    # drop_crowd leaves crowd things out of the instance targets only
    crowd = CocoPanoptic(images, ann_file, panoptic_dir, drop_crowd=True)
    _, full = ds[1]
    _, dropped = crowd[1]
    assert int(full["iscrowd"].sum()) == 1 and int(dropped["iscrowd"].sum()) == 0
    assert len(dropped["labels"]) == len(full["labels"]) - 1
    assert torch.equal(dropped["panoptic"], full["panoptic"])


def test_writer_is_a_function_of_its_arguments(written, tmp_path):
    out, (_, ann_file, panoptic_dir) = written
    _, again, again_dir = make_synthetic_coco_panoptic(
        str(tmp_path), 5, (40, 48), num_things=3, num_stuff=3, seed=3
    )
    with open(ann_file) as a, open(again) as b:
        assert json.load(a)["annotations"] == json.load(b)["annotations"]
    name = sorted(os.listdir(panoptic_dir))[0]
    first = read_panoptic_png(os.path.join(panoptic_dir, name))
    assert np.array_equal(first, read_panoptic_png(os.path.join(again_dir, name)))
    with pytest.raises(ValueError, match="num_stuff"):
        make_synthetic_coco_panoptic(str(tmp_path), 1, 32, num_stuff=7)


def test_flip_moves_every_target(written):
    _, files = written
    image, target = CocoPanoptic(*files)[0]
    flipped_image, flipped = PanopticFlip(1.0)(image, target)
    assert torch.equal(flipped_image, image.flip(-1))
    for key in ("masks", "sem_seg", "panoptic"):
        assert torch.equal(flipped[key], target[key].flip(-1)), key
    # the boxes still enclose the flipped masks exactly
    for box, mask in zip(flipped["boxes"], flipped["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    same_image, same = PanopticFlip(0.0)(image, target)
    assert same_image is image and same is target
    with pytest.raises(ValueError, match="p must be"):
        PanopticFlip(1.5)


def test_bad_files(tmp_path, written):
    _, (images, ann_file, panoptic_dir) = written
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="annotations"):
        CocoPanoptic(images, str(bad), panoptic_dir)
    with open(ann_file) as f:
        data = json.load(f)
    data["annotations"][0]["segments_info"][0]["category_id"] = 999
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown category id 999"):
        CocoPanoptic(images, str(bad), panoptic_dir)[0]
