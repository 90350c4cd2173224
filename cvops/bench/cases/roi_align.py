"""RoI Align cases: an FPN level and a detector head, against torchvision.ops.roi_align."""

import torch

import cvops

from ..harness import BenchCase, backward_step, register


def random_rois(num, image_h, image_w, batch, device, min_size=32, max_size=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([image_w, image_h])
    wh = torch.rand(num, 2, generator=g) * (max_size - min_size) + min_size
    b = torch.randint(0, batch, (num, 1), generator=g).float()
    return torch.cat([b, xy, xy + wh], 1).to(device)


def _case(shape, num_rois, scale, sampling_ratio, backward, deterministic=False):
    def make(device):
        from torchvision.ops import roi_align as tv_roi_align

        x = torch.randn(shape, device=device)
        rois = random_rois(num_rois, shape[2] / scale, shape[3] / scale, shape[0], device)
        args = (rois, 7, scale, sampling_ratio, True)
        if not backward:
            return (lambda: cvops.roi_align(x, *args), lambda: tv_roi_align(x, *args))
        xg = x.clone().requires_grad_()
        if deterministic:  # cost of the deterministic backward over the default one
            return (
                backward_step(cvops.roi_align, xg, args, deterministic=True),
                backward_step(cvops.roi_align, xg, args),
            )
        return backward_step(cvops.roi_align, xg, args), backward_step(tv_roi_align, xg, args)

    return make


_FPN = (2, 256, 100, 136)
_HEAD = (1, 256, 200, 272)
for _name, _shape, _k, _scale, _sr in [
    ("fpn [2,256,100,136] 1024 RoIs sr=2", _FPN, 1024, 1 / 8, 2),
    ("fpn [2,256,100,136] 1024 RoIs sr=0", _FPN, 1024, 1 / 8, 0),
    ("head [1,256,200,272] 512 RoIs sr=2", _HEAD, 512, 1 / 4, 2),
]:
    register(
        BenchCase("roi_align", _name + " fwd", "float32", _case(_shape, _k, _scale, _sr, False))
    )
    register(
        BenchCase("roi_align", _name + " fwd+bwd", "float32", _case(_shape, _k, _scale, _sr, True))
    )

register(
    BenchCase(
        "roi_align",
        "fpn 1024 RoIs sr=2 fwd+bwd deterministic",
        "float32",
        _case(_FPN, 1024, 1 / 8, 2, True, deterministic=True),
        reference="cvops default bwd",
        devices=("cuda",),
    )
)
