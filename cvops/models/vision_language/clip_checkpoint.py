"""Load CLIP weights from the checkpoints people have: ``python -m cvops.train.contrastive``'s
(``checkpoint_last.pt``: the model name and keywords come with it), open_clip's
(``open_clip_pytorch_model.bin``/``.safetensors`` state dicts, or its training checkpoints
``{"state_dict": {"module.*": ...}}``) and OpenAI's TorchScript ``.pt`` files."""

import os
from typing import Any, Dict, Optional, Tuple

import torch

from .._registry import get_model

# keys of OpenAI's TorchScript archives that are not weights
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
TRAIN_PREFIX = "clip."  # cvops.train.contrastive saves its adapter's state_dict


def _read(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError("checkpoint %r does not exist" % path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as exc:
        if "TorchScript" not in str(exc) and "jit" not in str(exc).lower():
            raise
        return torch.jit.load(path, map_location="cpu").state_dict()


def _strip(state: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def clip_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict with OpenAI's names, meta)``; ``meta`` holds ``model`` and
    ``model_kwargs`` for a cvops training checkpoint, nothing otherwise."""
    ck = _read(path)
    meta: Dict[str, Any] = {}
    if isinstance(ck.get("meta"), dict) and ck["meta"].get("task") == "contrastive":
        meta = ck["meta"]
        state = _strip(ck["model"], TRAIN_PREFIX)
    elif isinstance(ck.get("state_dict"), dict):
        state = _strip(ck["state_dict"], "module.")
    else:
        state = dict(ck)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    return state, meta


def load_clip(name: Optional[str], checkpoint: Optional[str] = None, **kwargs) -> torch.nn.Module:
    """CLIP model ``name`` (default: the training checkpoint's) with the ``checkpoint``'s
    weights loaded with ``strict=True``; random weights without a checkpoint."""
    state, meta = clip_state_dict(checkpoint) if checkpoint else ({}, {})
    name = name or meta.get("model")
    if not name:
        raise ValueError("--model is needed: %s does not name its model" % checkpoint)
    model = get_model(name, **{**meta.get("model_kwargs", {}), **kwargs})
    if checkpoint:
        model.load_state_dict(state, strict=True)
    return model
