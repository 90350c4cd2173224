"""Panoptic FPN (cvops.models.detection.panoptic_fpn): the semantic head's structure and
parameter count (hand-computed), the registered builder, output shapes, the semantic targets and
loss, and a few training steps on a fixed batch lowering the joint loss."""

import pytest
import torch
from torch import nn

from cvops.models import get_model
from cvops.models.detection import (
    AnchorGenerator,
    PanopticFPN,
    SemanticFPNHead,
    maskrcnn_resnet50_fpn,
)
from cvops.models.detection.panoptic_fpn import IGNORE_INDEX, semantic_loss, semantic_targets
from cvops.models.segmentation.fpn import resnet_fpn_backbone
from tests.conftest import requires_ops

THINGS, STUFF = 3, 2


def semantic_head_params(in_ch=256, ch=128, classes=54):
    # per level k = 0..3: max(1, k) x (3x3 conv without bias + GroupNorm(weight, bias))
    # = 1 + 1 + 2 + 3 = 7 blocks, the first of each level from in_ch, the others from ch;
    # then the 1x1 predictor with bias
    first = 9 * in_ch * ch + 2 * ch
    other = 9 * ch * ch + 2 * ch
    return 4 * first + 3 * other + ch * classes + classes


def test_semantic_head_shapes_and_parameter_count():
    head = SemanticFPNHead(54)
    assert sum(p.numel() for p in head.parameters()) == semantic_head_params() == 1_630_774
    # P2..P5 of a 64 x 96 input (strides 4..32): logits at 1/4 scale
    feats = [torch.randn(2, 256, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    head = SemanticFPNHead(3, channels=32, num_groups=8)
    assert head(feats).shape == (2, 3, 16, 24)
    # level k upsamples k times (P2 none)
    ups = [sum(isinstance(m, nn.Upsample) for m in h) for h in head.scale_heads]
    assert ups == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="levels"):
        head(feats[:3])
    with pytest.raises(ValueError, match="num_groups"):
        SemanticFPNHead(3, channels=30)


def test_registered_builder_is_mask_rcnn_plus_the_semantic_head():
    with torch.device("meta"):
        model = get_model("panoptic_fpn_resnet50")
        mask_rcnn = maskrcnn_resnet50_fpn(num_classes=81)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert isinstance(model, PanopticFPN) and (model.num_things, model.num_stuff) == (80, 53)
    assert count(model) == count(mask_rcnn) + semantic_head_params()
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    # the Mask R-CNN state_dict keys are unchanged; the head adds "semantic_head."
    extra = set(model.state_dict()) - set(mask_rcnn.state_dict())
    assert extra and all(k.startswith("semantic_head.") for k in extra)
    with pytest.raises(ValueError, match="num_stuff"):
        get_model("panoptic_fpn_resnet50", num_stuff=0)
    with pytest.raises(ValueError, match="num_things and num_stuff"):
        get_model("panoptic_fpn_resnet50", num_classes=4)


def tiny_model(**kwargs):
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    sizes = ((16,), (32,), (64,), (128,), (256,))
    return PanopticFPN(
        backbone,
        THINGS,
        STUFF,
        min_size=64,
        max_size=96,
        rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5),
        rpn_post_nms_top_n_train=50,
        rpn_post_nms_top_n_test=50,
        box_batch_size_per_image=16,
        box_detections_per_img=10,
        **kwargs,
    )


def sample(h=48, w=64, seed=0):
    """An image with a bright square (thing label 1) on two stuff bands."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g) * 0.2
    sem = torch.ones(h, w, dtype=torch.int64)
    sem[h // 2 :] = 2
    image[:, h // 2 :] += 0.5
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[0, 8:28, 10:34] = 1
    image[:, 8:28, 10:34] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    sem[mask[0].bool()] = 0
    sem[0, :] = IGNORE_INDEX
    target = {
        "boxes": torch.tensor([[10.0, 8.0, 34.0, 28.0]]),
        "labels": torch.tensor([1]),
        "masks": mask,
        "sem_seg": sem,
    }
    return image, target


@requires_ops
def test_eval_outputs_at_the_original_size():
    model = tiny_model(panoptic_score_thresh=0.0, panoptic_stuff_area=1).eval()
    images = [sample(48, 64)[0], sample(40, 56, seed=1)[0]]
    with torch.no_grad():
        outputs = model(images)
    for out, image in zip(outputs, images):
        h, w = image.shape[1:]
        assert {"boxes", "labels", "scores", "masks"} <= set(out)
        assert out["sem_seg"].shape == (STUFF + 1, h, w)
        ids = out["panoptic_seg"]
        assert ids.shape == (h, w) and ids.dtype == torch.int64
        # the COCO panoptic convention: ids 1..n in segments_info, areas = pixel counts
        assert [s["id"] for s in out["segments_info"]] == list(
            range(1, len(out["segments_info"]) + 1)
        )
        for s in out["segments_info"]:
            assert int((ids == s["id"]).sum()) == s["area"] > 0
            assert 1 <= s["category_id"] <= THINGS + STUFF
            assert s["isthing"] == (s["category_id"] <= THINGS)
        assert set(torch.unique(ids).tolist()) <= {0} | {s["id"] for s in out["segments_info"]}


def test_semantic_targets_resize_pad_and_loss():
    sem = torch.tensor([[0, 1], [2, IGNORE_INDEX]])
    t = semantic_targets([{"sem_seg": sem}], [(4, 4)], (4, 6))
    assert t.shape == (1, 4, 6)
    assert torch.equal(t[0, :, :4], sem.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert bool((t[0, :, 4:] == IGNORE_INDEX).all())  # padding is ignored
    logits = torch.zeros(1, 3, 4, 6, requires_grad=True)
    # uniform logits over 3 classes: cross-entropy log(3) on the 12 labeled pixels
    assert float(semantic_loss(logits, t).detach()) == pytest.approx(
        torch.log(torch.tensor(3.0)).item()
    )
    loss = semantic_loss(logits, torch.full_like(t, IGNORE_INDEX))
    assert float(loss.detach()) == 0.0
    loss.backward()  # every pixel unlabeled: 0 with a gradient, not NaN


@requires_ops
def test_training_lowers_the_joint_loss():
    model = tiny_model(semantic_loss_weight=0.5).train()
    images, targets = zip(*[sample(48, 64, 0), sample(48, 64, 1)])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    losses = []
    for _ in range(5):
        loss_dict = model(list(images), list(targets))
        assert set(loss_dict) == {
            "loss_classifier",
            "loss_box_reg",
            "loss_mask",
            "loss_objectness",
            "loss_rpn_box_reg",
            "loss_sem_seg",
        }
        loss = sum(loss_dict.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append((float(loss), float(loss_dict["loss_sem_seg"])))
    assert losses[-1][0] < 0.8 * losses[0][0], losses
    assert losses[-1][1] < losses[0][1], losses  # the semantic branch learns too
    with pytest.raises(ValueError, match="sem_seg"):
        model([images[0]], [{k: v for k, v in targets[0].items() if k != "sem_seg"}])
