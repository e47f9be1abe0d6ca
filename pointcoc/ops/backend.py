"""Backend switch for the sampling / neighbour operations.

Two implementations exist for :func:`pointcoc.ops.fps` and :func:`pointcoc.ops.knn`:

* ``"torch"``: the pure-PyTorch path of this package (any device, any float dtype);
* torch-cluster (``import torch_cluster``): its compiled kernels, used automatically
  under the default setting ``"auto"`` when the package is importable and its
  semantics match the call (see the two functions for the exact conditions).

Both return identical indices, except where distances tie exactly at the
selection boundary (the k-th neighbour of kNN, the farthest point of an FPS
step): torch-cluster's kernels do not promise which of the tied points wins.
The setting is process-wide (not per thread).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from types import ModuleType
from typing import Iterator, Optional

__all__ = ["BACKENDS", "set_backend", "get_backend", "use_backend", "torch_cluster_module"]

BACKENDS = ("auto", "torch")

_backend = "auto"


def _check_backend(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, one of {BACKENDS}, got {type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select the backend: ``"auto"`` (torch-cluster when installed) or ``"torch"`` (pure path)."""
    global _backend
    _backend = _check_backend(name)


def get_backend() -> str:
    """The current setting, ``"auto"`` or ``"torch"``."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that sets the backend and restores the previous setting on exit.

    >>> with use_backend("torch"):
    ...     idx = fps(pos, batch)        # pure-PyTorch path even if torch-cluster is installed
    """
    global _backend
    previous = _backend
    _backend = _check_backend(name)
    try:
        yield
    finally:
        _backend = previous


@functools.lru_cache(maxsize=1)
def _import_torch_cluster() -> Optional[ModuleType]:
    try:
        return importlib.import_module("torch_cluster")
    except (ImportError, OSError):  # not installed, or built against another torch (undefined symbols)
        return None


def torch_cluster_module() -> Optional[ModuleType]:
    """The ``torch_cluster`` module when the backend is ``"auto"`` and it imports, else ``None``."""
    if _backend != "auto":
        return None
    return _import_torch_cluster()
