"""Anchors of a point-mode reducer and order-independent farthest point sampling.

Grid subsampling (the default): one anchor per occupied cell of ``stride`` lattice nodes
per axis; the anchor of cell ``c`` sits at lattice coordinate ``c * s - p + (k - 1) / 2``
(in the input's pitch units), the centre of the convolution window of output ``c``. On a
full lattice the anchors are exactly the window positions of the grid reference. The
anchors of a stage form the next stage's lattice: pitch ``s * pitch``, node ``c``.

FPS and random anchors (options) pick as many input points per sample as grid
subsampling has cells.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._compile import eager_under_compile
from ..ops.batch import batch_counts, batch_ptr
from ..ops.voxel import voxel_grid
from .geometry import PointGeometry, lattice_coordinates

__all__ = ["ANCHORS", "cell_ids", "grid_subsample", "fps_from_centre", "reduce_anchors"]

ANCHORS = ("grid", "fps", "random")


def _next_lattice(geo: PointGeometry, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
    """Pitch, origin and extent of the lattice after a ``kernel / stride / padding`` reducer."""
    k = geo.pitch.new_tensor(kernel)
    s = torch.tensor(stride, device=geo.pos.device)
    p = geo.pitch.new_tensor(padding)
    origin = geo.origin + ((k - 1) / 2 - p) * geo.pitch
    extent = torch.div(geo.grid_size - 1, s, rounding_mode="floor") + 1
    return geo.pitch * s, origin, extent, s


def cell_ids(batch: Tensor, cell: Tensor, extent: Tensor) -> Tuple[Tensor, int]:
    """Linear id ``batch * S + row-major cell`` (``S`` = the largest sample's cell count)."""
    stride_ids = torch.ones_like(extent)
    for axis in range(extent.size(1) - 2, -1, -1):
        stride_ids[:, axis] = stride_ids[:, axis + 1] * extent[:, axis + 1]
    S = int((extent.prod(1)).max())
    return batch * S + (cell * stride_ids[batch]).sum(1), S


def grid_subsample(geo: PointGeometry, kernel, stride, padding) -> PointGeometry:
    """The anchors of grid subsampling, in (sample, cell) row-major order, as the next lattice.

    A node's cell is its voxel of edge ``stride`` (:func:`pointcoc.ops.voxel_grid` on the
    lattice coordinates, axes reversed so that sorted voxel ids run row-major within a sample).
    """
    pitch, origin, extent, s = _next_lattice(geo, kernel, stride, padding)
    cells = extent.amax(0)  # [D] cells per axis, enough for every sample
    size = s.flip(0).double()
    ids = voxel_grid(geo.pixel.flip(1).double(), size, geo.batch, start=0.0, end=(cells - 1).flip(0) * size)
    local = torch.unique(ids)  # sorted: canonical order whatever the input order
    coords = torch.empty(local.numel(), extent.size(1), dtype=torch.long, device=local.device)
    for axis in range(extent.size(1) - 1, -1, -1):  # the last axis varies fastest
        coords[:, axis] = local % cells[axis]
        local = torch.div(local, cells[axis], rounding_mode="floor")
    batch = local
    pos = origin[batch] + coords.to(origin.dtype) * pitch[batch]
    return PointGeometry(
        pos=pos, batch=batch, num_samples=geo.num_samples, pixel=coords, grid_size=extent, pitch=pitch, origin=origin
    )


def fps_from_centre(
    pos: Tensor,
    group: Tensor,
    num_groups: int,
    ratio: Optional[float] = None,
    num_points: Optional[int] = None,
    random_start: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """FPS in every group (``group`` sorted), ``ceil(ratio * n_g)`` (or ``num_points``) points.

    Unless ``random_start``, each group starts at its point farthest from the centre of its
    bounding box (ties: the lower index), so on canonically ordered points the picks do not
    depend on the input order. Returns indices grouped by group, each in selection order.
    """
    from ..ops import fps  # late import: ops and nn are siblings

    if random_start:
        return fps(pos, group, ratio=ratio, num_points=num_points, random_start=True, generator=generator)
    P = pos.size(1)
    rows = group[:, None].expand(-1, P)
    lo = pos.new_full((num_groups, P), float("inf")).scatter_reduce_(0, rows, pos, "amin")
    hi = pos.new_full((num_groups, P), float("-inf")).scatter_reduce_(0, rows, pos, "amax")
    dist = ((pos - (lo[group] + hi[group]) / 2) ** 2).sum(1)
    far = dist.new_full((num_groups,), float("-inf")).scatter_reduce_(0, group, dist, "amax")
    idx = torch.arange(pos.size(0), device=pos.device)
    cand = torch.where(dist == far[group], idx, torch.full_like(idx, pos.size(0)))
    start = torch.full((num_groups,), pos.size(0), dtype=torch.long, device=pos.device).scatter_reduce_(
        0, group, cand, "amin"
    )
    first = torch.zeros(pos.size(0), dtype=torch.bool, device=pos.device)
    first[start[start < pos.size(0)]] = True
    order = torch.argsort(group * 2 + (~first).long(), stable=True)  # each group's start first
    return order[fps(pos[order], group[order], ratio=ratio, num_points=num_points, random_start=False)]


# Eager under torch.compile: anchors are position-only integer work (cell ids, FPS) with
# data-dependent sizes; the reducer's float maths around them stays compiled.
@eager_under_compile
def reduce_anchors(
    geo: PointGeometry,
    kernel,
    stride,
    padding,
    anchors: str = "grid",
    random_start: bool = False,
    generator: Optional[torch.Generator] = None,
) -> PointGeometry:
    """Anchors of a point-mode reducer as the next stage's geometry (see the module docstring)."""
    cells = grid_subsample(geo, kernel, stride, padding)
    if anchors == "grid":
        return cells
    if anchors not in ANCHORS:
        raise ValueError(f"anchors must be one of {ANCHORS}, got {anchors!r}")
    want = batch_counts(cells.batch, geo.num_samples)
    if anchors == "fps":
        ratio = float((want.double() / geo.counts.double().clamp(min=1)).max())
        picked = fps_from_centre(geo.pos, geo.batch, geo.num_samples, ratio, None, random_start, generator)
    else:
        from ..ops import random_sample

        picked = random_sample(geo.batch, ratio=1.0, generator=generator)
    sample = geo.batch[picked]
    rank = torch.arange(picked.numel(), device=picked.device) - batch_ptr(batch_counts(sample, geo.num_samples))[sample]
    picked = picked[rank < want[sample]]  # an FPS / random prefix of as many points as occupied cells
    pos, batch = geo.pos[picked], geo.batch[picked]
    coords = lattice_coordinates(pos, batch, cells.origin, cells.pitch)
    coords = torch.minimum(coords.clamp(min=0), cells.grid_size[batch] - 1)
    return replace(cells, pos=pos, batch=batch, pixel=coords)
