"""PQ/SQ/RQ through torchmetrics (cvops.metrics.panoptic): 1.0 for the ground truth, a small
case computed by hand, unlabeled predictions counted as panopticapi counts them, crowd regions,
and the plain torchmetrics average where both conventions agree."""

import pytest
import torch

from cvops.metrics.panoptic import PanopticEvaluator, panoptic_to_pairs, relabel_segments

THING, STUFF = 1, 10


def seg(i, cat, iscrowd=0):
    return {"id": i, "category_id": cat, "iscrowd": iscrowd}


# ground truth, 4 x 6: A (id 1) and B (id 2) things, S (id 3) stuff, 0 unlabeled
GT_IDS = torch.tensor(
    [
        [1, 1, 1, 3, 3, 3],
        [1, 1, 1, 3, 3, 3],
        [2, 2, 0, 3, 3, 3],
        [2, 2, 0, 3, 3, 3],
    ]
)
GT_SEGMENTS = [seg(1, THING), seg(2, THING), seg(3, STUFF)]
# prediction: a (id 5) inside A, S' (id 7) = S plus pixel (0, 2) of A, B left unlabeled (0)
PRED_IDS = torch.tensor(
    [
        [5, 5, 7, 7, 7, 7],
        [5, 5, 5, 7, 7, 7],
        [0, 0, 0, 7, 7, 7],
        [0, 0, 0, 7, 7, 7],
    ]
)
PRED_SEGMENTS = [seg(5, THING), seg(7, STUFF)]


def evaluate(pred_ids, pred_segments, gt_ids=GT_IDS, gt_segments=GT_SEGMENTS):
    ev = PanopticEvaluator([THING], [STUFF])
    ev.update([(pred_ids, pred_segments)], [(gt_ids, gt_segments)])
    return ev.compute()


def test_ground_truth_scores_one():
    out = evaluate(GT_IDS, GT_SEGMENTS)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert out[key] == 1.0, key
    assert out["per_class"] == {THING: 1.0, STUFF: 1.0} and out["num_images"] == 1


def test_hand_computed_case():
    # thing class 1:
    #   a vs A: a = 5 px, all inside A (6 px): IoU = 5 / (5 + 6 - 5) = 5/6 > 0.5 -> TP
    #   B (4 px) is left unlabeled by the prediction -> FN (panopticapi counts it)
    #   SQ = 5/6, RQ = 1 / (1 + 0 / 2 + 1 / 2) = 2/3, PQ = 5/9
    # stuff class 10:
    #   S' (13 px) vs S (12 px): intersection 12, neither on unlabeled ground truth:
    #   IoU = 12 / (13 + 12 - 12) = 12/13 -> TP; SQ = 12/13, RQ = 1, PQ = 12/13
    # averages over the two classes: PQ = (5/9 + 12/13) / 2 = 173/234,
    # SQ = (5/6 + 12/13) / 2 = 137/156, RQ = (2/3 + 1) / 2 = 5/6
    out = evaluate(PRED_IDS, PRED_SEGMENTS)
    assert out["PQ"] == pytest.approx(173 / 234)
    assert out["SQ"] == pytest.approx(137 / 156)
    assert out["RQ"] == pytest.approx(5 / 6)
    assert out["PQ_th"] == pytest.approx(5 / 9) and out["RQ_th"] == pytest.approx(2 / 3)
    assert out["PQ_st"] == pytest.approx(12 / 13) and out["SQ_st"] == pytest.approx(12 / 13)
    assert out["per_class"] == pytest.approx({THING: 5 / 9, STUFF: 12 / 13})


def test_unlabeled_ground_truth_leaves_the_union_and_ignores_segments_on_it():
    # prediction: A exact, S exact, plus segment c (id 9, thing) on the 2 unlabeled pixels and
    # on 1 pixel of B: 2/3 of c lies on unlabeled ground truth -> ignored (no FP); B is FN.
    pred = GT_IDS.clone()
    pred[pred == 2] = 0
    pred[2:, 2] = 9
    pred[3, 1] = 9
    out = evaluate(pred, [seg(1, THING), seg(3, STUFF), seg(9, THING)])
    # thing: TP 1 (IoU 1), FP 0, FN 1 -> PQ 2/3; stuff: PQ 1
    assert out["PQ_th"] == pytest.approx(2 / 3) and out["PQ_st"] == 1.0


def test_crowd_ground_truth_is_void():
    # B marked crowd: the prediction's segment on B is not a false positive, B no FN
    pred = GT_IDS.clone()
    pred[pred == 2] = 8
    gt_segments = [seg(1, THING), seg(2, THING, iscrowd=1), seg(3, STUFF)]
    out = evaluate(pred, [seg(1, THING), seg(8, THING), seg(3, STUFF)], GT_IDS, gt_segments)
    assert out["PQ"] == 1.0
    # not crowd: 8 matches B exactly, also 1.0; as another class's crowd it would be an FP
    plain = evaluate(pred, [seg(1, THING), seg(8, THING), seg(3, STUFF)])
    assert plain["PQ"] == 1.0


def test_equals_torchmetrics_where_nothing_is_unlabeled():
    from torchmetrics.detection import PanopticQuality

    g = torch.Generator().manual_seed(0)
    things, stuffs = [1, 2], [10, 11]
    reference = PanopticQuality(things, stuffs, return_sq_and_rq=True)
    ev = PanopticEvaluator(things, stuffs)
    for _ in range(3):
        # blocky random maps (4 x 4 cells of 3 x 3 px): ids 1..6, categories fixed per id;
        # the prediction is the ground truth with 4 cells redrawn
        cats = {1: 1, 2: 1, 3: 2, 4: 10, 5: 11, 6: 2}
        gt = torch.randint(1, 7, (4, 4), generator=g)
        pred = gt.clone().view(-1)
        pred[torch.randperm(16, generator=g)[:4]] = torch.randint(1, 7, (4,), generator=g)
        pred, gt = (
            m.view(4, 4).repeat_interleave(3, 0).repeat_interleave(3, 1) for m in (pred, gt)
        )
        segments = [seg(i, c) for i, c in cats.items()]
        ev.update([(pred, segments)], [(gt, segments)])
        reference.update(
            panoptic_to_pairs(pred, segments)[None], panoptic_to_pairs(gt, segments)[None]
        )
    out = ev.compute()
    pq, sq, rq = reference.compute().tolist()
    assert (out["PQ"], out["SQ"], out["RQ"]) == pytest.approx((pq, sq, rq))
    assert 0 < out["PQ"] < 1


def test_pairs_relabel_and_errors():
    pairs = panoptic_to_pairs(GT_IDS, GT_SEGMENTS)
    assert pairs.shape == (4, 6, 2)
    assert pairs[0, 0].tolist() == [THING, 1] and pairs[2, 2].tolist() == [-1, 0]
    assert relabel_segments([seg(5, 2)], {2: 7})[0]["category_id"] == 7
    with pytest.raises(ValueError, match="category_map"):
        relabel_segments([seg(5, 3)], {2: 7})
    with pytest.raises(ValueError, match="ids"):
        panoptic_to_pairs(GT_IDS[None], GT_SEGMENTS)
    with pytest.raises(ValueError, match="differ in size"):
        evaluate(PRED_IDS[:3], PRED_SEGMENTS)
    with pytest.raises(ValueError, match="Unknown categories"):
        evaluate(PRED_IDS, [seg(5, 4), seg(7, STUFF)])  # 4 is neither thing nor stuff
