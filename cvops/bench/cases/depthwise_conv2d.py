"""Depthwise conv2d cases (fp32): MobileNetV2's depthwise layers plus a 5x5 and a 7x7 layer
(NCHW), and one layer channels-last, forward and forward+backward, against
F.conv2d(groups=C) (PyTorch's own kernel, oneDNN on CPU, its native kernel or cuDNN on
CUDA) on the same tensors."""

import torch
import torch.nn.functional as F

import cvops

from ..harness import BenchCase, register


def _case(shape, kernel, stride, backward, memory_format):
    def make(device):
        c = shape[1]
        pad = kernel // 2
        x = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
        w = torch.randn(c, 1, kernel, kernel, device=device)
        b = torch.randn(c, device=device)

        def ours(x, w, b):
            return cvops.depthwise_conv2d(x, w, b, stride, pad)

        def ref(x, w, b):
            return F.conv2d(x, w, b, stride, pad, 1, c)

        if not backward:
            return (lambda: ours(x, w, b), lambda: ref(x, w, b))
        params = [t.clone().requires_grad_() for t in (x, w, b)]
        grad = torch.randn_like(ref(x, w, b))

        def step(fn):
            def run():
                fn(*params).backward(grad)
                for t in params:
                    t.grad = None

            return run

        return step(ours), step(ref)

    return make


_NCHW, _CL = torch.contiguous_format, torch.channels_last
for _name, _shape, _k, _s, _format in [
    ("mnv2 [8,32,112,112] 3x3", (8, 32, 112, 112), 3, 1, _NCHW),
    ("mnv2 [8,144,56,56] 3x3", (8, 144, 56, 56), 3, 1, _NCHW),
    ("mnv2 [8,192,28,28] 3x3 s2", (8, 192, 28, 28), 3, 2, _NCHW),
    ("mnv2 [8,384,14,14] 3x3", (8, 384, 14, 14), 3, 1, _NCHW),
    ("mnv2 [8,960,7,7] 3x3", (8, 960, 7, 7), 3, 1, _NCHW),
    ("[8,144,56,56] 5x5", (8, 144, 56, 56), 5, 1, _NCHW),
    ("[8,96,56,56] 7x7", (8, 96, 56, 56), 7, 1, _NCHW),
    ("mnv2 [8,144,56,56] 3x3 channels-last", (8, 144, 56, 56), 3, 1, _CL),
]:
    for _bwd in (False, True):
        register(
            BenchCase(
                "depthwise_conv2d",
                _name + (" fwd+bwd" if _bwd else " fwd"),
                "float32",
                _case(_shape, _k, _s, _bwd, _format),
                reference="F.conv2d(groups=C)",
            )
        )
