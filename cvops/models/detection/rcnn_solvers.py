"""R-CNN's two offline learning stages on cached CNN features (Girshick et al., CVPR 2014,
section 2.3 and appendix C):

- :func:`train_svm_hard_negatives`: a linear SVM per class (L1 hinge loss, L2 regulariser,
  solved exactly in the dual by coordinate descent, liblinear's algorithm) with hard-negative
  mining: train on the positives and a cache of negatives, add the negatives that violate
  the margin (score > -1), drop the easy ones (score < -1.05), repeat until no negative is
  hard.
- :func:`fit_ridge`: the class-specific box regressor, ridge regression in closed form
  (``lambda`` 1000 in the paper) with an unregularised bias.
"""

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor


def _as_matrix(x, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float64)
    if a.ndim != 2:
        raise ValueError("%s must be a 2-D [N, D] feature matrix, got shape %s" % (name, a.shape))
    if not np.isfinite(a).all():
        raise ValueError("%s has non-finite values" % name)
    return a


def fit_linear_svm(
    x: np.ndarray,
    y: np.ndarray,
    C: float = 1e-3,
    pos_weight: float = 2.0,
    bias_multiplier: float = 10.0,
    epochs: int = 2000,
    tol: float = 1e-5,
    seed: int = 0,
) -> Tuple[np.ndarray, float]:
    """``(w, b)`` minimising ``0.5 |w|^2 + 0.5 (b / B)^2 + sum_i C_i max(0, 1 - y_i (w.x_i +
    b))`` (``y`` in {-1, +1}; ``C_i = C * pos_weight`` for positives; the bias is learned as
    a weight on a constant feature ``B = bias_multiplier``, liblinear's convention, which the
    R-CNN code uses with B = 10). Dual coordinate descent (Hsieh et al., ICML 2008) until the
    largest projected-gradient violation is below ``tol``."""
    x = _as_matrix(x, "x")
    y = np.asarray(y, np.float64).reshape(-1)
    if len(y) != len(x) or not np.isin(y, (-1.0, 1.0)).all():
        raise ValueError("y must hold one label in {-1, +1} per row of x")
    if C <= 0 or pos_weight <= 0:
        raise ValueError("C and pos_weight must be > 0, got %r and %r" % (C, pos_weight))
    xb = np.concatenate((x, np.full((len(x), 1), float(bias_multiplier))), axis=1)
    upper = np.where(y > 0, C * pos_weight, C)
    q = (xb * xb).sum(1)
    alpha = np.zeros(len(x))
    w = np.zeros(xb.shape[1])
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        worst = 0.0
        for i in rng.permutation(len(x)):
            g = y[i] * xb[i].dot(w) - 1.0
            pg = min(g, 0.0) if alpha[i] == 0 else (max(g, 0.0) if alpha[i] == upper[i] else g)
            worst = max(worst, abs(pg))
            if pg != 0.0 and q[i] > 0:
                new = min(max(alpha[i] - g / q[i], 0.0), upper[i])
                w += (new - alpha[i]) * y[i] * xb[i]
                alpha[i] = new
        if worst < tol:
            break
    return w[:-1], float(w[-1] * bias_multiplier)


@dataclasses.dataclass
class SVMResult:
    weight: Tensor  # [D]
    bias: float
    rounds: int  # training rounds (1 + the rounds that added hard negatives)
    cache_size: int  # negatives in the final cache
    hard_added: int  # negatives added by mining over all rounds


def train_svm_hard_negatives(
    positives,
    negatives,
    initial_negatives: Optional[int] = None,
    C: float = 1e-3,
    pos_weight: float = 2.0,
    bias_multiplier: float = 10.0,
    hard_thresh: float = -1.0,
    easy_thresh: float = -1.05,
    max_rounds: int = 10,
    seed: int = 0,
    tol: float = 1e-5,
) -> SVMResult:
    """One class's SVM with hard-negative mining. ``positives`` ``[P, D]`` (R-CNN: the
    ground-truth boxes' features), ``negatives`` ``[M, D]`` (proposals with IoU < 0.3 with
    every box of the class). The cache starts with the first ``initial_negatives``
    negatives (default: all of them, then mining only prunes); each round retrains, adds
    every negative scoring above ``hard_thresh`` that is not cached, and drops cached
    negatives below ``easy_thresh``; it stops when a round adds none."""
    pos = _as_matrix(positives, "positives")
    neg = _as_matrix(negatives, "negatives")
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("an SVM needs at least one positive and one negative")
    if pos.shape[1] != neg.shape[1]:
        raise ValueError("positives and negatives have different feature sizes")
    n0 = len(neg) if initial_negatives is None else max(1, min(int(initial_negatives), len(neg)))
    cache = np.arange(n0)
    added = rounds = 0
    while rounds < max_rounds:
        rounds += 1
        x = np.concatenate((pos, neg[cache]))
        y = np.concatenate((np.ones(len(pos)), -np.ones(len(cache))))
        w, b = fit_linear_svm(x, y, C, pos_weight, bias_multiplier, tol=tol, seed=seed)
        scores = neg @ w + b
        in_cache = np.zeros(len(neg), dtype=bool)
        in_cache[cache] = True
        hard = np.where((scores > hard_thresh) & ~in_cache)[0]
        if len(hard) == 0:
            break
        added += len(hard)
        cache = np.concatenate((cache[scores[cache] >= easy_thresh], hard))
    weight = torch.from_numpy(w).float()
    return SVMResult(weight, float(b), rounds, int(len(cache)), int(added))


def fit_ridge(features, targets, lam: float = 1000.0) -> Tuple[Tensor, Tensor]:
    """``(W [T, D], b [T])`` minimising ``sum_i |t_i - W phi_i - b|^2 + lam |W|^2`` in closed
    form (the bias is not regularised: features and targets are centred first)."""
    x = _as_matrix(features, "features")
    t = _as_matrix(targets, "targets")
    if len(x) != len(t) or len(x) == 0:
        raise ValueError("features and targets need the same, non-zero number of rows")
    if lam < 0:
        raise ValueError("lam must be >= 0, got %r" % (lam,))
    mx, mt = x.mean(0), t.mean(0)
    xc, tc = x - mx, t - mt
    if lam > 0:
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ tc)  # [D, T]
    else:  # least squares (the minimum-norm solution when underdetermined)
        w = np.linalg.lstsq(xc, tc, rcond=None)[0]
    b = mt - mx @ w
    return torch.from_numpy(w.T.copy()).float(), torch.from_numpy(b).float()


@torch.no_grad()
def fit_svms_and_regressors(
    model,
    samples,
    C: float = 1e-3,
    pos_weight: float = 2.0,
    lam: float = 1000.0,
    feature_norm: float = 20.0,
    neg_iou: float = 0.3,
    reg_iou: float = 0.6,
    initial_negatives: Optional[int] = None,
    tol: float = 1e-3,
) -> Dict[int, SVMResult]:
    """R-CNN's stages 2 and 3 on a trained (fine-tuned) ``model``: extract the features of
    every ``(image, target)`` in ``samples`` (``target`` with ``boxes``, ``labels`` and
    ``proposals``), train one SVM per class with hard-negative mining (positives: the
    ground-truth boxes; negatives: proposals with IoU < ``neg_iou`` with every box of the
    class; features scaled to a mean norm of ``feature_norm`` as the R-CNN code does) and
    one ridge regressor per class (proposals with IoU > ``reg_iou``, paper targets), and
    install them in the model. Returns the per-class SVM results (classes with neither a
    positive nor a negative are left as they are)."""
    from ...ops import box_iou

    model.eval()
    k = model.num_object_classes
    pos, neg = [[] for _ in range(k)], [[] for _ in range(k)]
    reg_x, reg_t = [[] for _ in range(k)], [[] for _ in range(k)]
    for image, target in samples:
        gt, labels, props = target["boxes"].float(), target["labels"], target["proposals"].float()
        pool5, fc7 = model.region_features(image, torch.cat((gt, props)))
        n = len(gt)
        iou = box_iou(props, gt) if n else props.new_zeros(len(props), 0)
        for c in range(1, k + 1):
            of_c = labels == c
            pos[c - 1].append(fc7[:n][of_c])
            best = iou[:, of_c].max(dim=1).values if of_c.any() else props.new_zeros(len(props))
            neg[c - 1].append(fc7[n:][best < neg_iou])
        if n:
            best, idx = iou.max(dim=1)
            for j in torch.where(best > reg_iou)[0].tolist():
                c = int(labels[idx[j]]) - 1
                reg_x[c].append(pool5[n + j])
                reg_t[c].append(model.box_coder.encode_single(gt[idx[j]][None], props[j][None])[0])
    everything = torch.cat([torch.cat(p) for p in pos] + [torch.cat(q) for q in neg])
    scale = feature_norm / everything.norm(dim=1).mean().clamp(min=1e-12)
    results = {}
    for c in range(1, k + 1):
        p, q = torch.cat(pos[c - 1]), torch.cat(neg[c - 1])
        if len(p) and len(q):
            r = train_svm_hard_negatives(
                p * scale, q * scale, initial_negatives, C, pos_weight, tol=tol
            )
            model.set_svm(c, r.weight * scale, r.bias)
            results[c] = r
        if reg_x[c - 1]:
            w, b = fit_ridge(torch.stack(reg_x[c - 1]), torch.stack(reg_t[c - 1]), lam)
            model.set_box_regressor(c, w, b)
    return results
