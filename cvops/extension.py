"""Loads the compiled library ``cvops._C`` and reports what it provides.

``import cvops`` never fails because of the extension: if ``_C`` is missing or was built
for another torch, the reason is kept and every op raises :class:`ExtensionNotAvailable`
with it and with the command to rebuild.
"""

import importlib.machinery
import json
import os

import torch

_LIB_DIR = os.path.dirname(os.path.abspath(__file__))
_REBUILD = (
    "rebuild it with `pip install --no-build-isolation -v .` (or `-e .`) from the cvops checkout"
)


class ExtensionNotAvailable(RuntimeError):
    """Raised when an op is called but the compiled extension could not be loaded."""


def _find_library():
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_LIB_DIR, "_C" + suffix)
        if os.path.exists(path):
            return path
    return None


def _build_config():
    try:
        from . import _build_config as cfg
    except ImportError:
        return None
    return cfg


def _load():
    path = _find_library()
    if path is None:
        return False, "cvops._C was not found next to %s: the C++/CUDA extension is not built" % (
            _LIB_DIR
        )
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as exc:
        cfg = _build_config()
        built_for = getattr(cfg, "TORCH_VERSION", "an unknown torch")
        return (
            False,
            "cvops._C (%s) failed to load: %s. It was built for torch %s; this is torch %s"
            % (path, exc, built_for, torch.__version__),
        )
    return True, None


_LOADED, _LOAD_ERROR = _load()


def has_ops():
    """True when the compiled ops are loaded and callable."""
    return _LOADED


def load_error():
    """Why the extension did not load (None when it did)."""
    return _LOAD_ERROR


def require_ops():
    if not _LOADED:
        raise ExtensionNotAvailable("%s; %s." % (_LOAD_ERROR, _REBUILD))


def _has_kernel(op_name, dispatch_key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(op_name, dispatch_key)


def has_cuda():
    """True when CUDA kernels were compiled into ``_C`` (whether or not a GPU is present)."""
    return _LOADED and _has_kernel("cvops::roi_align", "CUDA")


def build_info():
    """What ``_C`` reports about its own build, or None when it is not loaded."""
    if not _LOADED:
        return None
    return json.loads(torch.ops.cvops._build_info())


def registered_kernels():
    """Map of cvops op name -> dispatch keys with a kernel (CPU, CUDA, Autocast...)."""
    if not _LOADED:
        return {}
    keys = ["CPU", "CUDA", "AutocastCPU", "AutocastCUDA", "Autograd", "Meta"]
    ops = {}
    for name in sorted(torch._C._dispatch_get_all_op_names()):
        if name.startswith("cvops::"):
            ops[name] = [k for k in keys if _has_kernel(name, k)]
    return ops
