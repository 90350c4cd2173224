"""The benchmark command (python -m cvops.bench): one small case end to end, the opt-in
fixed malloc thresholds recorded in its JSON, and its page-fault counts."""

import json
import mmap
import os
import platform

import pytest

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
