"""Point reducer: anchors fuse their neighbourhood by one convolution weight (docs/design.md §7).

One weight, in convolution layout ``[out, in, k_1, ..., k_P]`` (the released checkpoints'
layout; ``Conv3d`` layout for 3-D positions), two ways to apply it:

* ``"point"`` (any point set): anchors by grid subsampling of the input's lattice
  (:mod:`pointcoc.nn.anchors`; FPS or random anchors as options), and every point within
  reach weighted into the kernel's taps by linear influence at its offset in pitches
  (:mod:`pointcoc.nn.kernel`). On a full lattice this is the strided convolution exactly;
  on a lattice with holes it is a sparse *partial* convolution with one anchor per occupied
  cell: the weighted taps are divided by the share of the kernel (taps inside the lattice)
  that the present points cover, then the bias is added, so an anchor's output does not
  shrink with the points missing around it.
* ``"lattice"`` (image points, 2-D): the same computation as integer window lookups on
  the pixel grid, the fast path. Anchors are the convolution's output positions whose cell
  (``stride`` pixels per axis from ``anchor * stride``) holds a point, neighbours the
  ``kh x kw`` window with zero padding, the coverage the share of the window's pixels inside
  the grid that are present. It equals point mode with grid anchors wherever the
  convolution's output grid covers every cell; at sizes where the convolution leaves
  trailing rows or columns out of every window (``(L + 2p - k) % s != 0`` with ``p`` too
  small, e.g. the 4x4 stride-4 stem on a side that is not a multiple of 4), point mode
  keeps an anchor for them and lattice mode drops them, as the convolution does.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.batch import batch_ptr
from ..points import pixel_positions
from .anchors import ANCHORS, reduce_anchors
from .geometry import PointGeometry
from .kernel import kernel_taps

__all__ = ["PointReducer", "REDUCE_MODES", "lattice_windows"]

REDUCE_MODES = ("lattice", "point")


def _tuple(v: Union[int, Tuple[int, ...]], n: int) -> Tuple[int, ...]:
    return (v,) * n if isinstance(v, int) else tuple(int(t) for t in v)


def _lookup_table(geo: PointGeometry) -> Tuple[Tensor, Tensor]:
    """Point index of every pixel of every sample's full grid (-1: absent), and the sample offsets."""
    size = geo.grid_size
    cells = size.prod(1)
    offset = batch_ptr(cells)
    table = torch.full((int(cells.sum()),), -1, dtype=torch.long, device=size.device)
    table[offset[geo.batch] + geo.pixel[:, 0] * size[geo.batch, 1] + geo.pixel[:, 1]] = torch.arange(
        geo.batch.numel(), device=size.device
    )
    return table, offset


def lattice_windows(
    geo: PointGeometry, kernel: Tuple[int, int], stride: Tuple[int, int], padding: Tuple[int, int]
) -> Tuple[Tensor, PointGeometry]:
    """Window neighbours of every anchor of a strided pixel grid.

    Returns ``index [M, kh*kw]`` (point index; ``-1`` for an absent pixel of the grid, ``-2``
    for padding outside it; window in row-major order) and the anchors' geometry (row-major
    per sample): the convolution's output positions whose cell ``[o * s, (o + 1) * s)`` holds
    a point (all of them on full grids).
    """
    device = geo.batch.device
    size = geo.grid_size
    k, s, p = (torch.tensor(v, device=device) for v in (kernel, stride, padding))
    out_size = torch.div(size + 2 * p - k, s, rounding_mode="floor") + 1  # [B, 2]
    if bool((out_size < 1).any()):
        raise ValueError(f"grid too small for a {kernel} window with padding {padding}: sizes {size.tolist()}")
    # occupied cells: one flag per output position of every sample
    cell = torch.div(geo.pixel, s, rounding_mode="floor")
    osz = out_size[geo.batch]
    in_range = (cell < osz).all(1)
    out_offset = batch_ptr(out_size.prod(1))
    occupied = torch.zeros(int(out_size.prod(1).sum()), dtype=torch.bool, device=device)
    occupied[(out_offset[geo.batch] + cell[:, 0] * osz[:, 1] + cell[:, 1])[in_range]] = True
    flat = occupied.nonzero().flatten()
    ob = torch.searchsorted(out_offset, flat, right=True) - 1
    local = flat - out_offset[ob]
    osz = out_size[ob]
    anchor = torch.stack((torch.div(local, osz[:, 1], rounding_mode="floor"), local % osz[:, 1]), 1)
    table, offset = _lookup_table(geo)
    ki, kj = torch.meshgrid(
        torch.arange(kernel[0], device=device), torch.arange(kernel[1], device=device), indexing="ij"
    )
    rows = anchor[:, :1] * stride[0] - padding[0] + ki.reshape(1, -1)
    cols = anchor[:, 1:] * stride[1] - padding[1] + kj.reshape(1, -1)
    bsz = size[ob]
    valid = (rows >= 0) & (rows < bsz[:, :1]) & (cols >= 0) & (cols < bsz[:, 1:])
    lin = offset[ob, None] + rows.clamp(min=0) * bsz[:, 1:] + cols.clamp(min=0)
    index = torch.where(valid, table[torch.where(valid, lin, torch.zeros_like(lin))], torch.full_like(lin, -2))
    new = PointGeometry(
        pos=pixel_positions(anchor, osz, geo.pos.dtype),
        batch=ob,
        num_samples=geo.num_samples,
        pixel=anchor,
        grid_size=out_size,
    )
    return index, new


class PointReducer(nn.Module):
    """Reduce a point set: anchors fuse their neighbourhood, ``[N, in] -> [M, out]``.

    Args:
        in_dim, out_dim: channels.
        kernel_size, stride, padding: window geometry per axis (an int: the same on every axis).
        pos_dim: position coordinates, 2 (weight ``[out, in, kh, kw]``) or 3 (``[out, in, kh, kw, kd]``).
        anchors: point-mode anchors: ``"grid"`` (grid subsampling), ``"fps"`` or ``"random"``.

    ``forward(x [N, in], geo, mode)`` with ``mode`` ``"lattice"`` or ``"point"`` returns
    ``(y [M, out], anchors' PointGeometry)``; point mode needs ``geo`` on its lattice
    (:func:`~pointcoc.nn.geometry.point_lattice`).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: Union[int, Tuple[int, ...]],
        stride: Union[int, Tuple[int, ...]],
        padding: Union[int, Tuple[int, ...]] = 0,
        pos_dim: int = 2,
        anchors: str = "grid",
    ) -> None:
        super().__init__()
        if pos_dim not in (2, 3):
            raise ValueError(f"pos_dim must be 2 or 3, got {pos_dim!r}")
        if anchors not in ANCHORS:
            raise ValueError(f"anchors must be one of {ANCHORS}, got {anchors!r}")
        self.kernel, self.stride = _tuple(kernel_size, pos_dim), _tuple(stride, pos_dim)
        self.padding, self.anchors = _tuple(padding, pos_dim), anchors
        conv = nn.Conv2d if pos_dim == 2 else nn.Conv3d
        # the weight in convolution layout (released checkpoints' layout)
        self.proj = conv(in_dim, out_dim, self.kernel, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"anchors={self.anchors!r}"

    def _fuse(self, taps: Tensor, coverage: Tensor) -> Tensor:
        """``taps: [M, K, C]`` (tap-major, as the weight), ``coverage: [M]`` -> ``[M, out]``.

        Partial convolution: the weighted taps are divided by the share of the kernel that
        present points cover (1 on a full lattice: the convolution), then the bias is added.
        """
        w = self.proj.weight.movedim(1, -1).reshape(self.proj.out_channels, -1)
        scale = torch.where(coverage > 0, 1 / coverage.clamp(min=1e-12), torch.ones_like(coverage))
        out = F.linear(taps.reshape(taps.size(0), -1), w) * scale.to(taps.dtype).unsqueeze(1)
        return out if self.proj.bias is None else out + self.proj.bias

    def forward(
        self,
        x: Tensor,
        geo: PointGeometry,
        mode: str = "point",
        random_start: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[Tensor, PointGeometry]:
        if mode == "lattice":
            if geo.pixel is None or geo.grid_size is None or len(self.kernel) != 2:
                raise ValueError("mode='lattice' needs 2-D image points with pixel coordinates and grid sizes")
            index, new = lattice_windows(geo, self.kernel, self.stride, self.padding)
            if bool((new.counts == 0).any()):
                empty = (new.counts == 0).nonzero().flatten().tolist()
                raise ValueError(
                    f"points of sample(s) {empty} lie outside every {self.kernel} window "
                    f"(stride {self.stride}, padding {self.padding}): nothing is left to reduce"
                )
            padded = torch.cat([x, x.new_zeros(1, x.size(1))])
            taps = padded[torch.where(index < 0, torch.full_like(index, x.size(0)), index)]
            coverage = (index >= 0).sum(1).to(x.dtype) / (index > -2).sum(1).clamp(min=1).to(x.dtype)
            return self._fuse(taps, coverage), new
        if mode != "point":
            raise ValueError(f"mode must be one of {REDUCE_MODES}, got {mode!r}")
        if geo.pitch is None:
            raise ValueError("mode='point' needs the points on a lattice (pointcoc.nn.geometry.point_lattice)")
        if geo.pos.size(1) != len(self.kernel):
            raise ValueError(
                f"positions have {geo.pos.size(1)} coordinates but the kernel {self.kernel} has {len(self.kernel)} axes"
            )
        new = reduce_anchors(geo, self.kernel, self.stride, self.padding, self.anchors, random_start, generator)
        return self._fuse(*kernel_taps(x, geo, new, self.kernel)), new
