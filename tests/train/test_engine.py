import pytest
import torch

from cvops.train.engine import ShardSampler, build_scheduler


def _lrs(scheduler, n):
    out = []
    for _ in range(n):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_poly_schedule_per_iteration():
    lrs = _lrs(build_scheduler(_optimizer(), total_iters=10, power=0.9), 10)
    assert lrs == pytest.approx([0.1 * (1 - i / 10) ** 0.9 for i in range(10)])


def test_warmup_then_poly():
    s = build_scheduler(_optimizer(), total_iters=12, power=0.9, warmup_iters=2, warmup_factor=0.1)
    assert isinstance(s, torch.optim.lr_scheduler.SequentialLR)
    lrs = _lrs(s, 12)
    assert lrs[:2] == pytest.approx([0.01, 0.055])  # linear from 0.1 * lr to lr
    assert lrs[2:] == pytest.approx([0.1 * (1 - i / 10) ** 0.9 for i in range(10)])


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [4, 4, 3]
