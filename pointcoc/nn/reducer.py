"""Point reducer: anchors fuse their neighbours by one linear layer (SPEC section 3).

Two ways to choose anchors and neighbours, one weight:

* grid windows (ordered grids, e.g. pixels as points): anchors on a stride grid,
  neighbours the ``kh x kw`` window around them with zero padding - exactly a
  convolution with that kernel/stride/padding, padded or absent pixels contributing zero;
  on image points with absent pixels (masked / discrete) an anchor whose window holds
  no point is dropped, so the output keeps holes where the input has them (a sparse convolution);
* kNN (unordered points): anchors by farthest point sampling (``1 / (sh * sw)`` of each
  sample), neighbours the ``kh * kw`` nearest points ordered by distance, ties by index.

The weight is kept in convolution layout ``[out, in, kh, kw]``; neighbour ``j`` of a
kNN window meets kernel position ``j`` in row-major order.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops.batch import batch_ptr
from .geometry import PointGeometry

__all__ = ["PointReducer", "grid_windows", "grid_positions"]


def _pair(v: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def grid_positions(pixel: Tensor, size: Tensor, dtype: torch.dtype) -> Tensor:
    """SPEC section 1 positions of grid points: ``(i / (H-1) - 0.5, j / (W-1) - 0.5)`` (0 where H or W is 1).

    ``pixel: [N, 2]``, ``size: [N, 2]`` -> ``[N, 2]``.
    """
    denom = (size - 1).to(dtype)
    return torch.where(denom > 0, pixel.to(dtype) / denom.clamp(min=1) - 0.5, torch.zeros_like(denom))


def grid_windows(
    geo: PointGeometry, kernel: Tuple[int, int], stride: Tuple[int, int], padding: Tuple[int, int]
) -> Tuple[Tensor, PointGeometry]:
    """Window neighbours of every anchor of a strided grid.

    Returns ``index [M, kh*kw]`` (point index, ``-1`` for padding/absent pixels; window in
    row-major order) and the anchors' geometry (grid ``Ho x Wo`` per sample, row-major).
    """
    device = geo.batch.device
    size = geo.grid_size
    k = torch.tensor(kernel, device=device)
    s = torch.tensor(stride, device=device)
    p = torch.tensor(padding, device=device)
    out_size = (size + 2 * p - k) // s + 1  # [B, 2]
    if bool((out_size < 1).any()):
        raise ValueError(f"grid too small for a {kernel} window with padding {padding}: sizes {size.tolist()}")
    out_counts = out_size.prod(1)
    ob = torch.repeat_interleave(torch.arange(geo.num_samples, device=device), out_counts)
    local = torch.arange(ob.numel(), device=device) - batch_ptr(out_counts)[ob]
    osz = out_size[ob]
    anchor = torch.stack((local // osz[:, 1], local % osz[:, 1]), 1)  # [M, 2] (row, col)
    # lookup table pixel -> point index over every sample's full grid
    cells = size.prod(1)
    offset = batch_ptr(cells)
    table = torch.full((int(cells.sum()),), -1, dtype=torch.long, device=device)
    W = size[:, 1]
    table[offset[geo.batch] + geo.pixel[:, 0] * W[geo.batch] + geo.pixel[:, 1]] = torch.arange(
        geo.batch.numel(), device=device
    )
    ki, kj = torch.meshgrid(torch.arange(kernel[0], device=device), torch.arange(kernel[1], device=device), indexing="ij")
    rows = anchor[:, :1] * stride[0] - padding[0] + ki.reshape(1, -1)
    cols = anchor[:, 1:] * stride[1] - padding[1] + kj.reshape(1, -1)
    bsz = size[ob]
    valid = (rows >= 0) & (rows < bsz[:, :1]) & (cols >= 0) & (cols < bsz[:, 1:])
    lin = offset[ob, None] + rows.clamp(min=0) * bsz[:, 1:] + cols.clamp(min=0)
    index = torch.where(valid, table[torch.where(valid, lin, torch.zeros_like(lin))], torch.full_like(lin, -1))
    new = PointGeometry(
        pos=grid_positions(anchor, osz, geo.pos.dtype),
        batch=ob,
        num_samples=geo.num_samples,
        pixel=anchor,
        grid_size=out_size,
    )
    return index, new


class PointReducer(nn.Module):
    """Reduce a point set: anchors fuse ``kh*kw`` neighbours, ``[N, in] -> [M, out]``.

    Args:
        in_dim, out_dim: channels.
        kernel_size, stride, padding: window geometry (grid mode); in kNN mode
            ``kh*kw`` neighbours and ``1 / (sh*sw)`` of the points as anchors.

    ``forward(x [N, in], geo, mode)`` with ``mode`` ``"grid"`` or ``"knn"`` returns
    ``(y [M, out], anchors' PointGeometry)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]],
        padding: Union[int, Tuple[int, int]] = 0,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        # holds the window weight in convolution layout [out, in, kh, kw] (released checkpoints' layout)
        self.proj = nn.Conv2d(in_dim, out_dim, self.kernel, self.stride, self.padding)

    def _fuse(self, x: Tensor, index: Tensor) -> Tensor:
        """``x: [N, C]``, ``index: [M, K]`` (-1 = zero) -> ``[M, out]``."""
        N, C = x.shape
        padded = torch.cat([x, x.new_zeros(1, C)])
        nb = torch.where(index < 0, torch.full_like(index, N), index)
        w = self.proj.weight.permute(0, 2, 3, 1).reshape(self.proj.out_channels, -1)
        return F.linear(padded[nb].reshape(index.size(0), -1), w, self.proj.bias)

    def forward(
        self,
        x: Tensor,
        geo: PointGeometry,
        mode: str = "grid",
        random_start: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[Tensor, PointGeometry]:
        if mode == "grid":
            if geo.pixel is None or geo.grid_size is None:
                raise ValueError("mode='grid' needs points with pixel coordinates and grid sizes")
            index, new = grid_windows(geo, self.kernel, self.stride, self.padding)
            occupied = (index >= 0).any(1)  # all True on full grids; image points with holes drop empty windows
            if not bool(occupied.all()):
                index = index[occupied]
                new = PointGeometry(pos=new.pos[occupied], batch=new.batch[occupied], num_samples=new.num_samples,
                                    pixel=new.pixel[occupied], grid_size=new.grid_size)
                if bool((new.counts == 0).any()):
                    empty = (new.counts == 0).nonzero().flatten().tolist()
                    raise ValueError(f"points of sample(s) {empty} lie outside every {self.kernel} window "
                                     f"(stride {self.stride}, padding {self.padding}): nothing is left to reduce")
        elif mode == "knn":
            ratio = 1.0 / (self.stride[0] * self.stride[1])
            anchors = ops.fps(geo.pos, geo.batch, ratio=ratio, random_start=random_start, generator=generator)
            k = self.kernel[0] * self.kernel[1]
            index, _ = ops.knn_padded(geo.pos, geo.pos[anchors], k, geo.batch, geo.batch[anchors])
            new = PointGeometry(pos=geo.pos[anchors], batch=geo.batch[anchors], num_samples=geo.num_samples)
        else:
            raise ValueError(f"mode must be 'grid' or 'knn', got {mode!r}")
        return self._fuse(x, index), new
