import os
import subprocess
import sys

import pytest
import torch

import cvops

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
requires_ops = pytest.mark.skipif(not cvops.has_ops(), reason="cvops._C is not built")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, **env):
    """Run `code` in a fresh interpreter (the repository on its path; `env` added to the
    environment, a None value removing the variable) and assert that it exits cleanly and
    prints OK: for settings read once per process, like CVOPS_DISABLE_AVX2."""
    full = dict(os.environ)
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    for name, value in env.items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=ROOT
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def devices():
    """CPU always; CUDA as a parameter that skips without a GPU."""
    return ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


@pytest.fixture
def default_depthwise_path(monkeypatch):
    """Depthwise calls on CPU take the plan's own kernels: no kernel forced in this process
    (CVOPS_DEPTHWISE_CPU_PATH is read once per process, so a value it had at start-up is
    overridden here), and the variable unset for the subprocesses a test starts."""
    import importlib

    monkeypatch.delenv("CVOPS_DEPTHWISE_CPU_PATH", raising=False)
    dw = importlib.import_module("cvops.ops.depthwise_conv2d")  # the module, not the function
    with dw.force_cpu_kernel(None):
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
