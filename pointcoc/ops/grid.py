"""Grid centre proposal: the bins of 2-D adaptive average pooling, for points.

Along an axis of length ``L`` split into ``n`` bins, bin ``t`` covers the
half-open range ``[floor(t*L/n), ceil((t+1)*L/n))`` (as
``torch.nn.functional.adaptive_avg_pool2d``). Bins may overlap, and when
``n > L`` several bins cover the same pixels. A point at position ``r`` lies
in the bins ``t`` with ``floor(r*n/L) <= t <= ceil((r+1)*n/L) - 1``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .._checks import check_k, check_tensor
from .batch import batch_ptr

__all__ = ["grid_proposal"]


def grid_proposal(coord: Tensor, extent: Tensor, bins: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Every (point, bin) membership of the grid proposal.

    Args:
        coord: ``[N, 2]`` integer (row, col) of each point inside its own region, 0-based.
        extent: ``[N, 2]`` integer (h, w) of the region each point belongs to.
        bins: ``(bins along rows, bins along cols)``.

    Returns:
        ``point_index: [E]`` and ``bin_index: [E]`` (int64), one entry per membership,
        ``bin_index = t_row * bins[1] + t_col``; sorted by point, then bin.
        Bin ``t`` of an axis of length ``L`` holds ``[floor(t*L/n), ceil((t+1)*L/n))``, so the
        mean of a bin's members is the corresponding ``adaptive_avg_pool2d`` output.
    """
    coord = check_tensor(coord, "coord", ndim=2)
    extent = check_tensor(extent, "extent", ndim=2)
    if coord.size(1) != 2:
        raise ValueError(f"coord must be [N, 2] (row, col), got shape {tuple(coord.shape)}")
    if tuple(extent.shape) != tuple(coord.shape):
        raise ValueError(f"extent must have the shape of coord {tuple(coord.shape)}, got {tuple(extent.shape)}")
    coord = _check_integer(coord, "coord")
    extent = _check_lengths(extent, "extent")
    if extent.device != coord.device:
        raise ValueError(f"extent must be on the device of coord ({coord.device}), got {extent.device}")
    if bool(((coord < 0) | (coord >= extent)).any()):
        raise ValueError("coord must lie inside its region: 0 <= coord < extent for both axes")
    if not isinstance(bins, Sequence) or len(bins) != 2:
        raise TypeError(f"bins must be a pair (bins along rows, bins along cols), got {bins!r}")
    nbins = torch.tensor([check_k(bins[0], "bins[0]"), check_k(bins[1], "bins[1]")], device=coord.device)

    first = torch.div(coord * nbins, extent, rounding_mode="floor")  # [N, 2] lowest bin per axis
    last = torch.div((coord + 1) * nbins + extent - 1, extent, rounding_mode="floor") - 1  # highest bin
    span = last - first + 1  # [N, 2] bins per axis, >= 1
    per_point = span[:, 0] * span[:, 1]
    point_index = torch.repeat_interleave(torch.arange(coord.size(0), device=coord.device), per_point)
    local = torch.arange(point_index.numel(), device=coord.device) - batch_ptr(per_point)[:-1][point_index]
    span_col = span[point_index, 1]
    row_bin = first[point_index, 0] + torch.div(local, span_col, rounding_mode="floor")
    col_bin = first[point_index, 1] + local % span_col
    return point_index, row_bin * nbins[1] + col_bin


def _check_integer(t: Tensor, name: str) -> Tensor:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    return t.long()


def _check_lengths(length: object, name: str) -> Tensor:
    length = _check_integer(check_tensor(length, name), name)
    if length.numel() and int(length.min()) < 1:
        raise ValueError(f"{name} must hold lengths >= 1, got {int(length.min())}")
    return length
