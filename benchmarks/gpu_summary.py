"""The pieces of ``$OUT/summary.md`` that ``benchmarks/gpu_check.sh`` appends after each phase,
so that a run cut short still says what it did; plus the copy-bandwidth measurement and the
choice of tests for compute-sanitizer. Runs on CPU too (``bandwidth --device cpu``), which is
how it is checked without a GPU.

    S="python benchmarks/gpu_summary.py --summary $OUT/summary.md"
    $S device
    $S build --seconds 95 --rc 0 --log $OUT/build.log
    $S tests --title "CUDA tests" --out $OUT --runs cuda_tests --rc 0 --seconds 120
    $S bandwidth --device cuda --json $OUT/copy_bandwidth.json
    $S bench --title losses --json $OUT/bench/losses/results-cuda.json \\
        --bandwidth $OUT/copy_bandwidth.json --log $OUT/bench_losses.log
    $S sanitizer --out $OUT --rc 0
    python benchmarks/gpu_summary.py pick-sanitizer-tests --junit $OUT/cuda_tests.xml
"""

import argparse
import collections
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test files are named test_<op>[_what].py; the longest op name that starts the name wins.
OPS = ("depthwise_conv2d", "roi_align", "roi_pool", "soft_nms", "nms", "losses", "boxes")

# Small CUDA tests for compute-sanitizer, a few per op (the review's cases of issue 15 among
# them): node-id prefixes, each taking the first test of the CUDA phase that ran (passed or
# failed: an out-of-bounds access can be why it failed) and starts with it. An op with none of
# them present gets its first such CUDA test.
SANITIZER_TESTS = {
    "roi_align": [
        "tests/ops/test_roi_align_cuda.py::test_cuda_channels_last_and_strided_grad",
        "tests/ops/test_roi_align_cuda.py::test_cuda_fma_example_matches_cpu_and_torchvision",
        "tests/ops/test_roi_align_cuda.py::test_cuda_deterministic_backward_of_zero_gradient",
        "tests/ops/test_roi_align_contract.py::test_zero_channels_and_zero_size_map",
    ],
    "roi_pool": [
        "tests/ops/test_roi_pool_cuda.py::test_cuda_channels_last_and_strided_grad",
        "tests/ops/test_roi_pool_cuda.py::test_cuda_deterministic_backward_of_zero_gradient",
        "tests/ops/test_roi_pool_contract.py::test_zero_channels_and_zero_size_map",
    ],
    "nms": [
        "tests/ops/test_nms_cuda.py::test_nan_and_bad_boxes_cuda",
        "tests/ops/test_nms_cuda.py::test_nms_fixed_has_no_host_sync",
        "tests/ops/test_nms_cuda.py::test_soft_nms_cuda_matches_cpu",
    ],
    "depthwise_conv2d": [
        "tests/ops/test_depthwise_conv2d.py::test_non_contiguous_inputs",
        "tests/ops/test_depthwise_conv2d_backward.py::test_matches_the_two_backward_ops",
    ],
    "losses": [
        "tests/ops/test_losses_cuda.py::test_out_of_range_target_gives_nan_loss_for_every",
        "tests/ops/test_losses_cuda.py::test_multilabel_dice_with_more_than_65535_rows",
        "tests/ops/test_losses.py::test_dice_focal_is_the_sum_of_both",
    ],
}


# exit statuses of gpu_check.sh's `limit`
STATUS = {124: "cut by its timeout", 137: "killed", 125: "not run: the time budget was spent"}


def append(path, text):
    with open(path, "a") as f:
        f.write(text.rstrip("\n") + "\n\n")


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no %s)" % path


# ---------------------------------------------------------------- device and build


def device_section(_args):
    import torch

    query = "--query-gpu=name,driver_version,memory.total"
    try:
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        smi = "(no nvidia-smi)"
    lines = ["# cvops GPU check, %s" % now(), "", "## Device", ""]
    lines.append("- GPU (nvidia-smi: name, driver, memory): %s" % (smi or "(none)"))
    if torch.cuda.is_available():
        lines.append("- compute capability: %d.%d" % torch.cuda.get_device_capability())
    lines.append(
        "- torch %s (CUDA %s), Python %s, %d CPU cores"
        % (torch.__version__, torch.version.cuda, platform.python_version(), os.cpu_count())
    )
    try:
        import torchvision

        lines.append("- torchvision %s" % torchvision.__version__)
    except ImportError:
        lines.append("- torchvision: not installed")
    lines.append("- checkout: %s" % checkout())
    return "\n".join(lines)


def checkout():
    """The commit, '+ uncommitted changes' when the tree differs; '(no git)' without one."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    except OSError:
        return "(no git)"
    if head.returncode != 0:
        return "(no git repository)"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def build_section(args):
    ok = args.rc == 0
    text = "## Build\n\n%s in %d s (TORCH_CUDA_ARCH_LIST=%s, MAX_JOBS=%s); log: build.log" % (
        "built" if ok else "**FAILED (rc %d, %s)**" % (args.rc, STATUS.get(args.rc, "errors")),
        args.seconds,
        os.environ.get("TORCH_CUDA_ARCH_LIST", "?"),
        os.environ.get("MAX_JOBS", "?"),
    )
    if not ok:
        text += "\n\n```\n%s```" % tail(args.log, 40)
    return text


# ---------------------------------------------------------------- tests (junit XML)


def node_path(classname):
    """'tests.ops.test_nms_cuda' (or '...test_x.TestClass') -> 'tests/ops/test_nms_cuda.py'."""
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        path = "/".join(parts[:i]) + ".py"
        if os.path.exists(path):
            return path
    return "/".join(parts) + ".py"


def op_of(path):
    stem = os.path.basename(path)[: -len(".py")]
    stem = stem[len("test_") :] if stem.startswith("test_") else stem
    for op in sorted(OPS, key=len, reverse=True):
        if stem.startswith(op):
            return op
    if "/models/" in path:
        return "models"
    return stem


def read_junit(path):
    """[(node id, op, status, message)], status one of passed/failed/error/skipped; None when
    the file is missing or unreadable (pytest killed before it wrote it)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases = []
    for tc in root.iter("testcase"):
        path_ = node_path(tc.get("classname", ""))
        status, message = "passed", ""
        for tag in ("skipped", "failure", "error"):  # an error (e.g. in teardown) wins
            el = tc.find(tag)
            if el is not None:
                status = {"failure": "failed"}.get(tag, tag)
                message = el.get("message") or (el.text or "").strip()
        cases.append((path_ + "::" + tc.get("name", ""), op_of(path_), status, message))
    return cases


def first_line(text, width=160):
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def per_op_table(cases):
    counts = collections.OrderedDict()
    for _, op, status, _ in sorted(cases, key=lambda c: c[1]):
        counts.setdefault(op, collections.Counter())[status] += 1
    rows = ["| op | passed | failed | errors | skipped |", "|---|---:|---:|---:|---:|"]
    total = collections.Counter()
    for op, c in counts.items():
        total.update(c)
        rows.append(
            "| %s | %d | %s | %s | %d |"
            % (op, c["passed"], bold(c["failed"]), bold(c["error"]), c["skipped"])
        )
    rows.append(
        "| **all** | %d | %s | %s | %d |"
        % (total["passed"], bold(total["failed"]), bold(total["error"]), total["skipped"])
    )
    return "\n".join(rows)


def bold(n):
    return "**%d**" % n if n else "0"


def read_runs(out, runs):
    """Test cases of pytest runs ``out/<run>.xml``, and notes on the runs that left no XML."""
    cases, notes = [], []
    for run in runs:
        got = read_junit(os.path.join(out, run + ".xml"))
        if got is None:
            log = os.path.join(out, run + ".log")
            notes.append("%s: no junit XML; the log's tail:\n\n```\n%s```" % (run, tail(log)))
        else:
            cases += got
    return cases, notes


def tests_section(args):
    head = "## %s\n\n" % args.title
    head += "rc %d after %d s (%s); logs and junit XML: %s" % (
        args.rc,
        args.seconds,
        STATUS.get(args.rc, "finished"),
        ", ".join("%s.{log,xml}" % run for run in args.runs),
    )
    cases, notes = read_runs(args.out, args.runs)
    parts = [head] + notes
    if not cases:
        return "\n\n".join(parts + ["No test results."])
    parts.append(per_op_table(cases))
    bad = [c for c in cases if c[2] in ("failed", "error")]
    if bad:
        lines = ["Failed (%d):" % len(bad), ""]
        lines += ["- `%s`: %s" % (c[0], first_line(c[3])) for c in bad[:40]]
        if len(bad) > 40:
            lines.append("- ... and %d more (see the log)" % (len(bad) - 40))
        parts.append("\n".join(lines))
    reasons = collections.Counter(first_line(c[3], 120) for c in cases if c[2] == "skipped")
    if reasons:
        lines = ["Skipped, by reason:", ""]
        lines += ["- %d: %s" % (n, r) for r, n in reasons.most_common(15)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# ---------------------------------------------------------------- bandwidth and benchmarks


def copy_bandwidth(device, mib, min_time=0.2):
    """GB/s (1e9 bytes, read + written) of ``dst.copy_(src)`` on float32 tensors of ``mib``
    MiB each, median over blocks of calls (cvops.bench's timer, the device synchronised)."""
    import torch

    sys.path.insert(0, ROOT)
    from cvops.bench.harness import time_fn

    src = torch.ones(mib << 18, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(time_fn(lambda: dst.copy_(src), device, 3, min_time))
    return {"device": device, "mib": mib, "ms": ms, "gbps": 2 * src.nbytes / (ms * 1e6)}


def bandwidth_section(args):
    mib = args.mib or (1024 if args.device.startswith("cuda") else 256)
    try:
        bw = copy_bandwidth(args.device, mib)
    except Exception as exc:  # the benchmarks still run; their GB/s go without the share
        return "## Benchmarks\n\nCopy bandwidth: not measured (%s: %s)" % (
            type(exc).__name__,
            first_line(str(exc)),
        )
    with open(args.json, "w") as f:
        json.dump(bw, f, indent=1)
    return (
        "## Benchmarks\n\nCopy bandwidth (%s): `copy_` of %d MiB float32 in %.3f ms, %.0f GB/s "
        "read + written" % (bw["device"], bw["mib"], bw["ms"], bw["gbps"])
    )


def fmt_ms(ms):
    return "%.3f" % ms if ms < 1 else "%.2f" % ms


def bench_table(results, copy_gbps=None):
    """Markdown: one row per case; with byte counts (the losses) also GB/s and, given the
    device's copy bandwidth, the fraction of it."""
    with_bytes = any(r.get("bytes") for r in results)
    head = "| op | case | cvops ms | reference ms | speedup | reference |"
    rule = "|---|---|---:|---:|---:|---|"
    if with_bytes:
        head += " cvops GB/s | of copy |"
        rule += "---:|---:|"
    rows = [head, rule]
    for r in results:
        row = "| %s | %s | %s | %s | %.2fx | %s |" % (
            r["op"],
            r["case"],
            fmt_ms(r["cvops_ms"]),
            fmt_ms(r["reference_ms"]),
            r["reference_ms"] / r["cvops_ms"],
            r["reference"],
        )
        if with_bytes:
            if r.get("bytes"):
                gbps = r["bytes"] / (r["cvops_ms"] * 1e6)
                share = "%.0f%%" % (100 * gbps / copy_gbps) if copy_gbps else "-"
                row += " %.0f | %s |" % (gbps, share)
            else:
                row += " | |"
        rows.append(row)
    return "\n".join(rows)


def bench_section(args):
    head = "### Benchmarks: %s\n\nrc %d after %d s (%s); log: %s" % (
        args.title,
        args.rc,
        args.seconds,
        STATUS.get(args.rc, "finished"),
        os.path.basename(args.log) if args.log else "-",
    )
    try:
        with open(args.json) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return head + "\n\nNo results JSON: the log's tail:\n\n```\n%s```" % tail(args.log, 20)
    copy_gbps = None
    if args.bandwidth and os.path.exists(args.bandwidth):
        with open(args.bandwidth) as f:
            copy_gbps = json.load(f)["gbps"]
    meta = saved["meta"]
    note = "%s, torch %s, %s" % (meta["machine"], meta["torch"], meta["date"])
    if copy_gbps and any(r.get("bytes") for r in saved["results"]):
        note += (
            "; GB/s counts the least traffic of one call (logits and targets read by the "
            "forward and again by the backward, the gradient written), against the copy's "
            "%.0f GB/s" % copy_gbps
        )
    return "%s (%s)\n\n%s" % (head, note, bench_table(saved["results"], copy_gbps))


# ---------------------------------------------------------------- compute-sanitizer


def pick_sanitizer_tests(junit):
    ran = [c for c in read_junit(junit) or [] if c[2] in ("passed", "failed")]
    chosen = []
    for op, prefixes in SANITIZER_TESTS.items():
        picks = []
        for prefix in prefixes:
            hit = next((c[0] for c in ran if c[0].startswith(prefix)), None)
            if hit:
                picks.append(hit)
        if not picks:  # renamed tests: the op's first CUDA test that ran
            picks = [c[0] for c in ran if c[1] == op][:1]
        chosen += picks
    return chosen


REPORT = re.compile(
    r"^=+ +((?:Invalid|Misaligned|Out-of-range|Uninitialized)[^\n]*)\n"
    r"(?:=+[^\n]*\n){0,4}?=+ +at (?:0x[0-9a-f]+ in )?(?:void )?([^(\n]+)",
    re.M,
)


def sanitizer_section(args):
    head = (
        "## compute-sanitizer memcheck\n\nrc %d after %d s (%s); tests: sanitizer_tests.txt, "
        "log: sanitizer.log" % (args.rc, args.seconds, STATUS.get(args.rc, "finished"))
    )
    try:
        with open(os.path.join(args.out, "sanitizer.log"), errors="replace") as f:
            log = f.read()
    except OSError:
        return head + "\n\nNo log."
    errors = re.findall(r"ERROR SUMMARY: (\d+) error", log)
    if not errors:
        verdict = "no ERROR SUMMARY printed (cut short?)"
    else:
        verdict = "%s errors" % errors[-1] if errors[-1] == "0" else "**%s errors**" % errors[-1]
    parts = [head, "memcheck: " + verdict]
    # "========= Invalid __global__ read of size 4 bytes", then "=========     at kernel(...)"
    reports = collections.Counter(REPORT.findall(log))
    if reports:
        lines = ["Reports (error, kernel, count):", ""]
        lines += [
            "- %s in `%s`: %d" % (err, kernel, n) for (err, kernel), n in reports.most_common(15)
        ]
        parts.append("\n".join(lines))
    cases, _ = read_runs(args.out, ["sanitizer"])
    if cases:
        parts.append(per_op_table(cases))
    return "\n\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", help="the summary.md to append to")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("device")
    p = sub.add_parser("build")
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--log", required=True)
    p = sub.add_parser("tests")
    p.add_argument("--title", required=True)
    p.add_argument("--out", required=True, help="the folder of the runs' logs and junit XML")
    p.add_argument("--runs", nargs="+", required=True, help="NAME for NAME.log and NAME.xml")
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--seconds", type=int, default=0)
    p = sub.add_parser("bandwidth")
    p.add_argument("--device", default="cuda")
    p.add_argument("--mib", type=int, help="MiB per tensor (1024 on CUDA, 256 on CPU)")
    p.add_argument("--json", required=True)
    p = sub.add_parser("bench")
    p.add_argument("--title", required=True)
    p.add_argument("--json", required=True, help="results-<device>.json of python -m cvops.bench")
    p.add_argument("--bandwidth", help="the bandwidth command's JSON")
    p.add_argument("--log")
    p.add_argument("--rc", type=int, default=0)
    p.add_argument("--seconds", type=int, default=0)
    p = sub.add_parser("sanitizer")
    p.add_argument("--out", required=True, help="the folder of sanitizer.log and sanitizer.xml")
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--seconds", type=int, default=0)
    p = sub.add_parser("pick-sanitizer-tests", help="print node ids, one a line")
    p.add_argument("--junit", required=True, help="junit XML of the CUDA tests")
    args = parser.parse_args(argv)

    if args.cmd == "pick-sanitizer-tests":
        for node in pick_sanitizer_tests(args.junit):
            print(node)
        return
    section = {
        "device": device_section,
        "build": build_section,
        "tests": tests_section,
        "bandwidth": bandwidth_section,
        "bench": bench_section,
        "sanitizer": sanitizer_section,
    }[args.cmd](args)
    if args.summary:
        append(args.summary, section)
    else:
        print(section)


if __name__ == "__main__":
    main()
