"""Model-level times of the depthwise models, one build per process (the measurement behind
plane's removal, docs/depthwise_conv2d.md, Decision log, plane): eval mobilenet_v2 at batch
1 and 8, its SGD training step at batch 8, eval deeplabv3_mobilenet_v2 at 512x512 batch 1;
median of 7 (5) timings, ms. Run each build alternately, e.g. without AVX-512:

    CVOPS_DISABLE_AVX512=1 PYTHONPATH=<old build> python benchmarks/microbench/mobile_models.py
    CVOPS_DISABLE_AVX512=1 python benchmarks/microbench/mobile_models.py
"""

import time

import torch
import torch.nn.functional as F

from cvops.models import get_model


def median_ms(fn, reps, runs=7):
    fn()
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - start) / reps * 1e3)
    return sorted(times)[runs // 2]


def main():
    torch.manual_seed(0)
    results = {}
    model = get_model("mobilenet_v2").eval()
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            ms = median_ms(lambda x=x: model(x), 10 // batch + 2)
        results[f"mobilenet_v2 inference b{batch}"] = ms
    train = get_model("mobilenet_v2").train()
    opt = torch.optim.SGD(train.parameters(), lr=0.01)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))

    def step():
        opt.zero_grad()
        F.cross_entropy(train(x), y).backward()
        opt.step()

    results["mobilenet_v2 training step b8"] = median_ms(step, 1)
    seg = get_model("deeplabv3_mobilenet_v2", num_classes=21).eval()
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        results["deeplabv3_mobilenet_v2 512x512 b1"] = median_ms(lambda: seg(x), 2, runs=5)
    for name, ms in results.items():
        print(f"{name}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
