"""Model registry in the timm manner: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import fnmatch
from typing import Callable, Dict, List

from torch import nn

from .._checks import check_model_kwargs

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model constructor under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model: ``create_model("coc_tiny", num_classes=10)``.

    The settings models share are checked first (``TypeError``/``ValueError`` naming
    the argument): ``num_classes`` an int >= 0, ``in_chans``/``pos_dim``/``points``
    ints >= 1, ``drop_path_rate``/``drop_rate``/``dropout`` in [0, 1).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(list_models())}")
    check_model_kwargs(kwargs)
    return _MODELS[name](**kwargs)
