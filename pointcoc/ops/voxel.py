"""Voxel clustering: grid_cluster (torch-cluster) and voxel_grid (PyG), ragged batches.

A point's voxel along coordinate ``p`` is ``trunc((pos[p] - start[p]) / size[p])`` (floor for
points at or above ``start``), computed in float64 from the given values; the cluster id is
``sum_p voxel[p] * prod_{q < p} num_voxels[q]`` with ``num_voxels[q] = trunc((end[q] -
start[q]) / size[q]) + 1``, i.e. the first coordinate varies fastest. ``start`` / ``end``
default to the minimum / maximum over all points. Ids are not consecutive (PyG's
``consecutive_cluster`` or ``torch.unique(..., return_inverse=True)`` renumbers them).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._checks import check_batch, check_finite, check_float, check_tensor

__all__ = ["grid_cluster", "voxel_grid"]

Spec = Union[float, Sequence[float], Tensor]


def grid_cluster(pos: Tensor, size: Spec, start: Optional[Spec] = None, end: Optional[Spec] = None) -> Tensor:
    """Voxel id of every point, as torch-cluster's ``grid_cluster``.

    Args:
        pos: ``[N, D]`` float positions (``[N]`` is taken as ``[N, 1]``).
        size: voxel size, one number or one per coordinate (``> 0``).
        start, end: grid corners, one number or one per coordinate (default: min / max of ``pos``).

    Returns:
        ``[N]`` LongTensor of voxel ids (see the module docstring).
    """
    pos = _positions(pos)
    dim = pos.size(1)
    size = _per_coordinate(size, "size", dim, pos.device)
    if bool((size <= 0).any()):
        raise ValueError("size must be > 0 along every coordinate")
    wide = pos.double()
    start = wide.amin(0) if start is None else _per_coordinate(start, "start", dim, pos.device)
    end = wide.amax(0) if end is None else _per_coordinate(end, "end", dim, pos.device)
    num_voxels = torch.trunc((end - start) / size).long() + 1
    stride = torch.cumprod(torch.cat([num_voxels.new_ones(1), num_voxels[:-1]]), 0)
    voxel = torch.trunc((wide - start) / size).long()
    return (voxel * stride).sum(1)


def voxel_grid(
    pos: Tensor, size: Spec, batch: Optional[Tensor] = None, start: Optional[Spec] = None, end: Optional[Spec] = None
) -> Tensor:
    """Voxel id of every point with samples kept apart, as PyG's ``voxel_grid``.

    The sample id is appended to the positions as one more coordinate with voxel size 1
    (start 0, end the largest id when ``start`` / ``end`` are given), so points of
    different samples never share a voxel.

    Returns:
        ``[N]`` LongTensor of voxel ids.
    """
    pos = _positions(pos)
    dim = pos.size(1)
    batch, _ = check_batch(batch, pos.size(0), pos.device, "batch")
    points = torch.cat([pos.double(), batch[:, None].double()], 1)
    one = torch.ones(1, dtype=torch.float64, device=pos.device)
    size = torch.cat([_per_coordinate(size, "size", dim, pos.device), one])
    if start is not None:
        start = torch.cat([_per_coordinate(start, "start", dim, pos.device), one - 1])
    if end is not None:
        end = torch.cat([_per_coordinate(end, "end", dim, pos.device), batch[-1:].double()])
    return grid_cluster(points, size, start, end)


def _positions(pos: object) -> Tensor:
    pos = check_tensor(pos, "pos")
    if pos.dim() == 1:
        pos = pos[:, None]
    if pos.dim() != 2:
        raise ValueError(f"pos must be [N, D] (or [N]), got shape {tuple(pos.shape)}")
    if pos.size(0) == 0:
        raise ValueError("pos is empty: a point set needs at least one point")
    return check_finite(check_float(pos, "pos"), "pos")


def _per_coordinate(value: object, name: str, dim: int, device: torch.device) -> Tensor:
    """One float64 value per coordinate from a number, a sequence or a tensor."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, a sequence or a tensor, got bool")
    if isinstance(value, Tensor):
        value = value.detach().to(device=device, dtype=torch.float64).reshape(-1)
    elif isinstance(value, (int, float)):
        value = torch.tensor([float(value)], dtype=torch.float64, device=device)
    elif isinstance(value, Sequence):
        value = torch.tensor([float(v) for v in value], dtype=torch.float64, device=device)
    else:
        raise TypeError(f"{name} must be a number, a sequence or a tensor, got {type(value).__name__}")
    if value.numel() == 1:
        value = value.expand(dim)
    if value.numel() != dim:
        raise ValueError(f"{name} must have one value or one per coordinate ({dim}), got {value.numel()}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite")
    return value
