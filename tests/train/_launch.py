"""Launch a training command under torchrun from a test (for the 2-process CPU DDP tests)."""

import os
import socket
import subprocess
import sys

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(module: str, args, nproc: int = 2, timeout: int = 300) -> None:
    """``python -m torch.distributed.run --nproc_per_node=nproc -m module *args`` on CPU
    (gloo, one thread per process, a free port, no inherited torchrun variables); asserts that
    it succeeds, with the end of its output otherwise."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=%d" % nproc,
        "--master_port",
        str(free_port()),
        "-m",
        module,
        *[str(a) for a in args],
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
