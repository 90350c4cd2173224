"""RoI Pool cases: an FPN-level feature map with 1024 RoIs, against torchvision.ops.roi_pool."""

import torch

import cvops

from ..harness import BenchCase, backward_step, register
from .roi_align import random_rois


def _case(shape, num_rois, scale, backward, deterministic=False):
    def make(device):
        from torchvision.ops import roi_pool as tv_roi_pool

        x = torch.randn(shape, device=device)
        rois = random_rois(num_rois, shape[2] / scale, shape[3] / scale, shape[0], device)
        args = (rois, 7, scale)
        if not backward:
            return (lambda: cvops.roi_pool(x, *args), lambda: tv_roi_pool(x, *args))
        xg = x.clone().requires_grad_()
        if deterministic:  # cost of the deterministic backward over the default one
            return (
                backward_step(cvops.roi_pool, xg, args, deterministic=True),
                backward_step(cvops.roi_pool, xg, args),
            )
        return backward_step(cvops.roi_pool, xg, args), backward_step(tv_roi_pool, xg, args)

    return make


_FPN = (2, 256, 100, 136)
_NAME = "fpn [2,256,100,136] 1024 RoIs 7x7"
register(BenchCase("roi_pool", _NAME + " fwd", "float32", _case(_FPN, 1024, 1 / 8, False)))
register(BenchCase("roi_pool", _NAME + " fwd+bwd", "float32", _case(_FPN, 1024, 1 / 8, True)))
register(
    BenchCase(
        "roi_pool",
        _NAME + " fwd+bwd deterministic",
        "float32",
        _case(_FPN, 1024, 1 / 8, True, deterministic=True),
        reference="cvops default bwd",
        devices=("cuda",),
    )
)
