"""Ragged-batch utilities: counts, offsets, and ragged <-> dense ``[B, n, C]``.

A ragged batch is a flat tensor ``x: [N, C]`` with a sorted sample-id vector
``batch: [N]``; the dense form pads every sample to the largest one and carries
a validity mask.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._checks import check_batch, check_tensor

__all__ = ["batch_counts", "batch_ptr", "slot_in_sample", "to_dense_batch"]


def batch_counts(batch: Tensor, num_samples: Optional[int] = None) -> Tensor:
    """Points per sample. ``batch: [N]`` sorted -> ``[B]`` int64."""
    return torch.bincount(batch, minlength=num_samples or 0)


def batch_ptr(counts: Tensor) -> Tensor:
    """Offsets of each sample: ``counts: [B]`` -> ``ptr: [B + 1]`` (CSR style)."""
    ptr = counts.new_zeros(counts.numel() + 1)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


def slot_in_sample(batch: Tensor, ptr: Tensor) -> Tensor:
    """Index of every point inside its own sample: ``[N]`` (0 .. n_b - 1)."""
    return torch.arange(batch.numel(), device=batch.device) - ptr[batch]


def to_dense_batch(
    x: Tensor, batch: Optional[Tensor] = None, fill_value: float = 0.0, max_points: Optional[int] = None
) -> Tuple[Tensor, Tensor]:
    """Pad a ragged batch into a dense one.

    Args:
        x: ``[N, ...]`` per-point values.
        batch: ``[N]`` sorted sample ids (``None``: one sample).
        fill_value: value of the padding entries.
        max_points: pad to this many points per sample (default: the largest sample).

    Returns:
        ``dense: [B, n, ...]`` and ``mask: [B, n]`` (True where a real point is).
    """
    x = check_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {tuple(x.shape)}")
    batch, num_samples = check_batch(batch, x.size(0), x.device)
    counts = batch_counts(batch, num_samples)
    n = int(counts.max())
    if max_points is not None:
        if max_points < n:
            raise ValueError(f"max_points={max_points} is smaller than the largest sample ({n} points)")
        n = max_points
    ptr = batch_ptr(counts)
    slot = slot_in_sample(batch, ptr)
    dense = x.new_full((num_samples, n) + tuple(x.shape[1:]), fill_value)
    dense[batch, slot] = x
    mask = torch.zeros(num_samples, n, dtype=torch.bool, device=x.device)
    mask[batch, slot] = True
    return dense, mask
