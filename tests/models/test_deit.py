"""DeiT: equivalence with timm (all six variants), the distilled heads (tuple in training,
mean in eval), DistillationLoss in its three modes, a training step."""

import pytest
import torch
import torch.nn.functional as F

import cvops.models as cm

from ._equiv import ATOL, build_on_meta, max_abs_diff, randomize_constants_, transplant

timm = pytest.importorskip("timm")

NAMES = [
    "deit_%s%s_patch16_224" % (size, dist)
    for size in ("tiny", "small", "base")
    for dist in ("", "_distilled")
]


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if "base" in n else n for n in NAMES]
)
def test_equivalent_to_timm(name, image):
    ref = randomize_constants_(timm.create_model(name, pretrained=False))
    ours = transplant(ref, build_on_meta(cm.get_model_builder(name)))
    diff, *_ = max_abs_diff(ref, ours, image)
    assert diff <= ATOL


@pytest.fixture(scope="module")
def tiny_distilled():
    # Three layers are enough for the head/loss tests and keep them fast.
    from cvops.models.classification.deit import DeiT

    return DeiT(
        embed_dim=32,
        depth=3,
        num_heads=2,
        image_size=32,
        patch_size=8,
        num_classes=5,
        distilled=True,
    )


def test_distilled_heads(tiny_distilled):
    model = tiny_distilled
    x = torch.randn(3, 3, 32, 32)
    model.train()
    cls, dist = model(x)
    assert cls.shape == dist.shape == (3, 5)
    assert not torch.allclose(cls, dist)
    model.eval()
    with torch.no_grad():
        tokens = model.forward_features(x)
        out = model(x)
    expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
    torch.testing.assert_close(out, expected)


class Teacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("kind", ["none", "soft", "hard"])
def test_distillation_loss_and_training_step(tiny_distilled, kind):
    model = tiny_distilled.train()
    teacher = Teacher()
    alpha, tau = 0.3, 2.0
    crit = cm.DistillationLoss(F.cross_entropy, teacher, type=kind, alpha=alpha, tau=tau)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 4, 2])
    cls, dist = model(x)
    loss = crit(x, (cls, dist), y)

    base = F.cross_entropy(cls, y)
    with torch.no_grad():
        t = teacher.fc(x.flatten(1))
    if kind == "none":
        expected = base
        assert teacher.calls == 0
    elif kind == "soft":
        p_t = F.softmax(t / tau, 1)
        kl = (p_t * (F.log_softmax(t / tau, 1) - F.log_softmax(dist / tau, 1))).sum()
        expected = (1 - alpha) * base + alpha * kl * tau * tau / dist.numel()
    else:
        expected = (1 - alpha) * base + alpha * F.cross_entropy(dist, t.argmax(1))
    torch.testing.assert_close(loss, expected)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.head_dist.weight.detach().clone()
    model.zero_grad()
    loss.backward()
    assert teacher.fc.weight.grad is None  # the teacher is not trained
    opt.step()
    changed = not torch.equal(before, model.head_dist.weight)
    assert changed == (kind != "none")  # the dist head learns only from the distillation term


def test_distillation_loss_validation(tiny_distilled):
    with pytest.raises(ValueError, match="type must be one of"):
        cm.DistillationLoss(F.cross_entropy, None, type="medium")
    with pytest.raises(ValueError, match="needs a teacher"):
        cm.DistillationLoss(F.cross_entropy, None, type="soft")
    with pytest.raises(ValueError, match="alpha"):
        cm.DistillationLoss(F.cross_entropy, Teacher(), type="hard", alpha=1.5)
    with pytest.raises(ValueError, match="tau"):
        cm.DistillationLoss(F.cross_entropy, Teacher(), type="soft", tau=0)
    crit = cm.DistillationLoss(F.cross_entropy, Teacher(), type="hard")
    with pytest.raises(ValueError, match="dist_logits"):
        crit(torch.randn(2, 3, 32, 32), torch.randn(2, 5), torch.tensor([0, 1]))
