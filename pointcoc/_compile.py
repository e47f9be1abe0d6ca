"""``torch.compile`` helpers that keep ``torch._dynamo`` out of ``import pointcoc``."""

from __future__ import annotations

import functools
from typing import Callable, Dict, TypeVar

import torch

__all__ = ["eager_under_compile"]

F = TypeVar("F", bound=Callable)


_DISABLED: Dict[Callable, Callable] = {}
"""``fn -> torch.compiler.disable(fn)``, filled on first use under compilation (a plain dict: dynamo
traces through ``functools.lru_cache`` wrappers and warns about them)."""


def _disabled(fn: Callable) -> Callable:
    if fn not in _DISABLED:
        _DISABLED[fn] = torch.compiler.disable(fn)
    return _DISABLED[fn]


def eager_under_compile(fn: F) -> F:
    """``torch.compiler.disable(fn)``, applied when something compiles rather than at import.

    ``torch.compiler.disable`` imports ``torch._dynamo`` (about 70 MB of resident memory);
    eager callers run ``fn`` directly, and while dynamo traces, the call goes to the
    disabled ``fn``, which runs eagerly (one graph break, as with the decorator).
    """

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return _disabled(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
