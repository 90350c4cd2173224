"""The measurement behind the plan's blocked rule (docs/depthwise_conv2d.md, Decision log,
blocked): the blocked and the plane kernel forced on the same calls, channels-last and
float64, forward, input gradient and weight gradient, median of 5 timings (ms).

    python benchmarks/microbench/depthwise_blocked_vs_plane.py
"""

import time

import torch

import cvops  # noqa: F401  (loads the ops)

ops = torch.ops.cvops
CL = torch.channels_last
CASES = [
    # N, C, H, stride, dtype, channels-last
    (8, 32, 112, 1, torch.float32, True),
    (8, 144, 56, 1, torch.float32, True),
    (8, 960, 7, 1, torch.float32, True),
    (1, 32, 224, 1, torch.float32, True),
    (1, 96, 224, 2, torch.float32, True),
    (8, 32, 112, 1, torch.bfloat16, True),
    (8, 32, 14, 1, torch.float64, False),
    (8, 32, 56, 1, torch.float64, False),
    (8, 32, 56, 1, torch.float64, True),
]


def median_ms(fn, reps=3):
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - start) / reps * 1e3)
    return sorted(times)[2]


def kernel_ms(kernel, x, g, w, stride):
    """The forced kernel's forward, input gradient and weight gradient times (ms)."""
    n, c, h, wd = x.shape
    st, pad, dil = [stride, stride], [1, 1], [1, 1]
    previous = ops._depthwise_cpu_force(kernel)
    try:
        return [
            median_ms(lambda: ops.depthwise_conv2d(x, w, None, st, pad, dil)),
            median_ms(
                lambda: ops._depthwise_conv2d_backward_input(g, w, n, c, h, wd, st, pad, dil)
            ),
            median_ms(lambda: ops._depthwise_conv2d_backward_weight(g, x, 3, 3, st, pad, dil)),
        ]
    finally:
        ops._depthwise_cpu_force(previous)


def main():
    print(
        "| call | blocked fwd / input grad / weight grad | plane fwd / input grad / weight grad |"
    )
    print("|---|---|---|")
    for n, c, h, s, dtype, cl in CASES:
        fmt = CL if cl else torch.contiguous_format
        out = (h + 2 - 3) // s + 1
        x = torch.randn(n, c, h, h).to(dtype).contiguous(memory_format=fmt)
        g = torch.randn(n, c, out, out).to(dtype).contiguous(memory_format=fmt)
        w = torch.randn(c, 1, 3, 3).to(dtype)
        cols = [kernel_ms(kernel, x, g, w, s) for kernel in ("blocked", "plane")]
        name = f"[{n},{c},{h},{h}] s{s} {str(dtype)[6:]}{' channels-last' if cl else ''}"
        print(
            f"| {name} | " + " | ".join(" / ".join(f"{t:.2f}" for t in col) for col in cols) + " |"
        )


if __name__ == "__main__":
    main()
