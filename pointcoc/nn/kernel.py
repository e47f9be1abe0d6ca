"""Rigid kernel points with linear influence: a convolution kernel evaluated at any offsets.

A reducer's ``k_1 x ... x k_P`` convolution taps are kernel points on the lattice of the
input's pitch, centred on the anchor: tap ``t`` sits at offset ``t - (k - 1) / 2`` pitches
per axis. A point at offset ``u`` (in pitches) from its anchor reaches tap ``t`` with the
influence ``prod_axis max(0, 1 - |u - (t - (k - 1) / 2)|)`` (bilinear in 2-D, trilinear in
3-D, as rigid KPConv with linear influence and a pitch-sized extent). A point exactly on a
lattice node reaches one tap with influence 1, so on a lattice this is the convolution.

:func:`kernel_taps` returns, for every anchor, the influence-weighted sum of the features
at every tap ``[M, K, C]`` (``K = prod k``, taps row-major as the convolution weight) and
the anchor's coverage, the share of its kernel the present points reach (1 on a full
lattice); the reducer multiplies the taps with the weight and divides by the coverage.
Only points within ``(k + 1) / 2`` pitches of an anchor (per axis) can reach a tap: they
are found by hashing the points' lattice cells.
"""

from __future__ import annotations

import itertools
from typing import Sequence, Tuple

import torch
from torch import Tensor

from .anchors import cell_ids
from .geometry import PointGeometry

__all__ = ["kernel_taps", "kernel_pairs", "tap_coverage", "tap_influence"]


def kernel_pairs(geo: PointGeometry, anchors: PointGeometry, kernel: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Every (anchor, point) pair of one sample whose point lies in a lattice cell the kernel can reach.

    Candidate cells per axis: ``floor(a - k / 2)`` to ``floor(a + k / 2) + 1`` around the anchor's
    lattice coordinate ``a``. Returns ``anchor [E]`` and ``point [E]`` (pairs ordered by anchor,
    then cell, then point index).
    """
    device = geo.pos.device
    k = geo.pitch.new_tensor(kernel)
    b = anchors.batch
    a = (anchors.pos - geo.origin[b]) / geo.pitch[b]
    low = torch.floor(a - k / 2).long()  # [M, P]
    span = [int(v) + 2 for v in kernel]
    offsets = torch.tensor(list(itertools.product(*(range(n) for n in span))), device=device)  # [Q, P]
    cand = low[:, None, :] + offsets[None]  # [M, Q, P]
    extent = geo.grid_size[b][:, None, :]
    inside = ((cand >= 0) & (cand < extent)).all(-1)  # [M, Q]
    point_ids, _ = cell_ids(geo.batch, geo.pixel, geo.grid_size)
    order = torch.argsort(point_ids, stable=True)
    sorted_ids = point_ids[order]
    M, Q = inside.shape
    cand_ids, _ = cell_ids(b[:, None].expand(M, Q).reshape(-1), cand.clamp(min=0).reshape(M * Q, -1), geo.grid_size)
    start = torch.searchsorted(sorted_ids, cand_ids)
    count = torch.where(inside.reshape(-1), torch.searchsorted(sorted_ids, cand_ids, right=True) - start, 0)
    slot = torch.repeat_interleave(torch.arange(M * Q, device=device), count)
    first = torch.cumsum(count, 0) - count
    rank = torch.arange(slot.numel(), device=device) - first[slot]
    return torch.div(slot, Q, rounding_mode="floor"), order[start[slot] + rank]


def tap_influence(u: Tensor, kernel: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """Taps reached from offsets ``u [E, P]`` (in pitches, tap coordinates: tap ``t`` at ``u = t``).

    Returns ``pair [F]`` (row of ``u``), ``tap [F]`` (row-major tap index) and ``weight [F]``:
    the up to ``2^P`` taps around each offset with their linear influence (taps outside the
    kernel are dropped).
    """
    k = torch.tensor(kernel, device=u.device)
    base = torch.floor(u)
    frac = u - base
    base = base.long()
    pairs, taps, weights = [], [], []
    row = torch.arange(u.size(0), device=u.device)
    for corner in itertools.product((0, 1), repeat=u.size(1)):
        bit = torch.tensor(corner, device=u.device)
        tap = base + bit
        weight = torch.where(bit.bool(), frac, 1 - frac).prod(1)
        ok = ((tap >= 0) & (tap < k)).all(1) & (weight > 0)
        linear = torch.zeros_like(row)
        for axis in range(u.size(1)):
            linear = linear * kernel[axis] + tap[:, axis]
        pairs.append(row[ok])
        taps.append(linear[ok])
        weights.append(weight[ok])
    return torch.cat(pairs), torch.cat(taps), torch.cat(weights)


def kernel_taps(x: Tensor, geo: PointGeometry, anchors: PointGeometry, kernel: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Influence-weighted tap features of every anchor and its kernel coverage.

    ``x [N, C]`` -> ``taps [M, K, C]`` and ``coverage [M]``: the influence the present points
    give the taps inside the lattice's extent (per tap at most 1), over the number of those
    taps (:func:`tap_coverage`). ``geo``: the input's lattice (``pitch``, ``origin``, ``pixel``
    coordinates, ``grid_size``); ``anchors``: anchor positions and samples (any positions:
    grid, FPS or random anchors).
    """
    anchor, point = kernel_pairs(geo, anchors, kernel)
    b = anchors.batch[anchor]
    centre = anchors.pos.new_tensor(kernel).sub(1).div(2)
    u = (geo.pos[point] - anchors.pos[anchor]) / geo.pitch[b] + centre
    reach = ((u > -1) & (u < anchors.pos.new_tensor(kernel))).all(1)
    anchor, point, u = anchor[reach], point[reach], u[reach]
    pair, tap, weight = tap_influence(u, kernel)
    K = 1
    for v in kernel:
        K *= int(v)
    slot = anchor[pair] * K + tap
    taps = x.new_zeros(anchors.pos.size(0) * K, x.size(1))
    taps.index_add_(0, slot, x[point[pair]] * weight.to(x.dtype).unsqueeze(1))
    influence = weight.new_zeros(anchors.pos.size(0) * K).index_add_(0, slot, weight).view(-1, K)
    return taps.view(-1, K, x.size(1)), tap_coverage(influence, geo, anchors, kernel)


def tap_coverage(influence: Tensor, geo: PointGeometry, anchors: PointGeometry, kernel: Sequence[int]) -> Tensor:
    """Share of each anchor's kernel that present points cover, ``influence [M, K]`` -> ``[M]``.

    A tap is inside when its lattice position ``a + t - (k - 1) / 2`` rounds to a node of the
    input's extent (taps outside are the convolution's zero padding). Coverage: the sum over
    the inside taps of ``min(1, influence)``, over their number; 1 on a full lattice, the
    share of present pixels in the window on a lattice with holes (0 when nothing is inside).
    """
    b = anchors.batch
    a = (anchors.pos - geo.origin[b]) / geo.pitch[b] - anchors.pos.new_tensor(kernel).sub(1).div(2)
    grids = torch.meshgrid(*(torch.arange(v, device=a.device) for v in kernel), indexing="ij")
    t = torch.stack([g.reshape(-1) for g in grids], 1).to(a.dtype)  # [K, P] row-major taps
    node = torch.floor(a[:, None, :] + t[None] + 0.5)
    inside = ((node >= 0) & (node < geo.grid_size[b][:, None, :])).all(-1)
    covered = torch.where(inside, influence.clamp(max=1), torch.zeros_like(influence)).sum(1)
    return covered / inside.sum(1).clamp(min=1).to(covered.dtype)
