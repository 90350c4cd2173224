"""The panoptic merge (cvops.models.detection.merge_panoptic) on hand-made inputs: score order
and threshold, the overlap rule, the stuff area rule, the "things" semantic class, the COCO
panoptic output convention."""

import pytest
import torch

from cvops.models.detection import merge_panoptic

H, W = 6, 8


def box_mask(y0, y1, x0, x1):
    m = torch.zeros(H, W, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_instances_by_score_with_the_overlap_rule():
    # A (score 0.9): rows 0-3, cols 0-3 (16 px)
    # B (0.8): rows 1-3, cols 1-4 (12 px), 9 of them in A: 9/12 > 0.5 -> dropped
    # C (0.7): rows 2-5, cols 2-5 (16 px), 4 in A: 4/16 <= 0.5 -> kept, 12 px
    # D (0.3): below the score threshold -> dropped although it is free
    # they come unsorted: C, D, A, B
    masks = torch.stack(
        [box_mask(2, 6, 2, 6), box_mask(0, 2, 6, 8), box_mask(0, 4, 0, 4), box_mask(1, 4, 1, 5)]
    )
    scores = torch.tensor([0.7, 0.3, 0.9, 0.8])
    labels = torch.tensor([2, 1, 1, 3])
    semantic = torch.zeros(H, W, dtype=torch.int64)  # all "things": no stuff segment
    ids, segments = merge_panoptic(masks, scores, labels, semantic, num_things=3, stuff_area=0)
    expected = torch.zeros(H, W, dtype=torch.int64)
    expected[2:6, 2:6] = 2
    expected[0:4, 0:4] = 1
    assert torch.equal(ids, expected)
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in segments] == [
        (1, 1, True, 16),
        (2, 2, True, 12),
    ]
    assert segments[0]["score"] == pytest.approx(0.9)
    # a looser overlap threshold keeps B on its 3 free pixels (placed before C)
    ids, segments = merge_panoptic(
        masks, scores, labels, semantic, 3, overlap_thresh=0.8, stuff_area=0
    )
    assert [(s["category_id"], s["area"]) for s in segments] == [(1, 16), (3, 3), (2, 10)]
    assert int((ids == 2).sum()) == 3


def test_stuff_fills_free_pixels_with_the_area_rule():
    # semantic: stuff 1 on rows 0-2 (24 px), stuff 2 on rows 3-4 (16 px), "things" (0) row 5
    semantic = torch.zeros(H, W, dtype=torch.int64)
    semantic[0:3] = 1
    semantic[3:5] = 2
    # one instance (label 1) on rows 2-5, cols 0-2 (12 px) takes 3 px of stuff 1, 6 of stuff 2
    masks = box_mask(2, 6, 0, 3)[None].float() * 0.9  # probabilities, thresholded at 0.5
    scores, labels = torch.tensor([0.95]), torch.tensor([1])
    # stuff 1 keeps 21 px, stuff 2 keeps 10 px: with stuff_area 11 only stuff 1 is placed
    ids, segments = merge_panoptic(masks, scores, labels, semantic, num_things=2, stuff_area=11)
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in segments] == [
        (1, 1, True, 12),
        (2, 3, False, 21),  # stuff j -> category num_things + j
    ]
    assert int((ids == 0).sum()) == 10 + 5  # stuff 2's free pixels and row 5's free "things"
    ids, segments = merge_panoptic(masks, scores, labels, semantic, num_things=2, stuff_area=10)
    assert [(s["category_id"], s["area"]) for s in segments] == [(1, 12), (3, 21), (4, 10)]
    # every segment's area is its pixel count, ids are 1..n
    for s in segments:
        assert int((ids == s["id"]).sum()) == s["area"]


def test_mask_rcnn_shapes_empty_instances_and_errors():
    semantic = torch.ones(H, W, dtype=torch.int64)
    empty = torch.zeros(0, 1, H, W)
    none = torch.zeros(0, dtype=torch.int64)
    ids, segments = merge_panoptic(empty, torch.zeros(0), none, semantic, 5)
    assert segments == [] and bool((ids == 0).all())  # 48 px < the default stuff area 4096
    ids, segments = merge_panoptic(empty, torch.zeros(0), none, semantic, 5, stuff_area=48)
    assert ids.dtype == torch.int64 and bool((ids == 1).all())
    assert segments == [{"id": 1, "category_id": 6, "isthing": False, "area": H * W, "iscrowd": 0}]
    with pytest.raises(ValueError, match="masks"):
        merge_panoptic(torch.zeros(1, H, W + 1), torch.ones(1), torch.ones(1), semantic, 5)
    with pytest.raises(ValueError, match="scores and labels"):
        merge_panoptic(torch.zeros(2, H, W), torch.ones(1), torch.ones(1), semantic, 5)
    with pytest.raises(TypeError, match="semantic"):
        merge_panoptic(empty, torch.zeros(0), torch.zeros(0), semantic.float(), 5)
    with pytest.raises(ValueError, match="overlap_thresh"):
        merge_panoptic(empty, torch.zeros(0), torch.zeros(0), semantic, 5, overlap_thresh=2)
