"""The geometry of a point batch (everything but the features), passed between layers.

Point mode places every sample on a *lattice*: an origin and a per-axis spacing, the
*pitch*, per sample. A point's lattice coordinate is its position in pitch units from
the origin, rounded to the nearest node. For image points the lattice is the pixel grid
(pitch from the grid size); for other point sets the origin is the sample's lowest
corner and the pitch is given or estimated (mean nearest-neighbour spacing). Reducers
multiply the pitch by their stride, so every stage keeps a lattice of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

import torch
from torch import Tensor

from ..ops.batch import batch_counts

__all__ = ["PointGeometry", "canonical_order", "estimate_pitch", "lattice_coordinates", "point_lattice"]

# samples (or pitches) that would need more lattice cells than this are rejected
MAX_CELLS = 2**62


@dataclass
class PointGeometry:
    """Positions and structure of a ragged point batch.

    Attributes:
        pos: ``[N, P]`` positions.
        batch: ``[N]`` sorted sample ids.
        num_samples: ``B``.
        pixel: ``[N, 2]`` int (row, col) when the points lie on image grids (point mode:
            ``[N, P]`` lattice coordinates), else ``None``.
        grid_size: ``[B, 2]`` int (H, W) of each sample's grid (point mode: ``[B, P]`` lattice
            extent in cells), else ``None``.
        pitch: ``[B, P]`` lattice spacing per sample and axis (point mode), else ``None``.
        origin: ``[B, P]`` position of lattice node 0 per sample (point mode), else ``None``.
    """

    pos: Tensor
    batch: Tensor
    num_samples: int
    pixel: Optional[Tensor] = None
    grid_size: Optional[Tensor] = None
    pitch: Optional[Tensor] = None
    origin: Optional[Tensor] = None
    counts: Tensor = field(init=False)
    uniform: Optional[int] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = batch_counts(self.batch, self.num_samples)
        n = self.batch.numel()
        self.uniform = n // self.num_samples if bool((self.counts == n // self.num_samples).all()) else None

    @property
    def is_full_grid(self) -> bool:
        """True when every sample holds every pixel of its grid (pixels-as-points mode)."""
        if self.pixel is None or self.grid_size is None:
            return False
        return bool((self.counts == self.grid_size.prod(1)).all())

    def select(self, index: Tensor) -> "PointGeometry":
        """The geometry of the points ``index`` (per-sample fields unchanged)."""
        pixel = None if self.pixel is None else self.pixel[index]
        return replace(self, pos=self.pos[index], batch=self.batch[index], pixel=pixel)


def canonical_order(pos: Tensor, batch: Tensor) -> Tensor:
    """Permutation sorting the points by sample, then by position (lexicographic, first axis first).

    Index tie-breaks downstream (FPS, kNN, scatter order) become position tie-breaks, so the
    result of a computation on ``pos[order]`` does not depend on the input order (points with
    identical positions excepted).
    """
    order = torch.arange(pos.size(0), device=pos.device)
    for axis in range(pos.size(1) - 1, -1, -1):
        order = order[torch.argsort(pos[order, axis], stable=True)]
    return order[torch.argsort(batch[order], stable=True)]


def estimate_pitch(pos: Tensor, batch: Tensor, num_samples: int) -> Tensor:
    """Mean nearest-neighbour distance of each sample ``[B]`` (1 for samples of one point)."""
    from ..ops import knn_padded  # late import: ops and nn are siblings

    _, dist = knn_padded(pos, pos, 2, batch, batch)  # column 0: the point itself (or a duplicate)
    nearest = dist[:, 1]
    ok = torch.isfinite(nearest)
    total = pos.new_zeros(num_samples).index_add_(0, batch[ok], nearest[ok].sqrt())
    count = batch_counts(batch[ok], num_samples).to(pos.dtype)
    mean = total / count.clamp(min=1)
    return torch.where(mean > 0, mean, torch.ones_like(mean))


def lattice_coordinates(pos: Tensor, batch: Tensor, origin: Tensor, pitch: Tensor) -> Tensor:
    """Nearest lattice node of every point: ``floor((pos - origin) / pitch + 0.5)``, ``[N, P]`` int64."""
    return torch.floor((pos - origin[batch]) / pitch[batch] + 0.5).long()


def point_lattice(geo: PointGeometry, pitch: Optional[Union[float, Tensor]] = None) -> PointGeometry:
    """Put every sample of ``geo`` on its lattice (fills ``pitch``, ``origin``, ``pixel``, ``grid_size``).

    Image points (``pixel`` and ``grid_size`` given, 2-D positions): the pixel grid, pitch
    ``1 / (L - 1)`` per axis of length ``L`` (1 when ``L = 1``), origin at pixel ``(0, 0)``.
    Other point sets: origin at the sample's lowest corner, pitch ``pitch`` (a number, or
    ``[B]`` per sample) or else :func:`estimate_pitch`, the same on every axis.
    """
    B, P, dtype = geo.num_samples, geo.pos.size(1), geo.pos.dtype
    if geo.pixel is not None and geo.grid_size is not None and P == 2:
        length = geo.grid_size.to(dtype)
        step = torch.where(length > 1, 1.0 / (length - 1).clamp(min=1), torch.ones_like(length))
        origin = torch.where(length > 1, torch.full_like(length, -0.5), torch.zeros_like(length))
        return replace(geo, pitch=step, origin=origin)
    if pitch is None:
        spacing = estimate_pitch(geo.pos, geo.batch, B)
    else:
        spacing = torch.as_tensor(pitch, dtype=dtype, device=geo.pos.device).expand(B).clone()
        if not bool((spacing > 0).all() & torch.isfinite(spacing).all()):
            raise ValueError(f"pitch must be finite and > 0, got {pitch!r}")
    step = spacing[:, None].expand(B, P).contiguous()
    rows = geo.batch[:, None].expand(-1, P)
    origin = geo.pos.new_full((B, P), float("inf")).scatter_reduce_(0, rows, geo.pos, "amin")
    origin = torch.where(torch.isfinite(origin), origin, torch.zeros_like(origin))  # empty samples
    coords = lattice_coordinates(geo.pos, geo.batch, origin, step)
    extent = coords.new_zeros(B, P).scatter_reduce_(0, rows, coords, "amax") + 1
    check_cells(extent)
    return replace(geo, pixel=coords, grid_size=extent, pitch=step, origin=origin)


def check_cells(extent: Tensor) -> None:
    """Reject lattices too large to number their cells in int64 (a pitch far below the spacing)."""
    cells = extent.double().prod(1).max() * extent.size(0) if extent.numel() else 0.0
    if float(cells) >= MAX_CELLS:
        raise ValueError(
            f"pitch is too small for these point sets: {float(cells):.3g} lattice cells "
            f"(extent per axis up to {extent.max(0).values.tolist()}); give a larger pitch"
        )
