"""A refactoring guard for the depthwise CPU kernels: saves every depthwise op's outputs
(forward, both gradients, the fused backward) on 69 shapes that cover every route of the
plan with one build, and compares another build's bit for bit.

    python benchmarks/microbench/depthwise_outputs.py save /tmp/before.pt     # old build
    python benchmarks/microbench/depthwise_outputs.py compare /tmp/before.pt  # new build
"""

import sys

import torch

import cvops  # noqa: F401  (loads the ops)

OUTPUTS = ("forward", "input_grad", "weight_grad", "bias_grad", "both:input", "both:weight")
OUTPUTS += ("both:bias",)


def cases():
    """(N, C, H, W, kH, kW, stride, padding, dilation, multiplier, dtype, channels_last,
    bias) for every route: MobileNetV2's layers, 3x3/5x5/7x7 at many widths and both
    strides, odd image groups, non-square kernels, dilation, multiplier 2, other dtypes,
    channels-last, wide planes."""
    out = []

    def add(n, c, h, w, kh, kw, s, p, d=1, m=1, dtype=torch.float32, cl=False, bias=True):
        out.append((n, c, h, w, kh, kw, s, p, d, m, dtype, cl, bias))

    for c, hw, s in [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1)]:
        add(2, c, hw, hw, 3, 3, s, 1)
    for c, hw, s in [(192, 28, 2), (384, 14, 1), (576, 14, 2), (576, 14, 1), (960, 7, 1)]:
        add(2, c, hw, hw, 3, 3, s, 1)
    for k in (3, 5, 7):
        for hw in (7, 14, 28, 40, 64, 70):
            add(3, 17, hw, hw, k, k, 1, k // 2)
            add(3, 17, hw, hw, k, k, 2, k // 2)
    add(8, 16, 7, 7, 3, 3, 1, 1)
    add(17, 2, 6, 6, 3, 3, 1, 1)
    add(9, 3, 8, 8, 3, 3, 1, 0)
    add(3, 4, 9, 37, 3, 3, 1, 1)
    add(2, 3, 40, 5, 3, 3, 1, 1)
    add(2, 3, 12, 17, 2, 4, 1, 0)
    add(2, 32, 14, 14, 3, 5, 1, 1)  # the shapes blocked512 had (removed 2026-12-05)
    add(2, 40, 12, 12, 1, 1, 1, 0)
    add(2, 33, 10, 10, 4, 4, 1, 2)
    add(2, 32, 14, 14, 3, 3, 1, 2, d=2)
    add(2, 3, 12, 12, 3, 3, 2, 2, d=2)
    add(2, 6, 20, 20, 3, 3, 1, 1, m=2)
    add(2, 6, 40, 40, 3, 3, 1, 1, m=2)
    add(2, 6, 20, 20, 3, 3, 1, 1, dtype=torch.float64)
    add(2, 6, 40, 40, 5, 5, 2, 2, dtype=torch.float64)
    add(2, 8, 20, 20, 3, 3, 1, 1, cl=True)
    add(2, 8, 40, 40, 3, 3, 1, 1, cl=True)
    add(2, 8, 20, 20, 3, 3, 1, 1, dtype=torch.bfloat16)
    add(2, 8, 64, 64, 3, 3, 3, 1)
    add(2, 5, 100, 130, 3, 3, 2, 1)
    add(1, 3, 200, 200, 3, 3, 1, 1)
    add(2, 16, 15, 15, 3, 3, 1, 1, bias=False)
    add(2, 16, 16, 16, 3, 3, 1, 1)
    return out


def run(case_list):
    ops = torch.ops.cvops
    results = []
    for i, (n, c, h, w, kh, kw, s, p, d, m, dtype, cl, bias) in enumerate(case_list):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(n, c, h, w, generator=g).to(dtype)
        weight = torch.randn(c * m, 1, kh, kw, generator=g).to(dtype)
        b = torch.randn(c * m, generator=g).to(dtype) if bias else None
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        geometry = ([s, s], [p, p], [d, d])
        y = ops.depthwise_conv2d(x, weight, b, *geometry)
        gy = torch.randn(y.shape, generator=g).to(dtype).contiguous(memory_format=fmt)
        gi = ops._depthwise_conv2d_backward_input(gy, weight, n, c, h, w, *geometry)
        gw, gb = ops._depthwise_conv2d_backward_weight(gy, x, kh, kw, *geometry)
        both = ops._depthwise_conv2d_backward(gy, x, weight, *geometry)
        results.append([y, gi, gw, gb, *both])
    return results


def main(mode: str, path: str) -> int:
    case_list = cases()
    results = run(case_list)
    if mode == "save":
        torch.save(results, path)
        return 0
    saved = torch.load(path)
    if isinstance(saved, dict):  # files written before the script was committed
        saved = [saved[i] for i in range(len(saved))]
    differ = 0
    for case, got, want in zip(case_list, results, saved, strict=True):
        for name, a, r in zip(OUTPUTS, got, want, strict=True):
            if a.numel() > 1 and a.stride() != r.stride():
                print("strides differ", case, name, a.stride(), r.stride())
            if not torch.equal(a, r):
                differ += 1
                err = (a.double() - r.double()).abs().max().item()
                print("differ", case, name, "max abs diff %.3g" % err)
    print("%d cases, %d outputs differ" % (len(case_list), differ))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
