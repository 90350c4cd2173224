"""The benchmark command (python -m cvops.bench): one small case end to end, and the opt-in
fixed malloc thresholds recorded in its JSON."""

import json
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
    malloc = saved["meta"]["malloc"]
    if not fixed:
        assert malloc == "glibc defaults"
    elif platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert malloc.startswith("fixed: glibc mmap threshold 32 MiB")
