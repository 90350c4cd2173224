"""The NMS ops' input contract: clear exceptions naming the argument, and property tests."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cvops
from cvops.ops._reference import _pairwise_iou_row
from tests.conftest import requires_ops

pytestmark = requires_ops


def _ok(n=3):
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])[:n]
    return boxes, torch.tensor([0.9, 0.8, 0.7])[:n]


OPS = {
    "nms": lambda b, s, t=0.5: cvops.nms(b, s, t),
    "batched_nms": lambda b, s, t=0.5: cvops.batched_nms(
        b, s, torch.zeros(len(b), dtype=torch.int64), t
    ),
    "soft_nms": lambda b, s, t=0.5: cvops.soft_nms(b, s, t),
    "nms_fixed": lambda b, s, t=0.5: cvops.nms_fixed(b, s, t, 4),
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda b, s: (b[:, :3], s), ValueError, r"boxes of shape \[N, 4\]"),
        (lambda b, s: (b[None], s), ValueError, r"boxes of shape \[N, 4\]"),
        (lambda b, s: (b, s[:, None]), ValueError, r"scores of shape \[N\]"),
        (lambda b, s: (b, s[:2]), ValueError, "same length"),
        (lambda b, s: (b.long(), s), TypeError, "floating-point boxes"),
        (lambda b, s: (b, s.double()), TypeError, "same dtype"),
        (lambda b, s: (b, s, -0.1), ValueError, r"iou_threshold must be in \[0, 1\]"),
        (lambda b, s: (b, s, 1.5), ValueError, r"iou_threshold must be in \[0, 1\]"),
        (lambda b, s: (b, s, float("nan")), ValueError, r"iou_threshold must be in \[0, 1\]"),
        (lambda b, s: (b, s, "0.5"), TypeError, "iou_threshold must be a float"),
        (lambda b, s: (b.tolist(), s), TypeError, "boxes must be a Tensor"),
        (lambda b, s: (b, s.tolist()), TypeError, "scores must be a Tensor"),
    ],
)
def test_bad_arguments_raise_clear_errors(op, make, exc, match):
    boxes, scores = _ok()
    args = make(boxes, scores)
    with pytest.raises(exc, match=match):
        OPS[op](*args)


@pytest.mark.parametrize("op", ["nms", "batched_nms", "soft_nms"])
@pytest.mark.parametrize(
    "bad", [(float("nan"), 0, 1, 1), (0, float("inf"), 1, 1), (5, 0, 1, 1), (0, 5, 1, 1)]
)
def test_bad_boxes_raise_value_error_naming_the_box(op, bad):
    boxes, scores = _ok()
    boxes[1] = torch.tensor(bad)
    with pytest.raises(ValueError, match=r"boxes\[1\] = .* is not a valid box"):
        OPS[op](boxes, scores)


def test_idxs_contract():
    boxes, scores = _ok()
    with pytest.raises(TypeError, match="idxs must be an integer tensor"):
        cvops.batched_nms(boxes, scores, torch.zeros(3), 0.5)
    with pytest.raises(TypeError, match="idxs must be an integer tensor"):
        cvops.batched_nms(boxes, scores, torch.zeros(3, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"expected idxs of shape \[3\]"):
        cvops.batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="idxs must be a Tensor"):
        cvops.batched_nms(boxes, scores, [0, 0, 0], 0.5)


def test_soft_nms_contract():
    boxes, scores = _ok()
    with pytest.raises(ValueError, match="method must be 'gaussian' or 'linear'"):
        cvops.soft_nms(boxes, scores, method="hard")
    with pytest.raises(ValueError, match="sigma must be finite and positive"):
        cvops.soft_nms(boxes, scores, sigma=0.0)
    with pytest.raises(ValueError, match="score_threshold must not be NaN"):
        cvops.soft_nms(boxes, scores, score_threshold=float("nan"))
    with pytest.raises(ValueError, match="method must be 0"):
        torch.ops.cvops.soft_nms(boxes, scores, 0.3, 0.5, 0.001, 7)


# ----------------------------------------------------------------------------------------
# Properties of greedy NMS on random small inputs.
# ----------------------------------------------------------------------------------------

coord = st.floats(min_value=-50, max_value=50, allow_nan=False, width=32)
size = st.floats(min_value=0, max_value=40, allow_nan=False, width=32)
box = st.tuples(coord, coord, size, size)


@settings(max_examples=50, deadline=None)
@given(
    boxes=st.lists(box, min_size=1, max_size=40),
    threshold=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    data=st.data(),
)
def test_nms_properties(boxes, threshold, data):
    t = torch.tensor(boxes, dtype=torch.float32)
    b = torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], 1)
    n = b.shape[0]
    scores = torch.tensor(
        data.draw(st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.5]), min_size=n, max_size=n))
    )
    keep = cvops.nms(b, scores, threshold)
    kept = keep.tolist()
    # Sorted by (score desc, index asc), no duplicates.
    ranks = [(-float(scores[i]), i) for i in kept]
    assert ranks == sorted(ranks) and len(set(kept)) == len(kept)
    # No kept pair overlaps above the threshold.
    for a in range(len(kept)):
        if a + 1 < len(kept):
            others = torch.tensor(kept[a + 1 :])
            assert not bool((_pairwise_iou_row(b, kept[a], others).double() > threshold).any())
    # Every removed box overlaps a kept, higher-ranked box above the threshold.
    for j in set(range(n)) - set(kept):
        higher = [i for i in kept if (-float(scores[i]), i) < (-float(scores[j]), j)]
        assert higher, j
        iou = _pairwise_iou_row(b, j, torch.tensor(higher)).double()
        assert bool((iou > threshold).any()), j
    # batched_nms with one class is nms; with a class per box it keeps everything.
    same = torch.zeros(n, dtype=torch.int64)
    assert cvops.batched_nms(b, scores, same, threshold).tolist() == kept
    alone = torch.arange(n)
    assert sorted(cvops.batched_nms(b, scores, alone, threshold).tolist()) == list(range(n))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(129, 600),
    clusters=st.integers(1, 8),
    spread=st.sampled_from([1.0, 50.0, 1000.0, 1e5]),
    small=st.sampled_from([0.0, 1.0, 10.0]),
    large=st.sampled_from([5.0, 100.0, 3000.0]),
    threshold=st.sampled_from([0.0, 0.2, 0.5, 0.8]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_grid_path_matches_torchvision(seed, n, clusters, spread, small, large, threshold, dtype):
    # Inputs above the brute-force size go through the grid hierarchy: clustered boxes with
    # mixed scales (several levels), offsets far from the origin, zero-size boxes.
    from torchvision.ops import nms as tv_nms

    g = torch.Generator().manual_seed(seed)
    centers = (torch.rand(clusters, 2, generator=g, dtype=torch.float64) - 0.5) * spread
    which = torch.randint(0, clusters, (n,), generator=g)
    xy = centers[which] + torch.randn(n, 2, generator=g, dtype=torch.float64) * spread * 0.05
    wh = small + torch.rand(n, 2, generator=g, dtype=torch.float64) ** 3 * large
    wh[torch.rand(n, generator=g) < 0.05] = 0
    boxes = torch.cat([xy, xy + wh], 1).to(dtype)
    scores = torch.randperm(n, generator=g).to(dtype)
    torch.testing.assert_close(
        cvops.nms(boxes, scores, threshold), tv_nms(boxes, scores, threshold)
    )
