"""R-CNN: parameter counts and shapes against the paper, the warp with context, the SVM stage
(hinge loss, hard-negative mining) and the ridge box regressor on hand-made features, the
online losses against hand computations, a training run that lowers the loss, and the
selective-search missing-dependency error."""

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import cvops.models as cm
from cvops.models.detection.box_coder import BoxCoder
from cvops.models.detection.proposals import JitterProposals, SelectiveSearch, proposal_source
from cvops.models.detection.rcnn import RCNN, context_boxes, hinge_loss, warp_regions
from cvops.models.detection.rcnn_solvers import (
    fit_linear_svm,
    fit_ridge,
    fit_svms_and_regressors,
    train_svm_hard_negatives,
)
from cvops.ops import box_iou

from .test_fast_rcnn import _scene, _vgg16_conv_params, train_steps


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(**kwargs):
    torch.manual_seed(0)
    return cm.get_model("rcnn", num_classes=4, width=1 / 16, crop_size=32, **kwargs)


def test_parameter_counts_match_the_paper():
    k = 20  # PASCAL VOC object classes
    pool5 = 512 * 7 * 7  # VGG16 pool5 at 224 px crops
    fc = (pool5 * 4096 + 4096) + (4096 * 4096 + 4096)
    finetune = 4096 * (k + 1) + (k + 1)  # the (K+1)-way softmax used to fine-tune the CNN
    svms = k * (4096 + 1)  # one linear SVM (weights + bias) per class on fc7
    regressors = k * 4 * (pool5 + 1)  # ridge regressors on pool5, 4 outputs per class
    with torch.device("meta"):
        model = cm.get_model("rcnn")
    count = sum(p.numel() for p in model.parameters())
    assert count == _vgg16_conv_params() + fc + finetune + svms + regressors == 136_435_641
    assert model.context == 16 and model.crop_size == 224  # round(16 * 224 / 227)
    with torch.device("meta"):
        model.load_vgg16_imagenet(torchvision.models.vgg16().state_dict())  # strict


def test_output_shapes():
    model = _small().eval()
    images, targets = _scene()
    props = targets[0]["proposals"]
    crops = warp_regions(model.normalize(images[0]), props, 32, model.context)
    assert crops.shape == (len(props), 3, 32, 32)
    pool5, fc7 = model.region_features(images[0], props)
    assert pool5.shape == (len(props), model.cnn.pool5_dim) and fc7.shape == (len(props), 256)
    assert model.svm(fc7).shape == (len(props), 3)
    assert model.box_regressor(pool5).shape == (len(props), 12)
    with torch.no_grad():
        out = model(images, targets)  # the targets' proposals
    for o in out:
        n = len(o["scores"])
        assert o["boxes"].shape == (n, 4) and ((o["labels"] >= 1) & (o["labels"] <= 3)).all()


def test_warp_adds_context_and_matches_a_bilinear_resize():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 30.0]])
    # 16 px of context at 227: the box fills the central 195 px
    grown = context_boxes(boxes, 227, 16)
    scale = 227 / 195
    torch.testing.assert_close(
        grown, torch.tensor([[25 - 15 * scale, 25 - 5 * scale, 25 + 15 * scale, 25 + 5 * scale]])
    )
    # without context, warping the whole image is torch's bilinear resize (align_corners=False)
    image = torch.rand(3, 24, 40)
    whole = torch.tensor([[0.0, 0.0, 40.0, 24.0]])
    warped = warp_regions(image, whole, 16, 0)[0]
    expected = F.interpolate(image[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(warped, expected, rtol=1e-5, atol=1e-5)
    # out of the image: zero, i.e. the mean of a normalised image
    far = warp_regions(image, torch.tensor([[100.0, 100.0, 120.0, 120.0]]), 8, 0)
    assert (far == 0).all()


def test_linear_svm_separates_separable_features():
    g = np.random.default_rng(0)
    pos = g.normal(0, 0.3, (20, 5)) + np.array([2.0, 0, 0, 0, 0])
    neg = g.normal(0, 0.3, (40, 5)) - np.array([2.0, 0, 0, 0, 0])
    x = np.concatenate((pos, neg))
    y = np.concatenate((np.ones(20), -np.ones(40)))
    w, b = fit_linear_svm(x, y, C=10.0)
    margins = y * (x @ w + b)
    # a hard-margin solution: every point on or outside the margin, support vectors on it
    assert margins.min() == pytest.approx(1.0, abs=1e-3)
    assert w[0] > 0 and abs(w[0]) > 5 * np.abs(w[1:]).max()


def test_hard_negative_mining_adds_the_violating_negatives():
    g = np.random.default_rng(1)
    pos = g.normal(0, 0.2, (10, 3)) + np.array([2.0, 0, 0])
    easy = g.normal(0, 0.2, (30, 3)) - np.array([2.0, 0, 0])
    # hard negatives: near the positives in x, separable only along the second feature
    hard = g.normal(0, 0.1, (5, 3)) + np.array([1.5, -2.0, 0])
    negatives = np.concatenate((easy, hard))
    # the first cache holds only easy negatives, so the first SVM scores the hard ones > -1
    w0, b0 = fit_linear_svm(np.concatenate((pos, easy)), [1] * 10 + [-1] * 30, C=10.0)
    assert (hard @ w0 + b0 > -1).all()
    result = train_svm_hard_negatives(pos, negatives, initial_negatives=30, C=10.0)
    assert result.rounds >= 2 and result.hard_added >= 5
    w, b = result.weight.double().numpy(), result.bias
    assert (pos @ w + b > 0).all()
    assert (negatives @ w + b < 0).all()
    assert (negatives @ w + b <= -1 + 1e-3).all()  # mining stopped: no negative is hard
    # the easy negatives left the cache once they scored below -1.05
    assert result.cache_size < len(negatives)


def test_ridge_recovers_exact_targets_and_the_boxes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=g, dtype=torch.float64)
    w_true = torch.randn(4, 6, generator=g, dtype=torch.float64)
    b_true = torch.randn(4, generator=g, dtype=torch.float64)
    w, b = fit_ridge(x, x @ w_true.T + b_true, lam=1e-9)
    torch.testing.assert_close(w.double(), w_true, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.double(), b_true, rtol=1e-4, atol=1e-4)
    # the penalty shrinks the weights (and leaves the bias free)
    w_big, _ = fit_ridge(x, x @ w_true.T + b_true, lam=1e4)
    assert w_big.norm() < 0.1 * w.norm()
    # installed in a model as class 2's regressor, it maps proposals onto their ground-truth
    # boxes (the paper's targets) from their (hand-made) pool5 features
    model = _small().eval()
    _, targets = _scene()
    gt = targets[0]["boxes"][:1].expand(12, 4)
    props = targets[0]["proposals"][:12]
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    pool5 = torch.randn(12, model.cnn.pool5_dim, generator=g)
    w, b = fit_ridge(pool5, coder.encode_single(gt, props), lam=1e-9)
    model.set_box_regressor(2, w, b)
    with torch.no_grad():
        pred = model.box_regressor(pool5)
    torch.testing.assert_close(coder.decode_single(pred[:, 4:8], props), gt, rtol=0, atol=1e-3)
    assert (pred[:, :4] == 0).all() and (pred[:, 8:] == 0).all()  # other classes untouched


def test_online_svm_hinge_loss_against_a_hand_computation():
    scores = torch.tensor([[0.5, -2.0], [-0.5, 3.0]])
    signs = torch.tensor([[1.0, -1.0], [-1.0, 0.0]])
    weights = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    # 2 * (1 - 0.5) + max(0, 1 - 2) + (1 - 0.5), three labelled entries
    assert hinge_loss(scores, signs, weights).item() == pytest.approx((1.0 + 0.0 + 0.5) / 3)


def test_training_labels_follow_the_paper():
    model = _small()
    images, targets = _scene()
    boxes, labels, is_gt, per_class, matched, iou = model._training_crops(
        targets[0]["proposals"], targets[0]
    )
    n_gt = len(targets[0]["boxes"])
    assert is_gt[:n_gt].all() and not is_gt[n_gt:].any()
    torch.testing.assert_close(labels[:n_gt], targets[0]["labels"])
    fg = labels[n_gt:] > 0
    assert (iou[n_gt:][fg] >= 0.5).all() and (iou[n_gt:][~fg] < 0.5).all()
    assert int(fg.sum()) <= 0.25 * model.sampler.batch_size_per_image
    # per-class IoU: the ground-truth box of class c has IoU 1 with class c
    for row, c in enumerate(targets[0]["labels"].tolist()):
        assert per_class[row, c - 1] == pytest.approx(1.0)


def test_training_steps_reduce_the_losses():
    images, targets = _scene()
    model = _small()
    history = train_steps(model, images, targets, 25)

    def mean(key, part):
        return sum(h[key] for h in part) / len(part)

    for key in ("loss_classifier", "loss_svm"):
        assert mean(key, history[-5:]) < 0.8 * mean(key, history[:3]), (key, history)
    # the SVMs and regressors see detached features: no gradient reaches the CNN from them
    model.zero_grad()
    losses = model(images, targets)
    (losses["loss_svm"] + losses["loss_box_reg"]).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.cnn.parameters())


def test_selective_search_without_opencv_contrib_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(ImportError, match="pip install opencv-contrib-python-headless"):
        SelectiveSearch()
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        proposal_source("selective_search")
    # plain OpenCV (no contrib modules) is also named
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="4.10.0"))
    with pytest.raises(ImportError, match="without the contrib modules"):
        SelectiveSearch()


def test_missing_proposals_and_bad_options():
    model = _small().eval()
    with pytest.raises(ValueError, match="RCNN needs region proposals"):
        model([torch.rand(3, 32, 32)])
    with pytest.raises(ValueError, match="crop_size must be a multiple of 32"):
        cm.get_model("rcnn", crop_size=100)
    with pytest.raises(ValueError, match="width must be"):
        cm.get_model("rcnn", width=0)


class ColourFeatures(torch.nn.Module):
    """A hand-made region "CNN": fc7 = the mean colour inside the context (the scene's
    class is the colour), pool5 = a 4x4 average-pooled crop."""

    out_dim, pool5_dim = 3, 48

    def forward(self, crops):
        return F.adaptive_avg_pool2d(crops, 4).flatten(1), crops[:, :, 2:30, 2:30].mean((2, 3))


def test_offline_stages_install_svms_and_regressors_that_fit_the_training_set():
    model = RCNN(ColourFeatures(), 4, crop_size=32, context=2).eval()
    images, targets = _scene()
    for image, target in zip(images, targets):
        # jittered boxes only: a random box inside an object would look exactly like it
        target["proposals"] = JitterProposals(num_jitter=16, num_random=0)(image, target)
    samples = list(zip(images, targets))
    results = fit_svms_and_regressors(model, samples, C=10.0, pos_weight=20.0, lam=1.0)
    present = sorted({c for t in targets for c in t["labels"].tolist()})
    assert sorted(results) == present  # class 3 has positives only in image 0, 1 in both
    with torch.no_grad():
        for image, target in zip(images, targets):
            _, fc7 = model.region_features(image, target["boxes"])
            scores = model.svm(fc7)
            own = scores[torch.arange(len(fc7)), target["labels"] - 1]
            assert (own > 0).all()  # every positive on its side of the hyperplane
            _, fc7 = model.region_features(image, target["proposals"])
            iou = box_iou(target["proposals"], target["boxes"])
            for c in present:  # the class's negatives: IoU < 0.3 with every box of class c
                of_c = target["labels"] == c
                best = iou[:, of_c].max(dim=1).values if of_c.any() else torch.zeros(len(iou))
                assert (model.svm(fc7[best < 0.3])[:, c - 1] < 0).all()
    assert model.box_regressor.weight.abs().sum() > 0  # regressors fitted and installed
