"""Input validation shared by every public entry point.

Each check raises ``TypeError`` (wrong kind of object / dtype) or ``ValueError``
(wrong shape or content) with a message that names the offending argument and
says what was expected.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_float",
    "check_finite",
    "check_positions",
    "check_batch",
    "check_k",
    "check_ratio",
]


def check_tensor(t: object, name: str, ndim: Optional[int] = None) -> Tensor:
    """Require a ``torch.Tensor`` (of rank ``ndim`` when given)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_float(t: Tensor, name: str) -> Tensor:
    """Require a floating-point tensor."""
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_finite(t: Tensor, name: str) -> Tensor:
    """Require every value to be finite (no NaN, no inf)."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=-1).sum()) if t.dim() > 1 else int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains NaN or inf values ({bad} rows affected); all values must be finite")
    return t


def check_positions(pos: object, name: str = "pos") -> Tensor:
    """Validate a point-position tensor ``pos: [N, P]`` (float, finite, N > 0)."""
    pos = check_tensor(pos, name, ndim=2)
    check_float(pos, name)
    if pos.size(0) == 0:
        raise ValueError(f"{name} is empty: a point set needs at least one point")
    if pos.size(1) == 0:
        raise ValueError(f"{name} must have at least one coordinate per point, got shape {tuple(pos.shape)}")
    return check_finite(pos, name)


def check_batch(batch: object, num_points: int, device: torch.device, name: str = "batch") -> Tuple[Tensor, int]:
    """Validate a sample-assignment vector and return ``(batch, num_samples)``.

    ``batch: [N]`` must be an integer tensor of length ``num_points``, non-negative
    and sorted (non-decreasing), as in PyG. ``None`` means one sample.
    Samples with no points (gaps in the ids) are allowed; ``num_samples`` is
    ``batch.max() + 1``.
    """
    if batch is None:
        return torch.zeros(num_points, dtype=torch.long, device=device), 1
    batch = check_tensor(batch, name, ndim=1)
    if batch.is_floating_point() or batch.dtype == torch.bool or batch.is_complex():
        raise TypeError(f"{name} must be an integer tensor of sample ids, got dtype {batch.dtype}")
    if batch.numel() != num_points:
        raise ValueError(f"{name} must have one entry per point ({num_points}), got {batch.numel()}")
    if batch.device != device:
        raise ValueError(f"{name} is on {batch.device} but the points are on {device}")
    if num_points == 0:
        raise ValueError(f"{name} is empty: a point set needs at least one point")
    batch = batch.long()
    if int(batch.min()) < 0:
        raise ValueError(f"{name} must hold non-negative sample ids")
    if num_points > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{name} must be sorted in non-decreasing order (points grouped by sample)")
    return batch, int(batch[-1]) + 1


def check_k(k: object, name: str = "k") -> int:
    """Require a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return k


def check_ratio(ratio: object, name: str = "ratio") -> float:
    """Require a float in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(ratio).__name__}")
    ratio = float(ratio)
    if not (0.0 < ratio <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {ratio}")
    return ratio


def check_ptr(ptr: object, num_points: int, device: torch.device, name: str = "ptr") -> Tensor:
    """Validate CSR sample offsets ``ptr: [B + 1]`` and return the matching sorted ``batch: [N]``.

    ``ptr`` must be a 1-D integer tensor on ``device``, start at 0, never decrease, and end at
    ``num_points`` (sample ``b`` holds points ``ptr[b]`` to ``ptr[b + 1] - 1``), as in PyG.
    """
    ptr = check_tensor(ptr, name, ndim=1)
    if ptr.is_floating_point() or ptr.dtype == torch.bool or ptr.is_complex():
        raise TypeError(f"{name} must be an integer tensor of sample offsets, got dtype {ptr.dtype}")
    if ptr.device != device:
        raise ValueError(f"{name} is on {ptr.device} but the points are on {device}")
    if ptr.numel() < 2:
        raise ValueError(f"{name} must hold at least 2 offsets ([B + 1] for B samples), got {ptr.numel()}")
    ptr = ptr.long()
    if int(ptr[0]) != 0 or int(ptr[-1]) != num_points:
        raise ValueError(f"{name} must start at 0 and end at the number of points ({num_points})")
    if bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing")
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=device), ptr[1:] - ptr[:-1])


def batch_or_ptr(
    batch: object, ptr: object, num_points: int, device: torch.device, batch_name: str, ptr_name: str
) -> object:
    """The ``batch`` argument, or the batch vector described by ``ptr`` (at most one may be given)."""
    if ptr is None:
        return batch
    if batch is not None:
        raise ValueError(f"give {batch_name} or {ptr_name}, not both")
    return check_ptr(ptr, num_points, device, ptr_name)


def check_bool(value: object, name: str) -> bool:
    """Require a Python bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value
