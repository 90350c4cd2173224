"""The build itself: CUDA kernels present in a CUDA torch build, import without _C."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import cvops


def test_extension_loaded():
    assert cvops.has_ops(), cvops.extension.load_error()


def test_cuda_kernels_compiled_when_torch_has_cuda():
    # Catches a silently CPU-only build without needing a GPU. Set CVOPS_EXPECT_CPU_ONLY=1
    # only for a deliberate CVOPS_WITH_CUDA=0 build.
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU-only build")
    if os.environ.get("CVOPS_EXPECT_CPU_ONLY") == "1":
        pytest.skip("CVOPS_EXPECT_CPU_ONLY=1")
    assert cvops.has_cuda(), "torch is a CUDA build but cvops._C has no CUDA kernels"
    kernels = cvops.extension.registered_kernels()
    assert "cvops::roi_align" in kernels, kernels
    # Every op with tensor inputs must have a CUDA kernel (those without, _build_info and the
    # depthwise CPU plan's helpers, run on no device), except the Winograd transforms, which
    # serve only the models' CPU inference path (models/_fused_layers.py).
    missing = [
        op
        for op, keys in kernels.items()
        if _takes_tensors(op) and "CUDA" not in keys and op not in _CPU_ONLY
    ]
    assert not missing, "ops without CUDA kernels: %s" % missing


_CPU_ONLY = {"cvops::_winograd_f2x3_input", "cvops::_winograd_f2x3_output_"}


def _takes_tensors(op: str) -> bool:
    schema = torch._C._get_schema(op, "")
    return any("Tensor" in str(arg.type) for arg in schema.arguments)


def test_info_command_runs():
    out = subprocess.run(
        [sys.executable, "-m", "cvops.info"], capture_output=True, text=True, check=True
    ).stdout
    assert "torch %s" % torch.__version__ in out
    assert "cvops::roi_align" in out


@pytest.mark.parametrize("broken", ["missing", "corrupt"])
def test_import_without_working_extension(tmp_path, broken):
    # A copy of the Python package without _C (or with an unloadable one) still imports and
    # explains itself when an op is called.
    pkg = os.path.dirname(cvops.__file__)
    shutil.copytree(
        pkg, tmp_path / "cvops", ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__")
    )
    if broken == "corrupt":
        import importlib.machinery

        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        (tmp_path / "cvops" / ("_C" + suffix)).write_bytes(b"not a shared library")
    code = (
        "import torch, cvops\n"
        "assert not cvops.has_ops() and not cvops.has_cuda()\n"
        "try:\n"
        "    cvops.roi_align(torch.zeros(1, 1, 2, 2), torch.zeros(0, 5), 1)\n"
        "except cvops.ExtensionNotAvailable as e:\n"
        "    print('ERR', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert "ERR" in out and "pip install --no-build-isolation" in out
    assert ("not found" in out) if broken == "missing" else ("failed to load" in out)
