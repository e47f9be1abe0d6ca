"""The geometry of a point batch (everything but the features), passed between layers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from ..ops.batch import batch_counts

__all__ = ["PointGeometry"]


@dataclass
class PointGeometry:
    """Positions and structure of a ragged point batch.

    Attributes:
        pos: ``[N, P]`` positions.
        batch: ``[N]`` sorted sample ids.
        num_samples: ``B``.
        pixel: ``[N, 2]`` int (row, col) when the points lie on image grids, else ``None``.
        grid_size: ``[B, 2]`` int (H, W) of each sample's grid, else ``None``.
    """

    pos: Tensor
    batch: Tensor
    num_samples: int
    pixel: Optional[Tensor] = None
    grid_size: Optional[Tensor] = None
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
