"""The model registry behind :func:`cvops.models.get_model` and :func:`list_models`."""

import fnmatch
from typing import Callable, Dict, List, Optional

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a public builder under its function name (decorator)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError("a model named %r is already registered" % name)
    _MODELS[name] = fn
    return fn


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted names of the registered models, optionally filtered by an fnmatch ``pattern``
    (``list_models("resnet*")``)."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``."""
    if not isinstance(name, str):
        raise TypeError("model name must be a str, got %s" % type(name).__name__)
    try:
        return _MODELS[name]
    except KeyError:
        close = [n for n in _MODELS if name.lower() in n or n in name.lower()][:5]
        hint = (" (did you mean %s?)" % ", ".join(close)) if close else ""
        raise ValueError(
            "unknown model %r%s; list_models() gives the %d registered names"
            % (name, hint, len(_MODELS))
        ) from None


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with the builder's keyword options
    (``get_model("resnet50", num_classes=10)``). Weights are random; load a checkpoint
    with ``model.load_state_dict(state_dict)``."""
    return get_model_builder(name)(**kwargs)
