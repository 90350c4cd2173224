"""Detection components: hand-computed values, and torchvision's components on the same
inputs (box coder, anchors, matcher, sampler, transform, mask pasting, RPN, Fast R-CNN loss)."""

import math

import pytest
import torch
import torchvision.models.detection._utils as tvu
import torchvision.models.detection.anchor_utils as tva
import torchvision.models.detection.roi_heads as tvroi
import torchvision.models.detection.rpn as tvrpn
import torchvision.models.detection.transform as tvt
from torchvision.models.detection.image_list import ImageList as TVImageList

from cvops.models.detection import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    GeneralizedRCNNTransform,
    ImageList,
    Matcher,
    RegionProposalNetwork,
    RPNHead,
    fastrcnn_loss,
    paste_masks_in_image,
)


def random_boxes(n, size=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------- box coder


def test_box_coder_hand_values():
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 20.0, 10.0]])
    rpn = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt, proposals)
    torch.testing.assert_close(rpn, torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0, math.log(2), 0]]))
    roi = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt, proposals)
    torch.testing.assert_close(roi, torch.tensor([[5.0, 5, 0, 0], [5, 0, 5 * math.log(2), 0]]))


def test_box_coder_round_trip_and_clip():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchors, gt = random_boxes(50, seed=1), random_boxes(50, seed=2)
    deltas = coder.encode([gt], [anchors])[0]
    torch.testing.assert_close(coder.decode(deltas, [anchors])[:, 0], gt, atol=1e-4, rtol=0)
    # log-size deltas are clamped at log(1000 / 16) before the exponential
    huge = torch.tensor([[0.0, 0.0, 1e3, 1e3]])
    box = coder.decode_single(huge, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    side = 2.0 * 1000 / 16
    torch.testing.assert_close(
        box, torch.tensor([[1 - side / 2, 1 - side / 2, 1 + side / 2, 1 + side / 2]])
    )


def test_box_coder_matches_torchvision():
    w = (10.0, 10.0, 5.0, 5.0)
    ours, ref = BoxCoder(w), tvu.BoxCoder(w)
    anchors, gt = (
        [random_boxes(30, seed=3), random_boxes(20, seed=4)],
        [random_boxes(30, seed=5), random_boxes(20, seed=6)],
    )
    for a, b in zip(ours.encode(gt, anchors), ref.encode(gt, anchors)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    codes = torch.randn(50, 4 * 3, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(
        ours.decode(codes, anchors), ref.decode(codes, anchors), atol=1e-4, rtol=0
    )


# ---------------------------------------------------------------- anchors


def test_anchors_for_a_tiny_feature_map():
    gen = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),))
    assert gen.num_anchors_per_location() == [3]
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    (anchors,) = gen(images, [torch.zeros(1, 8, 2, 2)])  # stride 32
    cell = torch.tensor([[-23.0, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    shifts = torch.tensor([[0.0, 0], [32, 0], [0, 32], [32, 32]]).repeat(1, 2)  # x fastest
    expected = (shifts[:, None, :] + cell[None]).reshape(-1, 4)
    torch.testing.assert_close(anchors, expected)


def test_anchors_match_torchvision():
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128))
    ratios = ((0.5, 1.0, 2.0),) * 3
    tensors = torch.zeros(2, 3, 96, 128)
    feats = [torch.zeros(2, 4, 96 // s, 128 // s) for s in (8, 16, 32)]
    ours = AnchorGenerator(sizes, ratios)(ImageList(tensors, [(96, 128), (80, 100)]), feats)
    ref = tva.AnchorGenerator(sizes, ratios)(TVImageList(tensors, [(96, 128), (80, 100)]), feats)
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- matcher, sampler


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.4, 0.1, 0.2, 0.5], [0.3, 0.65, 0.2, 0.25, 0.65]])
    plain = Matcher(0.7, 0.3)(iou.clone())
    # pred0 -> gt0; pred1 and pred4 between thresholds (-2); pred2, pred3 below (-1)
    assert plain.tolist() == [0, -2, -1, -1, -2]
    low = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou.clone())
    # gt1's best IoU 0.65 is shared by pred1 and pred4 (a tie): both get their best match
    assert low.tolist() == [0, 1, -1, -1, 1]
    with pytest.raises(ValueError, match="ground-truth"):
        Matcher(0.7, 0.3)(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)


@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_matches_torchvision(low_quality):
    iou = torch.rand(6, 300, generator=torch.Generator().manual_seed(7))
    iou[2, 17] = iou[2].max()  # a tie for gt 2's best
    ours = Matcher(0.7, 0.3, low_quality)(iou.clone())
    ref = tvu.Matcher(0.7, 0.3, low_quality)(iou.clone())
    assert torch.equal(ours, ref)


def test_sampler_counts():
    labels = torch.cat([torch.ones(10), torch.zeros(100), -torch.ones(20)]).long()
    pos, neg = BalancedPositiveNegativeSampler(16, 0.25)([labels])
    assert pos[0].dtype == torch.uint8 and int(pos[0].sum()) == 4 and int(neg[0].sum()) == 12
    assert bool((labels[pos[0].bool()] >= 1).all()) and bool((labels[neg[0].bool()] == 0).all())
    few = torch.cat([torch.full((2,), 3), torch.zeros(100), -torch.ones(5)]).long()
    pos, neg = BalancedPositiveNegativeSampler(16, 0.25)([few])
    assert int(pos[0].sum()) == 2 and int(neg[0].sum()) == 14  # negatives fill the batch


def test_sampler_matches_torchvision_with_the_same_seed():
    g = torch.Generator().manual_seed(8)
    labels = [torch.randint(-1, 3, (500,), generator=g) for _ in range(2)]
    torch.manual_seed(123)
    ours = BalancedPositiveNegativeSampler(64, 0.25)(labels)
    torch.manual_seed(123)
    ref = tvu.BalancedPositiveNegativeSampler(64, 0.25)(labels)
    for a, b in zip(ours[0] + ours[1], ref[0] + ref[1]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- transform, masks

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _images_and_targets():
    g = torch.Generator().manual_seed(9)
    images = [torch.rand(3, 50, 70, generator=g), torch.rand(3, 64, 40, generator=g)]
    targets = []
    for img in images:
        h, w = img.shape[-2:]
        masks = (torch.rand(2, h, w, generator=g) > 0.5).to(torch.uint8)
        boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 20.0, 25.0]])
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


@pytest.mark.parametrize("training", [False, True])
def test_transform_matches_torchvision(training):
    images, targets = _images_and_targets()
    ours = GeneralizedRCNNTransform((80, 96), 120, MEAN, STD).train(training)
    ref = tvt.GeneralizedRCNNTransform((80, 96), 120, MEAN, STD).train(training)
    torch.manual_seed(5)
    a, ta = ours(images, targets)
    torch.manual_seed(5)
    b, tb = ref(images, targets)
    assert a.image_sizes == b.image_sizes
    assert a.tensors.shape == b.tensors.shape and a.tensors.shape[-1] % 32 == 0
    torch.testing.assert_close(a.tensors, b.tensors)
    for x, y in zip(ta, tb):
        assert set(x) == set(y)
        for k in y:
            torch.testing.assert_close(x[k], y[k])
    assert targets[0]["boxes"][0, 2].item() == 30.0  # the caller's targets are untouched


def test_postprocess_and_paste_masks_match_torchvision():
    g = torch.Generator().manual_seed(10)
    boxes = torch.tensor(
        [[3.2, 4.7, 40.1, 30.9], [-5.0, 10.0, 20.0, 70.0], [50.0, 50.0, 90.0, 59.0]]
    )
    masks = torch.rand(3, 1, 28, 28, generator=g)
    ours = paste_masks_in_image(masks, boxes, (60, 80))
    ref = tvroi.paste_masks_in_image(masks, boxes, (60, 80))
    assert ours.shape == (3, 1, 60, 80)
    torch.testing.assert_close(ours, ref)
    result = [{"boxes": boxes.clone(), "masks": masks}]
    out = (
        GeneralizedRCNNTransform(80, 120, MEAN, STD)
        .eval()
        .postprocess(result, [(60, 80)], [(30, 40)])
    )
    torch.testing.assert_close(out[0]["boxes"], boxes / 2)
    assert out[0]["masks"].shape == (3, 1, 30, 40)
    assert paste_masks_in_image(masks[:0], boxes[:0], (30, 40)).shape == (0, 1, 30, 40)


# ---------------------------------------------------------------- RPN, Fast R-CNN loss


def _rpns(training):
    sizes, ratios = ((16,), (32,)), ((0.5, 1.0, 2.0),) * 2
    head = RPNHead(8, 3)
    args = (0.7, 0.3, 64, 0.5, dict(training=100, testing=50), dict(training=60, testing=30), 0.7)
    ours = RegionProposalNetwork(AnchorGenerator(sizes, ratios), head, *args)
    ref_head = tvrpn.RPNHead(8, 3)
    ref_head.load_state_dict(head.state_dict(), strict=True)
    ref = tvrpn.RegionProposalNetwork(tva.AnchorGenerator(sizes, ratios), ref_head, *args)
    return ours.train(training), ref.train(training)


@pytest.mark.parametrize("training", [False, True])
def test_rpn_matches_torchvision(training):
    g = torch.Generator().manual_seed(11)
    ours, ref = _rpns(training)
    with torch.no_grad():
        for p in ours.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        ref.head.load_state_dict(ours.head.state_dict())
    feats = {"0": torch.randn(2, 8, 16, 16, generator=g), "1": torch.randn(2, 8, 8, 8, generator=g)}
    tensors = torch.zeros(2, 3, 128, 128)
    sizes = [(128, 120), (100, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 20.0, 100.0, 110.0]])}] * 2
    torch.manual_seed(3)
    boxes, losses = ours(ImageList(tensors, sizes), feats, targets if training else None)
    torch.manual_seed(3)
    ref_boxes, ref_losses = ref(TVImageList(tensors, sizes), feats, targets if training else None)
    for a, b in zip(boxes, ref_boxes):
        assert a.shape == b.shape and a.shape[0] > 0
        torch.testing.assert_close(a, b)
    assert set(losses) == set(ref_losses)
    for k in ref_losses:
        torch.testing.assert_close(losses[k], ref_losses[k])


def test_fastrcnn_loss_matches_torchvision_and_beta():
    g = torch.Generator().manual_seed(12)
    logits, deltas = torch.randn(20, 5, generator=g), torch.randn(20, 20, generator=g)
    labels = [torch.randint(0, 5, (12,), generator=g), torch.randint(0, 5, (8,), generator=g)]
    targets = [torch.randn(12, 4, generator=g), torch.randn(8, 4, generator=g)]
    ours = fastrcnn_loss(logits, deltas, labels, targets)
    ref = tvroi.fastrcnn_loss(logits, deltas, labels, targets)
    torch.testing.assert_close(ours, ref)
    # beta 1 (the paper's smooth-L1), by hand
    lab, tgt = torch.cat(labels), torch.cat(targets)
    fg = lab > 0
    picked = deltas.reshape(20, 5, 4)[fg, lab[fg]]
    d = (picked - tgt[fg]).abs()
    expected = torch.where(d < 1, 0.5 * d**2, d - 0.5).sum() / 20
    torch.testing.assert_close(
        fastrcnn_loss(logits, deltas, labels, targets, beta=1.0)[1], expected
    )
