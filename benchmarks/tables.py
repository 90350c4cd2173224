"""The benchmark table of BENCHMARKS.md, from saved ``python -m cvops.bench`` runs.

    python benchmarks/tables.py benchmarks/results/cpu-2026-11-29-110[0-6]*.json
    python benchmarks/tables.py          # the newest three default and three fixed-malloc runs

benchmarks/results/ keeps only the latest run per device; restore the runs of BENCHMARKS.md's
table from git history first: git checkout a727558 -- 'benchmarks/results/cpu-2026-11-29-11*'

The runs are split by the allocator setting their JSON records (``meta.malloc``). Each row
puts the two settings side by side, median speedup of the runs and each run's in brackets,
and leads with the conservative figure: the lower of the two medians, which is also what the
issue targets are judged on. A run in which either side spent a quarter or more of its call
time page-faulting (``faults/call`` in the JSON, ~1.3 us per fault on the project's VM)
measured the allocator as much as the kernel: that setting's figure gets a footnote with the
fault counts of its runs.
"""

import argparse
import glob
import json
import os
import re
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
FAULT_US = 1.3  # one minor page fault on the project's VM (BENCHMARKS.md)
FAULTY = 0.25  # the share of a call's time in page faults from which it is the allocator's

# Speedup targets from the issues, judged on the conservative figure:
# (op, case prefix) -> (minimum speedup, how the target reads) or None; the longest prefix wins
TARGETS = {
    ("depthwise_conv2d", "mnv2 "): (3.0, ">= 3x"),
    ("losses", "sigmoid_focal [100000,80] sum fwd+bwd"): (8.0, ">= 8x"),
    ("losses", "dice multiclass [8,21,256,256] fwd+bwd"): (4.0, ">= 4x"),
    ("losses", "dice binary [16,1,512,512] fwd+bwd"): (4.0, ">= 4x"),
    ("losses", "dice_focal"): (1.0, "> 1x"),
    ("mobilenet_v2", "batch 8 224x224 inference"): (1.0, "> 1x"),
    ("mobilenet_v2", "batch 8 224x224 inference, "): None,  # the split rows: no target
    ("mobilenet_v2", "batch 8 224x224 training"): (1.0, "> 1x"),
    ("nms", "N=500 "): (1.0, "never slower"),
    ("nms", "N=10000 "): (5.0, ">= 5x"),
    ("nms", "N=50000 "): (20.0, ">= 20x"),
    ("batched_nms", "N=50000 "): (5.0, ">= 5x"),
    ("roi_align", "fpn "): (2.0, ">= 2x"),
    ("roi_pool", "fpn "): (2.0, ">= 2x"),
}


def target(op, case):
    hits = [(len(p), t) for (o, p), t in TARGETS.items() if o == op and case.startswith(p)]
    return max(hits)[1] if hits else None


def load(paths):
    """{"default": [run, ...], "fixed": [...]}, each run {"name", "meta", "rows": {key: r}}."""
    runs = {"default": [], "fixed": []}
    for path in sorted(paths):
        with open(path) as f:
            saved = json.load(f)
        kind = "fixed" if saved["meta"].get("malloc", "").startswith("fixed") else "default"
        rows = {(r["op"], r["case"]): r for r in saved["results"]}
        runs[kind].append({"name": os.path.basename(path), "meta": saved["meta"], "rows": rows})
    return runs


def newest(folder, count=3):
    """The newest ``count`` default and ``count`` fixed-malloc CPU runs in ``folder``."""
    stamped = re.compile(r"cpu-\d{4}-\d\d-\d\d-\d{4}(-fixed-malloc)?\.json$")
    names = sorted(p for p in glob.glob(os.path.join(folder, "cpu-*.json")) if stamped.search(p))
    fixed = [p for p in names if p.endswith("-fixed-malloc.json")]
    default = [p for p in names if not p.endswith("-fixed-malloc.json")]
    return default[-count:] + fixed[-count:]


def fmt_ms(ms):
    return "%.3f" % ms if ms < 0.1 else "%.2f" % ms


def faulting(row, side):
    """Whether ``side`` of one result spent FAULTY of its time or more page-faulting."""
    faults = row.get(side + "_faults") or 0
    return faults * FAULT_US * 1e-3 >= FAULTY * row[side + "_ms"]


def setting(runs, key, notes, label):
    """(median speedup or None, 'median (run, run, run)' cell) of one setting for one case,
    a footnote added to ``notes`` when either side of a run faulted for FAULTY of its time."""
    rows = [run["rows"][key] for run in runs if key in run["rows"]]
    if not rows:
        return None, "-"
    speedups = [r["reference_ms"] / r["cvops_ms"] for r in rows]
    med = statistics.median(speedups)
    cell = "%.2fx (%s)" % (med, ", ".join("%.2f" % s for s in speedups))
    if any(faulting(r, "cvops") or faulting(r, "reference") for r in rows):
        notes.append(
            "%s, %s runs: page faults per call (cvops / reference): %s"
            % (
                key[1],
                label,
                "; ".join(
                    "%.0f / %.0f" % (r.get("cvops_faults") or 0, r.get("reference_faults") or 0)
                    for r in rows
                ),
            )
        )
        cell += " [%d]" % len(notes)
    return med, cell


def table(runs):
    keys = []
    for run in runs["fixed"] + runs["default"]:
        keys += [k for k in run["rows"] if k not in keys]
    notes = []
    out = [
        "| op | case | cvops ms | reference ms | **speedup** (lower median) | fixed malloc: "
        "median (per run) | default malloc: median (per run) | reference | target |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for key in keys:
        fixed, fixed_cell = setting(runs["fixed"], key, notes, "fixed-malloc")
        default, default_cell = setting(runs["default"], key, notes, "default")
        lead = min(s for s in (fixed, default) if s is not None)
        # milliseconds: medians of the runs of the setting that gives the lead figure
        lead_kind = "fixed" if lead == fixed else "default"
        lead_cell = fixed_cell if lead_kind == "fixed" else default_cell
        mark = lead_cell[lead_cell.rindex(" [") :] if lead_cell.endswith("]") else ""
        ms_runs = [run["rows"][key] for run in runs[lead_kind] if key in run["rows"]]
        goal = target(*key)
        if goal is None:
            verdict = ""
        else:
            verdict = "%s: %s" % (goal[1], "met" if lead >= goal[0] else "**not met**")
        out.append(
            "| %s | %s | %s | %s | **%.2fx**%s | %s | %s | %s | %s |"
            % (
                key[0],
                key[1],
                fmt_ms(statistics.median(r["cvops_ms"] for r in ms_runs)),
                fmt_ms(statistics.median(r["reference_ms"] for r in ms_runs)),
                lead,
                mark,
                fixed_cell,
                default_cell,
                ms_runs[0]["reference"],
                verdict,
            )
        )
    if notes:
        out.append("")
        out += ["- [%d] %s" % (i + 1, note) for i, note in enumerate(notes)]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="results JSON of python -m cvops.bench")
    args = parser.parse_args(argv)
    paths = args.runs or newest(os.path.join(HERE, "results"))
    runs = load(paths)
    for kind in ("fixed", "default"):
        if runs[kind]:
            print(
                "%s malloc: %s (%s)"
                % (
                    kind,
                    ", ".join(run["name"] for run in runs[kind]),
                    "; ".join(sorted({run["meta"]["date"] for run in runs[kind]})),
                )
            )
    print()
    print(table(runs))


if __name__ == "__main__":
    main()
