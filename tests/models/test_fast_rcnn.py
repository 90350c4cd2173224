"""Fast R-CNN VGG16: parameter counts and shapes against the paper, the VGG16 weights
transplant (outputs compared with torchvision's VGG16 trunk), the RoI sampler on a hand-made
case, the multi-task loss against a hand computation, a training run that lowers the loss,
and the proposal sources and training-command hooks."""

import math

import pytest
import torch
import torchvision

import cvops.models as cm
from cvops.models.detection.fast_rcnn import FastRCNNRoIHeads
from cvops.models.detection.proposals import (
    FileProposals,
    FlipWithProposals,
    JitterProposals,
    proposal_source,
    save_proposals,
)
from cvops.models.detection.roi_heads import fastrcnn_loss
from cvops.ops import box_iou
from cvops.train.paper_detector_hooks import build_paper_detector, with_proposals


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread avoids OpenMP oversubscription on a shared machine
    (measured 10x faster under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vgg16_conv_params():
    """Sum of 3x3 conv weights + biases of VGG16 (configuration D), from the paper's table."""
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, cin = 0, 3
    for c in widths:
        total += 9 * cin * c + c
        cin = c
    return total


def test_parameter_counts_match_the_paper():
    k = 21  # PASCAL VOC: 20 classes + background
    fc6 = 512 * 7 * 7 * 4096 + 4096  # RoI pool 7x7 over conv5_3's 512 channels
    fc7 = 4096 * 4096 + 4096
    expected = _vgg16_conv_params() + fc6 + fc7 + (4096 * k + k) + (4096 * 4 * k + 4 * k)
    with torch.device("meta"):
        model = cm.get_model("fast_rcnn_vgg16")
        tv = torchvision.models.vgg16()
    count = sum(p.numel() for p in model.parameters())
    assert count == expected == 134_690_729
    # VGG16 minus its 1000-way fc8, plus the two heads
    tv_count = sum(p.numel() for p in tv.parameters())
    assert count == tv_count - (4096 * 1000 + 1000) + 4096 * k + k + 4096 * 4 * k + 4 * k
    # the full VGG16 state_dict maps onto ours, names and shapes checked strictly (and
    # vgg16_bn's onto the batch_norm variant)
    model.load_vgg16_imagenet(tv.state_dict())
    with torch.device("meta"):
        bn = cm.get_model("fast_rcnn_vgg16", batch_norm=True)
        bn.load_vgg16_imagenet(torchvision.models.vgg16_bn().state_dict())
        vgg11 = torchvision.models.vgg11()
    with pytest.raises(ValueError, match="not a VGG16 state_dict"):
        model.load_vgg16_imagenet(vgg11.state_dict())


def test_vgg16_conv_trunk_equals_torchvision_with_transplanted_weights():
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    ref = make_layers(cfgs["D"]).eval()  # torchvision VGG16 ``features``
    ours = cm.detection.fast_rcnn.VGGConv5()
    ours.load_state_dict({"features." + k: v for k, v in ref.state_dict().items()}, strict=True)
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        expected, actual = ref[:30](x), ours.eval()(x)  # up to conv5_3 + ReLU: stride 16
    assert actual.shape == (1, 512, 4, 5)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def _small(num_classes=4, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("width", 1 / 16)
    return cm.get_model(
        "fast_rcnn_vgg16", num_classes=num_classes, min_size=96, max_size=96, **kwargs
    )


def _scene(seed=0):
    """Two images with bright rectangles (class = colour channel + 1) and their targets."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i, rects in enumerate(
        [[(8, 10, 40, 50, 0), (50, 40, 90, 88, 2)], [(20, 20, 70, 60, 1), (5, 60, 30, 90, 0)]]
    ):
        img = torch.rand(3, 96, 96, generator=g) * 0.2
        boxes, labels = [], []
        for x1, y1, x2, y2, c in rects:
            img[c, y1:y2, x1:x2] = 1.0
            boxes.append([x1, y1, x2, y2])
            labels.append(c + 1)
        t = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
        t["image_id"] = i + 1
        t["proposals"] = JitterProposals(num_jitter=8, num_random=16)(img, t)
        images.append(img)
        targets.append(t)
    return images, targets


def test_output_shapes():
    model = _small(num_classes=4).eval()
    images, targets = _scene()
    props = [t["proposals"] for t in targets]
    x = model.transform(images)[0].tensors
    feats = model.backbone(x)
    assert feats.shape == (2, model.backbone.out_channels, 6, 6)  # 96 / 16
    pooled = model.roi_heads.box_roi_pool({"0": feats}, props, None)
    assert pooled.shape == (sum(len(p) for p in props), model.backbone.out_channels, 7, 7)
    logits, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    assert logits.shape == (len(pooled), 4) and deltas.shape == (len(pooled), 16)
    with torch.no_grad():
        out = model(images, proposals=props)
    for o in out:
        n = len(o["scores"])
        assert o["boxes"].shape == (n, 4) and o["labels"].shape == (n,)
        assert ((o["labels"] >= 1) & (o["labels"] <= 3)).all()
        assert (o["scores"] > model.roi_heads.score_thresh).all()


def test_missing_proposals_is_a_clear_error():
    model = _small().eval()
    with pytest.raises(ValueError, match="needs region proposals"):
        model([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match=r"proposals\[0\] must be a Tensor\[N, 4\]"):
        model([torch.rand(3, 64, 64)], proposals=[torch.zeros(3, 5)])


def _boxes_with_iou(iou: float, n: int) -> torch.Tensor:
    """``n`` boxes of height 100 sharing the top-left corner of the box (0, 0, 100, 100) whose
    IoU with it is ``iou`` (width w: IoU = w / 100 for w <= 100)."""
    return torch.tensor([[0.0, 0.0, 100.0 * iou, 100.0]] * n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampler_takes_25_percent_foreground_and_background_in_0_1_to_0_5(seed):
    heads = FastRCNNRoIHeads(
        None, None, None, 0.5, 0.5, 16, 0.25, None, 0.05, 0.3, 100, bg_iou_lo=0.1
    )
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    proposals = torch.cat(
        [
            _boxes_with_iou(0.7, 10),  # foreground
            _boxes_with_iou(0.3, 10),  # background
            _boxes_with_iou(0.1, 10),  # background (0.1 is in [0.1, 0.5))
            _boxes_with_iou(0.05, 10),  # below 0.1: never sampled
        ]
    )
    torch.manual_seed(seed)
    props, _, labels, targets = heads.select_training_samples(
        [proposals], [{"boxes": gt, "labels": torch.tensor([3])}]
    )
    props, labels = props[0], labels[0]
    iou = box_iou(props, gt)[:, 0]
    assert len(props) == 16
    assert int((labels == 3).sum()) == 4  # 25% of 16 (the ground truth box may be one of them)
    assert int((labels == 0).sum()) == 12
    assert (iou[labels == 3] >= 0.5).all()
    bg = iou[labels == 0]
    assert ((bg >= 0.1 - 1e-6) & (bg < 0.5)).all()
    # foreground regression targets: R-CNN's deltas scaled by 10, 10, 5, 5
    fg = labels == 3
    w = props[fg, 2] - props[fg, 0]
    expected_dw = 5 * torch.log(100.0 / w)
    torch.testing.assert_close(targets[0][fg, 2], expected_dw)


def test_multitask_loss_against_a_hand_computation():
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([2, 0, 1])
    deltas = torch.zeros(3, 12)
    deltas[0, 8:12] = torch.tensor([0.5, -2.0, 0.0, 1.5])  # class 2 of RoI 0
    deltas[1, :] = 7.0  # background: no box loss whatever the prediction
    deltas[2, 4:8] = torch.tensor([0.2, 0.2, 0.2, 0.2])
    targets = torch.zeros(3, 4)
    targets[2] = torch.tensor([0.2, 0.2, 1.4, -1.0])

    def log_softmax(row, k):
        return row[k] - math.log(sum(math.exp(v) for v in row))

    rows = logits.tolist()
    l_cls = -(log_softmax(rows[0], 2) + log_softmax(rows[1], 0) + log_softmax(rows[2], 1)) / 3

    def smooth_l1(d):  # beta 1 (the paper)
        return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5

    roi0 = smooth_l1(0.5) + smooth_l1(-2.0) + smooth_l1(0.0) + smooth_l1(1.5)
    roi2 = smooth_l1(0.0) + smooth_l1(0.0) + smooth_l1(-1.2) + smooth_l1(1.2)
    l_loc = (roi0 + roi2) / 3  # summed over foreground RoIs, divided by all sampled RoIs
    cls, loc = fastrcnn_loss(logits, deltas, [labels], [targets], beta=1.0)
    assert cls.item() == pytest.approx(l_cls, rel=1e-6)
    assert loc.item() == pytest.approx(l_loc, rel=1e-6)
    # the model uses beta 1, and lambda scales the box term
    images, ts = _scene()
    losses = {}
    for lam in (1.0, 2.5):
        model = _small(box_loss_weight=lam, dropout=0.0).train()
        assert model.roi_heads.box_loss_beta == 1.0
        torch.manual_seed(5)
        losses[lam] = model(images, ts)
    assert losses[2.5]["loss_box_reg"].item() == pytest.approx(
        2.5 * losses[1.0]["loss_box_reg"].item(), rel=1e-5
    )
    assert losses[2.5]["loss_classifier"].item() == pytest.approx(
        losses[1.0]["loss_classifier"].item(), rel=1e-6
    )


def train_steps(model, images, targets, steps, lr=3e-3):
    """Adam steps on the summed losses (seeded per step); the loss dicts as floats."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for step in range(steps):
        torch.manual_seed(step)
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


def test_training_steps_reduce_the_loss():
    images, targets = _scene()
    model = _small(dropout=0.0, box_batch_size_per_image=32)
    history = [sum(losses.values()) for losses in train_steps(model, images, targets, 45)]
    first, last = sum(history[:3]) / 3, sum(history[-5:]) / 5
    assert last < 0.75 * first, history


def test_proposal_file_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "props.json")
    boxes = {3: torch.tensor([[1.0, 2.0, 30.5, 40.25]]), 7: torch.zeros(0, 4)}
    save_proposals(path, boxes)
    source = proposal_source(path)
    assert isinstance(source, FileProposals)
    torch.testing.assert_close(source(torch.rand(3, 8, 8), {"image_id": 3}), boxes[3])
    assert source(None, {"image_id": 7}).shape == (0, 4)
    with pytest.raises(KeyError, match="image 5 has no proposals"):
        source(None, {"image_id": 5})
    with pytest.raises(ValueError, match="--proposals must be"):
        proposal_source("edge_boxes")
    (tmp_path / "bad.json").write_text('{"1": [[10, 10, 5, 20]]}')
    with pytest.raises(ValueError, match="x2 < x1"):
        FileProposals(str(tmp_path / "bad.json"))


def test_jitter_proposals_are_deterministic_and_cover_the_ground_truth():
    image = torch.rand(3, 60, 80)
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "image_id": 4}
    source = JitterProposals(num_jitter=16, num_random=8)
    a, b = source(image, target), source(image, target)
    torch.testing.assert_close(a, b)
    assert (a[:, 0] >= 0).all() and (a[:, 2] <= 80).all() and (a[:, 3] <= 60).all()
    iou = box_iou(a, target["boxes"])[:, 0]
    assert (iou >= 0.5).sum() >= 2 and (iou < 0.5).sum() >= 2


def test_flip_moves_boxes_and_proposals_with_the_image():
    image = torch.arange(12.0).reshape(1, 3, 4).repeat(3, 1, 1)
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]]),
        "proposals": torch.tensor([[1.0, 0, 3, 3]]),
    }
    flipped, t = FlipWithProposals(1.0)(image, target)
    torch.testing.assert_close(flipped, image.flip(-1))
    torch.testing.assert_close(t["boxes"], torch.tensor([[3.0, 0.0, 4.0, 2.0]]))
    torch.testing.assert_close(t["proposals"], torch.tensor([[1.0, 0.0, 3.0, 3.0]]))


def test_training_command_hooks():
    from cvops.train.detection import DetectorAdapter, family_of

    assert family_of("fast_rcnn_vgg16") == "fast_rcnn" and family_of("rcnn") == "rcnn"
    model = build_paper_detector("fast_rcnn_vgg16", 4, min_size=96, max_size=96, width=1 / 16)
    assert model.transform.min_size == (96,)
    with pytest.raises(ValueError, match="--anchor-sizes"):
        build_paper_detector("fast_rcnn_vgg16", 4, anchor_sizes=[32])
    frozen = build_paper_detector("fast_rcnn_vgg16", 4, trainable_layers=3, width=1 / 16)
    convs = [m for m in frozen.backbone.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs[:5]] == [False] * 4 + [True]
    images, targets = _scene()
    data = [
        (img, {k: v for k, v in t.items() if k != "proposals"}) for img, t in zip(images, targets)
    ]
    train, val = with_proposals(data, data, "jitter", hflip=0.5)
    image, target = val[0]
    torch.testing.assert_close(target["proposals"], JitterProposals()(image, data[0][1]))
    assert len(train) == 2 and "proposals" in train[1][1]
    adapter = DetectorAdapter(model).eval()
    with torch.no_grad():
        out = adapter(([image], [target]))  # evaluation passes the targets' proposals
    assert set(out[0]) == {"boxes", "labels", "scores"}
