"""The benchmark command (python -m cvops.bench): one small case end to end, the opt-in
fixed malloc thresholds recorded in its JSON, and its page-fault counts."""

import json
import mmap
import os
import platform

import pytest
import torch

from tests.conftest import requires_ops, run_python

pytestmark = requires_ops

CASE = "mnv2 [8,960,7,7] 3x3 fwd"


@pytest.mark.parametrize("fixed", [False, True])
def test_bench_runs_a_case_and_records_malloc(tmp_path, fixed):
    flags = ", '--fixed-malloc'" if fixed else ""
    code = (
        "from cvops.bench.__main__ import main\n"
        "main(['--device', 'cpu', '-k', %r, '--rounds', '1', '--min-time', '0.001',\n"
        "      '--no-plot', '--out', %r%s])\n"
        "print('OK')\n" % (CASE, str(tmp_path), flags)
    )
    run_python(code)
    with open(os.path.join(tmp_path, "results-cpu.json")) as f:
        saved = json.load(f)
    assert [r["case"] for r in saved["results"]] == [CASE, CASE + "+bwd"]
    assert all(r["cvops_ms"] > 0 and r["reference_ms"] > 0 for r in saved["results"])
    if platform.system() == "Linux":  # page faults per call, counted on CPU
        assert all(r["cvops_faults"] >= 0 and r["reference_faults"] >= 0 for r in saved["results"])
    malloc = saved["meta"]["malloc"]
    if not fixed:
        assert malloc == "glibc defaults"
    elif platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert malloc.startswith("fixed: glibc mmap threshold 32 MiB")


@pytest.mark.skipif(platform.system() != "Linux", reason="counts page faults on Linux")
def test_fault_counter_counts_first_writes_to_fresh_pages():
    from cvops.bench.harness import FaultCounter

    pages = 256

    def write_fresh_pages():
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as m:
            for i in range(0, len(m), mmap.PAGESIZE):
                m[i] = 1

    def reuse():
        return sum(range(1000))

    # (calls are estimated from the median call time: a few percent either way)
    for fn, lo, hi in ((write_fresh_pages, 0.8 * pages, 2 * pages), (reuse, 0, 1)):
        counter = FaultCounter()
        times = counter.time(fn, "cpu", 1, 0.01)
        per_call = counter.per_call(sorted(times)[len(times) // 2])
        assert lo <= per_call < hi


def test_speedup_chart_is_log_scaled_with_a_line_at_1x():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from cvops.bench.__main__ import speedup_figure
    from cvops.bench.harness import Result

    results = [
        Result("op", "case %d" % i, "cpu", "float32", "ref", 1.0, ref_ms)
        for i, ref_ms in enumerate([0.5, 1.5, 40.0])
    ]
    fig = speedup_figure(results, "title")
    try:
        (ax,) = fig.axes
        assert ax.get_xscale() == "log"
        lo, hi = ax.get_xlim()
        assert lo < 0.5 and hi > 40  # every bar and its label inside
        assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())
        # bars start at 1x: the slowdown points left, the speedups right
        spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches)
        assert [tuple(sorted(s)) for s in spans] == [(0.5, 1.0), (1.0, 1.5), (1.0, 40.0)]
    finally:
        plt.close(fig)


def test_mobilenet_v2_inference_rows_separate_the_depthwise_kernel_from_bn_folding():
    import torch

    from cvops.bench.cases import models
    from cvops.bench.harness import registered_cases

    rows = {c.case: c.reference for c in registered_cases() if c.op == "mobilenet_v2"}
    assert rows == {
        "batch 8 224x224 inference": "torchvision",
        "batch 8 224x224 inference, BN unfolded (depthwise kernel alone)": "torchvision",
        "batch 8 224x224 inference, BN folding alone": "cvops, BN unfolded",
        "batch 8 224x224 training step (SGD)": "torchvision",
    }
    x = torch.randn(1, 3, 64, 64)
    unfolded = models._cvops_unfolded("cpu", x)  # raises unless every BatchNorm ran
    folded, ref = models._models("cpu")
    with torch.inference_mode():
        want = ref.eval()(x)
        torch.testing.assert_close(unfolded(x), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(folded.eval()(x), want, rtol=1e-4, atol=1e-4)


def test_segmentation_cases_run_and_compare_the_same_loss():
    pytest.importorskip("segmentation_models_pytorch")
    import torch

    from cvops.bench.cases import segmentation as seg
    from cvops.bench.harness import registered_cases

    cases = [c for c in registered_cases() if c.op == "segmentation"]
    assert len(cases) == 2 and any("only the loss differs" in c.case for c in cases)
    for case in cases:  # make() checks that the two losses agree; one call of each side
        for step in case.make("cpu"):
            step()

    # the same math: values and gradients, with ignored pixels present
    g = torch.Generator().manual_seed(1)
    x = torch.randn(seg.LOGITS, generator=g, dtype=torch.float64)
    t = seg.segmentation_target(g, "cpu")
    assert (t == seg.IGNORE).any()
    grads = []
    for loss in (seg.cvops_loss, seg.smp_loss()):
        xg = x.clone().requires_grad_()
        loss(xg, t).backward()
        grads.append(xg.grad)
    ours, ref = seg.check_losses_agree(x, t, rtol=1e-10)
    assert ours > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-12)


def test_detection_cases_compare_the_same_detections(monkeypatch):
    # At 128x128 instead of 512: make() builds both models with the same weights and refuses
    # to time them unless they detect the same boxes; each side then runs once.
    from cvops.bench.cases import detection
    from cvops.bench.harness import registered_cases

    monkeypatch.setattr(detection, "SIZE", 128)
    monkeypatch.setitem(detection._OPTIONS, "min_size", 128)
    monkeypatch.setitem(detection._OPTIONS, "max_size", 128)
    cases = [c for c in registered_cases() if c.op == "fasterrcnn_resnet50_fpn"]
    assert sorted(c.case.split(" ", 1)[1] for c in cases) == [
        "inference, FrozenBN, 100 detections",
        "inference, FrozenBN, 100 detections, channels-last",
        "training step (SGD)",
    ]
    for case in cases:
        for step in case.make("cpu"):
            step()


def test_detection_check_refuses_detections_beyond_float32_rounding(monkeypatch):
    # The tolerance comes from both sides' float32 error against torchvision's float64 run: a
    # box moved by 0.5 px, far beyond float32 rounding, must be refused.
    from cvops.bench.cases import detection

    monkeypatch.setitem(detection._OPTIONS, "min_size", 96)
    monkeypatch.setitem(detection._OPTIONS, "max_size", 96)
    torch.manual_seed(0)
    ours, ref = detection._models("fasterrcnn_resnet50_fpn", "cpu")
    ours.eval()
    ref.eval()
    images = [torch.rand(3, 96, 96)]
    detection._check_same_detections("same", ours, ref, images)

    class Shifted(torch.nn.Module):
        def forward(self, imgs):
            out = ours(imgs)
            return [dict(d, boxes=d["boxes"] + 0.5) for d in out]

    with pytest.raises(RuntimeError, match="over 6x torchvision's"):
        detection._check_same_detections("shifted", Shifted(), ref, images)
