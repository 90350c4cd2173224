"""``python -m cvops.bench``: time every registered case, cvops vs reference, same process.

Prints a table, shows a progress bar, and writes ``results-<device>.json`` and
``speedups-<device>.png`` under ``--out``.
"""

import argparse
import datetime
import json
import os
import platform
import sys

import torch

from .. import extension
from . import cases  # noqa: F401  (registers the cases)
from .harness import fix_malloc_thresholds, registered_cases, run_case


def _machine(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return "%s, %d threads" % (cpu, torch.get_num_threads())


def _faults(r):
    if r.cvops_faults is None or r.reference_faults is None:
        return "-"
    return "%.0f/%.0f" % (r.cvops_faults, r.reference_faults)


def _table(results):
    head = "%-10s %-48s %-6s %-8s %10s %11s %8s %13s  %s" % (
        "op",
        "case",
        "device",
        "dtype",
        "cvops ms",
        "ref ms",
        "speedup",
        "faults/call",
        "reference",
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            "%-10s %-48s %-6s %-8s %10.2f %11.2f %7.2fx %13s  %s"
            % (
                r.op,
                r.case,
                r.device,
                r.dtype,
                r.cvops_ms,
                r.reference_ms,
                r.speedup,
                _faults(r),
                r.reference,
            )
        )
    return "\n".join(lines)


def speedup_figure(results, title):
    """Horizontal speedup bars on a log axis with a line at 1x: a 40x bar would squash the
    1-3x ones on a linear axis, and on a log axis 0.5x is as far left as 2x is right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    labels = ["%s: %s" % (r.op, r.case) for r in results]
    speed = [r.speedup for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(results) + 1.2))
    # bars start at 1x, so a slowdown points left and a speedup right
    ax.barh(
        range(len(results)),
        [s - 1 for s in speed],
        left=1.0,
        color=["tab:green" if s >= 1 else "tab:red" for s in speed],
    )
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=1.0)
    lo, hi = min(speed + [1.0]), max(speed + [1.0])
    ax.set_xlim(lo / 1.6, hi * 2.2)  # room for the labels
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "%gx" % v))
    ax.set_yticks(range(len(results)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over reference (log scale; the line is 1x)")
    ax.set_title(title, fontsize=9)
    for i, s in enumerate(speed):
        ax.text(s, i, " %.2fx " % s, va="center", ha="left" if s >= 1 else "right", fontsize=8)
    fig.tight_layout()
    return fig


def _plot(results, path, title):
    import matplotlib.pyplot as plt

    fig = speedup_figure(results, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cvops.bench", description=__doc__)
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CUDA when a GPU is visible, else CPU",
    )
    parser.add_argument("--ops", nargs="*", help="only these ops (e.g. roi_align)")
    parser.add_argument("-k", dest="keyword", help="only cases whose name contains this")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of cvops and reference"
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.05,
        help="seconds each side is timed per round (blocks of back-to-back calls)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="calls before the first round")
    parser.add_argument("--out", default="bench_results", help="folder for JSON and plot")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--fixed-malloc",
        action="store_true",
        help="fix glibc's malloc thresholds: steadier large fwd+bwd times (fix_malloc_thresholds)",
    )
    args = parser.parse_args(argv)

    extension.require_ops()
    try:
        import torchvision  # noqa: F401
        from tqdm import tqdm
    except ImportError as exc:
        sys.exit(
            "the benchmarks need torchvision and tqdm (pip install -r requirements-bench.txt): %s"
            % exc
        )
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not (torch.cuda.is_available() and extension.has_cuda()):
        sys.exit("--device cuda needs a visible GPU and a cvops build with CUDA kernels")

    todo = [
        c
        for c in registered_cases()
        if device in c.devices
        and (not args.ops or c.op in args.ops)
        and (not args.keyword or args.keyword in c.case)
    ]
    malloc_note = fix_malloc_thresholds() if args.fixed_malloc else "glibc defaults"
    results = []
    for case in tqdm(todo, desc="cvops.bench (%s)" % device, unit="case", file=sys.stderr):
        results.append(run_case(case, device, args.warmup, args.rounds, args.min_time))
        if device == "cuda":
            torch.cuda.empty_cache()

    machine = _machine(device)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = "cvops %s on %s (torch %s), %s" % (device, machine, torch.__version__, stamp)
    print(title)
    print("malloc: %s" % malloc_note)
    print(_table(results))
    os.makedirs(args.out, exist_ok=True)
    meta = {
        "date": stamp,
        "device": device,
        "machine": machine,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "malloc": malloc_note,
    }
    json_path = os.path.join(args.out, "results-%s.json" % device)
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "results": [r.as_dict() for r in results]}, f, indent=1)
    print("saved %s" % json_path)
    if results and not args.no_plot:
        png = os.path.join(args.out, "speedups-%s.png" % device)
        _plot(results, png, title)
        print("saved %s" % png)
    return results


if __name__ == "__main__":
    main()
