"""MultiScaleRoIAlign against torchvision's on random FPN-shaped inputs."""

import pytest
import torch
import torchvision
from torchvision.ops.poolers import initLevelMapper

import cvops
from cvops.ops.poolers import MultiScaleRoIAlign, infer_scale, map_levels
from tests.conftest import devices, requires_ops

pytestmark = requires_ops

NAMES = ["0", "1", "2", "3"]


def _fpn(image_shapes, channels=4, strides=(4, 8, 16, 32), dtype=torch.float32, device="cpu"):
    """Features of a padded batch (sizes rounded up to 32) plus an extra 'pool' level."""
    h = -(-max(s[0] for s in image_shapes) // 32) * 32
    w = -(-max(s[1] for s in image_shapes) // 32) * 32
    n = len(image_shapes)
    feats = {
        str(i): torch.randn(n, channels, h // st, w // st, dtype=dtype, device=device)
        for i, st in enumerate(strides)
    }
    feats["pool"] = torch.randn(n, channels, h // 64, w // 64, dtype=dtype, device=device)
    return feats


def _boxes(image_shapes, per_image=40, dtype=torch.float32, device="cpu", seed=0):
    """Boxes of every FPN level: sqrt(area) from ~8 to ~700 pixels, inside each image."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for ih, iw in image_shapes:
        size = torch.exp(torch.empty(per_image).uniform_(2.0, 6.6, generator=g))
        aspect = torch.exp(torch.empty(per_image).uniform_(-0.7, 0.7, generator=g))
        bw = (size * aspect).clamp(max=iw - 1)
        bh = (size / aspect).clamp(max=ih - 1)
        x1 = torch.rand(per_image, generator=g) * (iw - bw)
        y1 = torch.rand(per_image, generator=g) * (ih - bh)
        out.append(torch.stack([x1, y1, x1 + bw, y1 + bh], 1).to(dtype=dtype, device=device))
    return out


SHAPES = [
    [(800, 1024)],
    [(800, 1024), (640, 900), (512, 700)],  # different image sizes in one batch
    [(480, 640), (480, 600)],
]


@pytest.mark.parametrize("image_shapes", SHAPES)
@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 2), ((14, 10), 0)])
def test_matches_torchvision(image_shapes, output_size, sampling_ratio):
    feats = _fpn(image_shapes)
    boxes = _boxes(image_shapes)
    ours = MultiScaleRoIAlign(NAMES, output_size, sampling_ratio)
    ref = torchvision.ops.MultiScaleRoIAlign(NAMES, output_size, sampling_ratio)
    out = ours(feats, boxes, image_shapes)
    expected = ref(feats, boxes, image_shapes)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert ours.scales == ref.scales
    # Every level is used.
    levels = map_levels(torch.cat(boxes), ours.k_min, ours.k_max)
    assert set(levels.tolist()) == {0, 1, 2, 3}


def test_level_mapper_matches_torchvision_at_boundaries():
    # sqrt(area) exactly at the level boundaries 112, 224, 448 and around them.
    s = torch.tensor([1.0, 56, 111.9999, 112, 112.0001, 224, 447.99, 448, 896, 5000])
    boxes = torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], 1)
    ref = initLevelMapper(2, 5)([boxes])
    assert torch.equal(map_levels(boxes, 2, 5), ref)
    assert torch.equal(map_levels(boxes, 3, 4, 112, 3), initLevelMapper(3, 4, 112, 3)([boxes]))


def test_infer_scale_matches_torchvision():
    from torchvision.ops.poolers import _infer_scale

    for fs, im in [((200, 256), (800, 1024)), ((25, 32), (800, 1000)), ((13, 17), (800, 1066))]:
        assert infer_scale(fs, im) == _infer_scale(torch.empty(1, 1, *fs), list(im))


def test_single_level_and_canonical_options():
    image_shapes = [(512, 512), (448, 512)]
    feats = _fpn(image_shapes)
    boxes = _boxes(image_shapes, per_image=10)
    for names, kw in [(["2"], {}), (NAMES, dict(canonical_scale=112, canonical_level=3))]:
        ours = MultiScaleRoIAlign(names, 5, 2, **kw)(feats, boxes, image_shapes)
        ref = torchvision.ops.MultiScaleRoIAlign(names, 5, 2, **kw)(feats, boxes, image_shapes)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_aligned_matches_per_level_torchvision_roi_align():
    image_shapes = [(640, 800), (600, 704)]
    feats = _fpn(image_shapes)
    boxes = _boxes(image_shapes)
    out = MultiScaleRoIAlign(NAMES, 7, 2, aligned=True)(feats, boxes, image_shapes)
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
    levels = initLevelMapper(2, 5)(boxes)
    expected = torch.zeros_like(out)
    for lvl, name in enumerate(NAMES):
        idx = torch.where(levels == lvl)[0]
        scale = 1.0 / 2 ** (lvl + 2)
        expected[idx] = torchvision.ops.roi_align(feats[name], rois[idx], 7, scale, 2, True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, MultiScaleRoIAlign(NAMES, 7, 2)(feats, boxes, image_shapes))


@pytest.mark.parametrize("device", devices())
def test_gradients_flow_to_every_level(device):
    image_shapes = [(800, 1024), (700, 900)]
    feats = {k: v.requires_grad_() for k, v in _fpn(image_shapes, device=device).items()}
    boxes = _boxes(image_shapes, device=device)
    pooler = MultiScaleRoIAlign(NAMES, 7, 2)
    out = pooler(feats, boxes, image_shapes)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_feats = {k: v.detach().clone().requires_grad_() for k, v in feats.items()}
    ref = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)(ref_feats, boxes, image_shapes)
    ref.backward(grad)
    for name in NAMES:
        assert feats[name].grad is not None and feats[name].grad.abs().sum() > 0, name
        torch.testing.assert_close(feats[name].grad, ref_feats[name].grad, atol=1e-4, rtol=1e-4)
    assert feats["pool"].grad is None  # not in featmap_names


def test_rescales_when_the_batch_size_changes():
    pooler = MultiScaleRoIAlign(NAMES, 7, 2)
    for image_shapes in ([(800, 1024)], [(400, 512)]):
        feats = _fpn(image_shapes)
        boxes = _boxes(image_shapes, per_image=12)
        ref = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)(feats, boxes, image_shapes)
        torch.testing.assert_close(pooler(feats, boxes, image_shapes), ref, atol=1e-5, rtol=1e-5)


def test_empty_boxes_and_bad_arguments():
    image_shapes = [(256, 256), (256, 256)]
    feats = _fpn(image_shapes)
    pooler = cvops.ops.MultiScaleRoIAlign(NAMES, 3, 2)
    out = pooler(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], image_shapes)
    assert out.shape == (0, 4, 3, 3)
    with pytest.raises(ValueError, match="featmap_names"):
        MultiScaleRoIAlign(["p2"], 3, 2)(feats, [torch.zeros(0, 4)] * 2, image_shapes)
    with pytest.raises(ValueError, match="image_shapes"):
        pooler(feats, [torch.zeros(1, 4)] * 2, [])
    with pytest.raises(ValueError, match="list of Tensor"):
        pooler(feats, torch.zeros(2, 5), image_shapes)
    assert "featmap_names=['0', '1', '2', '3']" in repr(pooler)


def test_every_box_is_pooled_even_with_non_finite_coordinates():
    # the result is not zero-filled up front: every row, a non-finite box's included, must be
    # written by the RoI Align of its level
    image_shapes = [(480, 640)]
    feats = _fpn(image_shapes)
    boxes = _boxes(image_shapes, per_image=6)
    boxes[0][2, 1] = float("nan")
    boxes[0][4, 3] = float("inf")
    levels = map_levels(boxes[0], 2, 5, 224.0, 4)
    assert ((levels >= 0) & (levels < 4)).all()
    out = MultiScaleRoIAlign(NAMES, 7, 2)(feats, boxes, image_shapes)
    finite = [0, 1, 3, 5]
    expected = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)(feats, boxes, image_shapes)
    torch.testing.assert_close(out[finite], expected[finite])
    for i in (2, 4):  # each written by the RoI Align of its level
        level = int(levels[i])
        rois = torch.cat([torch.zeros(1, 1), boxes[0][i : i + 1]], 1)
        alone = cvops.roi_align(feats[NAMES[level]], rois, 7, 1.0 / 2 ** (level + 2), 2, False)
        torch.testing.assert_close(out[i], alone[0], equal_nan=True)
