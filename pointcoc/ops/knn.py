"""Exact k-nearest-neighbour search on ragged and dense batches.

Neighbours are ranked by squared Euclidean distance, ties broken by the lower
index, so the output is deterministic even on pixel grids where many distances
tie. Two pure-PyTorch searches give identical results:

* dense: both point sets are padded to dense per-sample blocks, and rectangular
  chunks of (samples x query slots) are compared with all points of their
  samples; every chunk's distance matrix holds at most ``max_chunk_entries``
  values, so memory stays bounded;
* tiled (positions with at most :data:`EXACT_MAX_DIM` coordinates, samples of at
  least :data:`TILED_MIN_POINTS` points): points are grouped into k-d tree tiles
  and each block of queries is compared only with the tiles that can hold one of
  its neighbours (bounding-box pruning, exact); a 224x224 image as 50,176 points
  computes a few hundred distances per query and never allocates ``N^2``.

In both, the k smallest (distance, index) pairs of a row are found with one
``topk``: a non-negative float32 distance's bit pattern is monotone as an
integer, so ``(bits << 32) | index`` is an exact int64 sort key (float16 and
bfloat16 distances are widened to float32 exactly); float64 distances take the
k-th value and resolve the ties at it by index.

Distances: for at most :data:`EXACT_MAX_DIM` coordinates they are computed as
``sum_p (y_p - x_p) ** 2`` in coordinate order, in the input dtype (the same
arithmetic as a brute-force loop); for more coordinates the matrix-product
expansion ``|y|^2 + |x|^2 - 2 y.x`` is used (rounding may then reorder
near-ties).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._checks import check_batch, check_finite, check_float, check_k, check_padded_width, check_tensor
from .backend import torch_cluster_module
from .batch import batch_counts, batch_ptr, slot_in_sample

__all__ = ["EXACT_MAX_DIM", "DEFAULT_CHUNK_ENTRIES", "knn", "knn_padded", "knn_dense"]

EXACT_MAX_DIM = 4
"""Up to this many coordinates, distances are summed coordinate by coordinate (exact order)."""

DEFAULT_CHUNK_ENTRIES = 2**20
"""Distance entries computed per chunk; the largest temporaries are the distance chunk, one
term of the same size and its int64 sort keys (about 16 bytes per entry in float32: 16 MiB)."""

TILE = 32
"""Points per tile in the tiled search (x tiles and query blocks)."""

TILED_MIN_POINTS = 2048
"""Samples of at least this many x points (with D <= EXACT_MAX_DIM) use the tiled search."""

PROBE_EXTRA_TILES = 4
"""Tiles probed beyond ceil(k / TILE) to bound each query's k-th distance in the tiled search."""

_LOW_32_BITS = 0xFFFFFFFF
_NO_ID = 2**31 - 1  # id of padding lanes in the tiled search (sorts after every real point)


def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    max_chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
) -> Tensor:
    """For every point of ``y``, its ``k`` nearest points of ``x`` within the same sample.

    Args:
        x: ``[N, D]`` float points searched.
        y: ``[M, D]`` float query points (same dtype and device as ``x``).
        k: neighbours per query; every sample holding queries needs at least ``k`` points of ``x``.
        batch_x: ``[N]`` sorted sample ids of ``x`` (``None``: one sample).
        batch_y: ``[M]`` sorted sample ids of ``y`` (``None``: one sample).
        max_chunk_entries: bound on the distance entries computed at once.

    Returns:
        ``[2, M * k]`` LongTensor: row 0 indexes ``y`` (each query repeated ``k`` times,
        queries in order), row 1 the global index of the neighbour in ``x``; each query's
        neighbours ordered by (squared distance, index).

    With torch-cluster installed and the backend ``"auto"``, torch-cluster finds the
    neighbours and they are then put in the same order; only which of several points
    tied exactly at the k-th distance is kept may differ from the pure path (on pixel
    grids this is common: use ``use_backend("torch")`` where it matters).
    """
    x, y, k, batch_x, batch_y, counts_x, counts_y = _validate(x, y, k, batch_x, batch_y, allow_empty=False)
    starved = (counts_y > 0) & (counts_x == 0)
    if bool(starved.any()):
        sample = int(starved.nonzero()[0, 0])
        raise ValueError(f"batch_y has queries in sample {sample} but batch_x has no points of x there")
    short = (counts_y > 0) & (counts_x < k)
    if bool(short.any()):
        sample = int(short.nonzero()[0, 0])
        raise ValueError(f"k={k} exceeds the number of x points ({int(counts_x[sample])}) in sample {sample}")
    check_chunk_entries(max_chunk_entries)
    cluster = torch_cluster_module()
    if cluster is not None and _cluster_supports(x, k):
        index = _knn_cluster(cluster, x, y, k, batch_x, batch_y)
    else:
        index, _ = _knn_pure(x, y, k, batch_x, batch_y, counts_x, counts_y, max_chunk_entries)
    row = torch.arange(y.size(0), device=y.device).repeat_interleave(k)
    return torch.stack([row, index.reshape(-1)])


def knn_padded(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    max_chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
) -> Tuple[Tensor, Tensor]:
    """Like :func:`knn` but as fixed-width rows, accepting samples with fewer than ``k`` points.

    Always the pure path (whatever the backend): model layers get the same neighbours, ties
    included, with or without torch-cluster.

    Args: as :func:`knn` (``x`` or ``y`` may be empty).

    Returns:
        ``index: [M, k]`` LongTensor of global ``x`` indices ordered by (distance, index),
        ``-1`` where the query's sample has fewer than ``k`` points of ``x``;
        ``dist: [M, k]`` squared distances (dtype of ``x``, no gradient), ``inf`` at the ``-1`` slots.
    """
    x, y, k, batch_x, batch_y, counts_x, counts_y = _validate(x, y, k, batch_x, batch_y, allow_empty=True)
    check_padded_width(k, y.size(0), counts_x)
    check_chunk_entries(max_chunk_entries)
    return _knn_pure(x, y, k, batch_x, batch_y, counts_x, counts_y, max_chunk_entries)


def knn_dense(x: Tensor, y: Tensor, k: int, max_chunk_entries: int = DEFAULT_CHUNK_ENTRIES) -> Tensor:
    """kNN for equal-size samples in dense form.

    Args:
        x: ``[B, n, D]`` float points searched.
        y: ``[B, m, D]`` float queries.
        k: neighbours per query, ``k <= n``.
        max_chunk_entries: bound on the distance entries computed at once.

    Returns:
        ``[B, m, k]`` LongTensor of indices into ``x[b]`` (0 .. n-1), ordered by (distance, index).
    """
    x = check_tensor(x, "x", ndim=3)
    y = check_tensor(y, "y", ndim=3)
    _check_pair(x, y)
    k = check_k(k, "k")
    if x.size(0) != y.size(0):
        raise ValueError(f"y must have the same batch size as x ({x.size(0)}), got {y.size(0)}")
    if k > x.size(1):
        raise ValueError(f"k={k} exceeds the number of x points per sample ({x.size(1)})")
    check_chunk_entries(max_chunk_entries)
    num_samples, n, dim = x.shape
    m = y.size(1)
    if num_samples == 0 or m == 0:
        return torch.empty(num_samples, m, k, dtype=torch.long, device=x.device)
    if dim <= EXACT_MAX_DIM and n >= TILED_MIN_POINTS:
        batch_x = torch.arange(num_samples, device=x.device).repeat_interleave(n)
        batch_y = torch.arange(num_samples, device=x.device).repeat_interleave(m)
        counts_x = torch.full((num_samples,), n, device=x.device)
        counts_y = torch.full((num_samples,), m, device=x.device)
        index, _ = _knn_tiled(
            x.detach().reshape(-1, dim), y.detach().reshape(-1, dim), k, batch_x, batch_y, counts_x, counts_y,
            max_chunk_entries,
        )
        return (index - batch_y[:, None] * n).view(num_samples, m, k)
    slots, _ = _knn_blocks(x.detach(), y.detach(), k, [n] * num_samples, [m] * num_samples, max_chunk_entries)
    return slots


def check_chunk_entries(max_chunk_entries: object) -> int:
    """Require a positive int budget of distance entries per chunk."""
    return check_k(max_chunk_entries, "max_chunk_entries")


def _check_pair(x: Tensor, y: Tensor) -> None:
    check_float(x, "x")
    check_float(y, "y")
    check_finite(x, "x")
    check_finite(y, "y")
    if y.dtype != x.dtype:
        raise TypeError(f"y must have the dtype of x ({x.dtype}), got {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if y.size(-1) != x.size(-1):
        raise ValueError(f"y must have as many features as x ({x.size(-1)} per point), got {y.size(-1)}")
    if x.size(-1) == 0:
        raise ValueError("x must have at least one feature per point")


def _validate(
    x: object, y: object, k: object, batch_x: object, batch_y: object, allow_empty: bool
) -> Tuple[Tensor, Tensor, int, Tensor, Tensor, Tensor, Tensor]:
    """Check the arguments of knn / knn_padded; return them with per-sample counts ``[B]``."""
    x = check_tensor(x, "x", ndim=2)
    y = check_tensor(y, "y", ndim=2)
    _check_pair(x, y)
    k = check_k(k, "k")
    if not allow_empty:
        for t, name in ((x, "x"), (y, "y")):
            if t.size(0) == 0:
                raise ValueError(f"{name} is empty: a point set needs at least one point")
    batch_x, samples_x = _batch_or_empty(batch_x, x, "batch_x")
    batch_y, samples_y = _batch_or_empty(batch_y, y, "batch_y")
    num_samples = max(samples_x, samples_y)
    counts_x = batch_counts(batch_x, num_samples)
    counts_y = batch_counts(batch_y, num_samples)
    return x.detach(), y.detach(), k, batch_x, batch_y, counts_x, counts_y


def _batch_or_empty(batch: object, points: Tensor, name: str) -> Tuple[Tensor, int]:
    if points.size(0) == 0:
        if batch is not None and check_tensor(batch, name, ndim=1).numel() != 0:
            raise ValueError(f"{name} must have one entry per point (0), got {batch.numel()}")
        return torch.zeros(0, dtype=torch.long, device=points.device), 0
    return check_batch(batch, points.size(0), points.device, name)


def _cluster_supports(x: Tensor, k: int) -> bool:
    """torch-cluster handles float32 / float64 (its CUDA kernel caps k at 100)."""
    return x.dtype in (torch.float32, torch.float64) and not (x.is_cuda and k > 100)


@torch.no_grad()
def _knn_cluster(cluster, x: Tensor, y: Tensor, k: int, batch_x: Tensor, batch_y: Tensor) -> Tensor:
    """torch-cluster's neighbour sets ``[M, k]``, reordered per query by (distance, index)."""
    row, col = cluster.knn(x, y, k, batch_x, batch_y)
    if not bool((row[1:] >= row[:-1]).all()):  # its CPU kernel already lists queries in order
        col = col[torch.argsort(row, stable=True)]
    col = col.view(y.size(0), k)
    if x.dtype == torch.float32:  # one sort on the exact (bits << 32) | index key
        bits = _pair_distances(y, x, col).view(torch.int32)
        key = bits.to(torch.int64).bitwise_left_shift_(32).bitwise_or_(col)
        return key.sort(dim=1).values.bitwise_and_(_LOW_32_BITS)
    col = col.sort(dim=1).values
    order = _pair_distances(y, x, col).sort(dim=1, stable=True).indices
    return col.gather(1, order)


def _pair_distances(y: Tensor, x: Tensor, col: Tensor) -> Tensor:
    """``dist[i, j] = sum_p (y[i, p] - x[col[i, j], p]) ** 2`` summed in coordinate order: ``[M, k]``."""
    dist = None
    for p in range(x.size(1)):
        term = (y[:, p, None] - x[:, p][col]).square_()
        dist = term if dist is None else dist.add_(term)
    return dist


@torch.no_grad()
def _knn_pure(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor,
    batch_y: Tensor,
    counts_x: Tensor,
    counts_y: Tensor,
    max_chunk_entries: int,
) -> Tuple[Tensor, Tensor]:
    """Pure-PyTorch search: ``index [M, k]`` (global, -1 padded) and ``dist [M, k]`` (inf padded)."""
    if y.size(0) == 0:
        return torch.empty(0, k, dtype=torch.long, device=y.device), torch.empty(0, k, dtype=y.dtype, device=y.device)
    if x.size(1) <= EXACT_MAX_DIM and x.size(0) and int(counts_x.max()) >= TILED_MIN_POINTS:
        return _knn_tiled(x, y, k, batch_x, batch_y, counts_x, counts_y, max_chunk_entries)
    num_samples = counts_x.numel()
    ptr_x = batch_ptr(counts_x)
    ptr_y = batch_ptr(counts_y)
    slot_y = slot_in_sample(batch_y, ptr_y)
    if x.size(0) == 0:
        nx = 0
        x_dense = x.new_zeros(num_samples, 0, x.size(1))
    else:
        nx = int(counts_x.max())
        x_dense = x.new_zeros(num_samples, nx, x.size(1))
        x_dense[batch_x, slot_in_sample(batch_x, ptr_x)] = x
    y_dense = y.new_zeros(num_samples, int(counts_y.max()), y.size(1))
    y_dense[batch_y, slot_y] = y
    slots, dist = _knn_blocks(x_dense, y_dense, k, counts_x.tolist(), counts_y.tolist(), max_chunk_entries)
    slots, dist = slots[batch_y, slot_y], dist[batch_y, slot_y]  # [M, k]
    index = torch.where(slots >= 0, slots + ptr_x[batch_y, None], slots)
    return index, dist


def _knn_blocks(
    x_dense: Tensor, y_dense: Tensor, k: int, counts_x: List[int], counts_y: List[int], max_chunk_entries: int
) -> Tuple[Tensor, Tensor]:
    """Neighbour slots ``[B, m, k]`` (-1 where a sample has fewer than k points) and distances ``[B, m, k]``.

    ``x_dense: [B, n, D]`` and ``y_dense: [B, m, D]`` are padded per sample; ``counts_*`` give
    the real points per sample (host lists). Chunks are rectangles of (samples x query slots).
    """
    num_samples, n, dim = x_dense.shape
    m = y_dense.size(1)
    device, dtype = x_dense.device, x_dense.dtype
    slots_out = torch.full((num_samples, m, k), -1, dtype=torch.long, device=device)
    dist_out = torch.full((num_samples, m, k), float("inf"), dtype=dtype, device=device)
    if n == 0 or m == 0:
        return slots_out, dist_out
    exact = dim <= EXACT_MAX_DIM
    if exact:  # coordinate-major copies: [D, B, n] and [D, B, m]
        x_coords = x_dense.permute(2, 0, 1).contiguous()
        y_coords = y_dense.permute(2, 0, 1).contiguous()
    else:
        x_sq = x_dense.square().sum(-1)  # [B, n]
        y_sq = y_dense.square().sum(-1)  # [B, m]
    counts_x_t = torch.tensor(counts_x, device=device)
    columns = torch.arange(n, device=device)
    workspace = _Workspace(device)
    samples_per_block = max(1, max_chunk_entries // (m * n))
    for b0 in range(0, num_samples, samples_per_block):
        b1 = min(b0 + samples_per_block, num_samples)
        nx_r, ny_r = max(counts_x[b0:b1]), max(counts_y[b0:b1])
        if nx_r == 0 or ny_r == 0:
            continue
        padded = min(counts_x[b0:b1]) < nx_r
        keep = min(k, nx_r)
        rows = max(1, max_chunk_entries // ((b1 - b0) * nx_r))
        for j0 in range(0, ny_r, rows):
            j1 = min(j0 + rows, ny_r)
            if exact:
                dist = _distances_exact(x_coords[:, b0:b1, :nx_r], y_coords[:, b0:b1, j0:j1], workspace)
            else:
                dist = _distances_expanded(
                    x_dense[b0:b1, :nx_r], y_dense[b0:b1, j0:j1], x_sq[b0:b1, :nx_r], y_sq[b0:b1, j0:j1]
                )
            if padded:
                dist.masked_fill_((columns[:nx_r] >= counts_x_t[b0:b1, None])[:, None, :], float("inf"))
            slots, nearest = _smallest_k(dist, keep, columns[:nx_r], workspace)
            if padded:  # samples with fewer than k points: the tail of the row points at padding
                pad = slots >= counts_x_t[b0:b1, None, None]
                slots.masked_fill_(pad, -1)
                nearest.masked_fill_(pad, float("inf"))
            slots_out[b0:b1, j0:j1, :keep] = slots
            dist_out[b0:b1, j0:j1, :keep] = nearest
    return slots_out, dist_out


class _Workspace:
    """Reusable scratch buffers: large temporaries are allocated once per call, not once per chunk."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: Dict[str, Tensor] = {}

    def get(self, name: str, shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype, device=self.device)
            self.buffers[name] = buffer
        return buffer[:numel].view(shape)


def _distances_exact(x_coords: Tensor, y_coords: Tensor, workspace: _Workspace) -> Tensor:
    """``x_coords: [D, b, n]``, ``y_coords: [D, b, m]`` -> ``[b, m, n]`` summed in coordinate order."""
    dim, b, n = x_coords.shape
    shape = (b, y_coords.size(2), n)
    dist = workspace.get("dist", shape, x_coords.dtype)
    torch.sub(y_coords[0, :, :, None], x_coords[0, :, None, :], out=dist).square_()
    if dim > 1:
        term = workspace.get("term", shape, x_coords.dtype)
        for p in range(1, dim):
            torch.sub(y_coords[p, :, :, None], x_coords[p, :, None, :], out=term)
            dist.add_(term.square_())
    return dist


def _distances_expanded(x: Tensor, y: Tensor, x_sq: Tensor, y_sq: Tensor) -> Tensor:
    """``|y|^2 + |x|^2 - 2 y.x`` for ``x: [b, n, D]``, ``y: [b, m, D]`` -> ``[b, m, n]``, clamped at +0."""
    dist = torch.baddbmm(y_sq[:, :, None] + x_sq[:, None, :], y, x.transpose(1, 2), alpha=-2.0)
    return dist.clamp_min_(0.0).abs_()  # abs turns a -0.0 into +0.0 (its bits would sort first)


def _smallest_k(dist: Tensor, k: int, columns: Tensor, workspace: _Workspace) -> Tuple[Tensor, Tensor]:
    """The k smallest entries of each row of ``dist: [..., n]`` ordered by (value, column id).

    ``columns: [n]`` (or broadcastable to ``dist``) holds distinct non-negative ids below ``2**31``,
    ascending along the row. Returns ``(ids [..., k], values [..., k])``; values are >= +0 (inf allowed).
    """
    if dist.dtype in (torch.float32, torch.float16, torch.bfloat16):
        # non-negative float32 bit patterns are monotone as int32: (bits << 32) | id is one exact key
        key = workspace.get("key", tuple(dist.shape), torch.int64)
        key.copy_(dist.float().view(torch.int32))
        key.bitwise_left_shift_(32).bitwise_or_(columns)
        key = torch.topk(key, k, dim=-1, largest=False, sorted=True).values
        ids = key.bitwise_and(_LOW_32_BITS)
        values = key.bitwise_right_shift(32).to(torch.int32).view(torch.float32).to(dist.dtype)
        return ids, values
    # float64: everything below the k-th value, then the lowest columns among those equal to it
    kth = torch.topk(dist, k, dim=-1, largest=False, sorted=True).values[..., -1:]
    below = dist < kth
    tied = dist == kth
    room = k - below.sum(-1, keepdim=True)
    chosen = below | (tied & (tied.cumsum(-1) <= room))
    position = chosen.nonzero()[:, -1].view(dist.shape[:-1] + (k,))
    values, order = dist.gather(-1, position).sort(dim=-1, stable=True)
    return columns.expand_as(dist).gather(-1, position.gather(-1, order)), values


# ----------------------------------------------------------------------------------------------
# tiled search for low-dimensional positions
# ----------------------------------------------------------------------------------------------
#
# Points of each sample are put in k-d tree order and cut into tiles of TILE points (the leaves);
# queries likewise into blocks. Bounding boxes give, for every (query block, x tile) pair, a lower
# bound LB on the squared distance of any of their pairs, computed with the same floating-point
# operations in the same order as the distances themselves (rounding is monotone, so the bound
# holds for the rounded distances too). Exact distances to the points of a few nearby tiles
# (smallest LB) give each query an upper bound on its k-th neighbour distance (its k-th distance
# among them); R = the largest over the block. Every neighbour, and every point tied with the k-th
# one, lies in a tile with LB <= R, so distances are computed exactly for those tiles only and
# ranked by (distance, index) as in the dense path: the result is identical, only cheaper.


class _Tiles:
    """Points of a ragged batch in k-d tree tiles.

    ``coords: [D, B, G, TILE]`` (padding lanes repeat the tile's first point, so bounding boxes
    are unchanged), ``ids: [B, G, TILE]`` index of the point inside its sample (``_NO_ID`` for
    padding), ``valid: [B, G]`` real tiles, ``low`` / ``high``: ``[D, B, G]`` bounding boxes.
    """

    def __init__(self, points: Tensor, batch: Tensor, counts: Tensor, ptr: Tensor) -> None:
        num_samples, dim = counts.numel(), points.size(1)
        order = _kd_order(points, batch, counts, ptr[:-1])
        num_tiles = -(-counts // TILE)  # [B]
        width = int(num_tiles.max()) * TILE
        slot = torch.arange(width, device=points.device)  # position in k-d order inside the sample
        real = slot < counts[:, None]  # [B, width]
        tile_start = slot - slot % TILE
        source = torch.where(real, slot, tile_start) + ptr[:-1, None]  # padding: the tile's first point
        source = order[source.clamp_(max=points.size(0) - 1)]
        self.coords = points[source].permute(2, 0, 1).reshape(dim, num_samples, -1, TILE).contiguous()
        ids = torch.where(real, source - ptr[:-1, None], _NO_ID)
        self.ids = ids.view(num_samples, -1, TILE)
        self.valid = torch.arange(width // TILE, device=points.device) < num_tiles[:, None]
        self.low = self.coords.amin(-1)
        self.high = self.coords.amax(-1)


def _kd_order(points: Tensor, batch: Tensor, counts: Tensor, ptr: Tensor) -> Tensor:
    """Permutation ``[N]`` that keeps samples in order and puts each in k-d tree leaf order.

    Nodes are split at a multiple of TILE along their widest axis until every node holds at most
    TILE points, so every run of TILE points from a sample's start is one compact leaf.
    """
    num_points = points.size(0)
    dim = points.size(1)
    order = torch.arange(num_points, device=points.device)
    position = order.clone()
    start = ptr[batch]  # per position: first position of its node
    size = counts[batch]  # per position: size of its node
    while True:
        split = size > TILE
        if not bool(split.any()):
            return order
        current = points[order]
        node = start[:, None].expand(-1, dim)
        low = current.new_full((num_points, dim), math.inf).scatter_reduce_(0, node, current, "amin")
        high = current.new_full((num_points, dim), -math.inf).scatter_reduce_(0, node, current, "amax")
        axis = (high - low).argmax(1)[start]  # widest axis of each position's node
        along = current.gather(1, axis[:, None]).squeeze(1)
        by_coord = torch.argsort(along, stable=True)
        by_coord = by_coord[torch.argsort(start[by_coord], stable=True)]  # sorted inside every node
        order = order[by_coord]
        left = TILE * ((-(-size // TILE) + 1) // 2)  # TILE * ceil(tiles / 2)
        right = split & (position - start >= left)
        start = torch.where(right, start + left, start)
        size = torch.where(split, torch.where(right, size - left, left), size)


def _tile_lower_bound(y_low: Tensor, y_high: Tensor, x_low: Tensor, x_high: Tensor) -> Tensor:
    """Lower bound on squared distances between boxes: ``[D, ..., 1]`` blocks vs ``[D, ..., G]`` tiles."""
    lower = None
    for p in range(y_low.size(0)):
        gap = torch.maximum(y_low[p] - x_high[p], x_low[p] - y_high[p]).clamp_min_(0.0).square_()
        lower = gap if lower is None else lower.add_(gap)
    return lower


@torch.no_grad()
def _knn_tiled(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor,
    batch_y: Tensor,
    counts_x: Tensor,
    counts_y: Tensor,
    max_chunk_entries: int,
) -> Tuple[Tensor, Tensor]:
    """Exact kNN through k-d tree tiles (see the comment above). Returns ``index [M, k]``, ``dist [M, k]``."""
    ptr_x, ptr_y = batch_ptr(counts_x), batch_ptr(counts_y)
    tiles = _Tiles(x, batch_x, counts_x, ptr_x)
    blocks = _Tiles(y, batch_y, counts_y, ptr_y)
    num_samples, num_tiles = tiles.valid.shape
    num_blocks = blocks.valid.size(1)

    # phase 1: per query block, a distance within which every query has k points, and how many
    # tiles lie within it
    workspace = _Workspace(x.device)
    probes = min(num_tiles, -(-k // TILE) + PROBE_EXTRA_TILES)
    candidates = torch.empty(num_samples, num_blocks, dtype=torch.long, device=x.device)
    step = max(1, max_chunk_entries // (num_samples * max(num_tiles, probes * TILE * TILE)))
    for q0 in range(0, num_blocks, step):
        q = slice(q0, q0 + step)
        lower = _tile_lower_bound(
            blocks.low[:, :, q, None], blocks.high[:, :, q, None], tiles.low[:, :, None], tiles.high[:, :, None]
        )  # [B, qc, G]
        lower.masked_fill_(~tiles.valid[:, None, :], math.inf)
        probe = torch.topk(lower, probes, dim=-1, largest=False, sorted=False).indices  # [B, qc, probes]
        reach = _probe_reach(tiles, blocks.coords[:, :, q], probe, k, workspace)  # [B, qc]
        candidates[:, q] = ((lower <= reach[..., None]) & tiles.valid[:, None, :]).sum(-1)

    # phase 2: blocks sorted by candidate count, processed in chunks that fit the budget
    block_sample, block_index = blocks.valid.nonzero(as_tuple=True)
    counts, order = torch.sort(candidates[block_sample, block_index])
    block_sample, block_index = block_sample[order], block_index[order]
    counts = counts.tolist()
    index_out = torch.full((y.size(0), k), -1, dtype=torch.long, device=x.device)
    dist_out = torch.full((y.size(0), k), math.inf, dtype=x.dtype, device=x.device)
    per_block = TILE * TILE  # distance entries per block and candidate tile
    start = 0
    while start < len(counts):
        stop = _chunk_end(counts, start, max(1, max_chunk_entries // per_block))
        width = counts[stop - 1]
        if width > 0:
            chunk = slice(start, stop)
            _tiled_chunk(
                tiles, blocks, block_sample[chunk], block_index[chunk], width, k, ptr_x, ptr_y,
                index_out, dist_out, workspace,
            )
        start = stop
    return index_out, dist_out


def _probe_reach(tiles: _Tiles, queries: Tensor, probe: Tensor, k: int, workspace: _Workspace) -> Tensor:
    """Per query block, the largest k-th distance of its queries among the points of the probed tiles.

    ``queries: [D, B, qc, TILE]``, ``probe: [B, qc, P]`` tile numbers. Any k points bound the
    k-th neighbour distance from above; ``inf`` when the probed tiles hold fewer than k points.
    """
    num_samples, qc, num_probes = probe.shape
    if num_probes * TILE < k:
        return torch.full((num_samples, qc), math.inf, dtype=queries.dtype, device=queries.device)
    sample = torch.arange(num_samples, device=probe.device)[:, None, None]
    coords = tiles.coords[:, sample, probe].flatten(3).flatten(1, 2)  # [D, B*qc, P*TILE]
    dist = _distances_exact(coords, queries.flatten(1, 2), workspace)  # [B*qc, TILE, P*TILE]
    padding = (tiles.ids[sample, probe] == _NO_ID).flatten(2).flatten(0, 1)  # [B*qc, P*TILE]
    if bool(padding.any()):
        dist.masked_fill_(padding[:, None, :], math.inf)
    kth = torch.topk(dist, k, dim=-1, largest=False, sorted=False).values.amax(-1)  # [B*qc, TILE]
    return kth.amax(-1).view(num_samples, qc)


def _chunk_end(counts: List[int], start: int, capacity: int) -> int:
    """Largest ``stop > start`` with ``(stop - start) * counts[stop - 1] <= capacity`` (counts ascending)."""
    lo, hi = start + 1, len(counts)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if (mid - start) * counts[mid - 1] <= capacity:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _tiled_chunk(
    tiles: _Tiles,
    blocks: _Tiles,
    sample: Tensor,
    block: Tensor,
    width: int,
    k: int,
    ptr_x: Tensor,
    ptr_y: Tensor,
    index_out: Tensor,
    dist_out: Tensor,
    workspace: _Workspace,
) -> None:
    """Exact neighbours of the query blocks ``(sample, block): [nb]`` among their ``width`` best tiles."""
    lower = _tile_lower_bound(
        blocks.low[:, sample, block, None],
        blocks.high[:, sample, block, None],
        tiles.low[:, sample],
        tiles.high[:, sample],
    )  # [nb, G]
    lower.masked_fill_(~tiles.valid[sample], math.inf)
    chosen = torch.topk(lower, width, dim=-1, largest=False, sorted=False).indices  # [nb, width]
    ids = tiles.ids[sample[:, None], chosen].flatten(1)  # [nb, L]
    ids, by_id = ids.sort(dim=-1)  # candidates in index order: ties then resolve to the lowest index
    coords = tiles.coords[:, sample[:, None], chosen].flatten(2)  # [D, nb, L]
    coords = coords.gather(2, by_id.expand_as(coords))
    queries = blocks.coords[:, sample, block]  # [D, nb, TILE]
    dist = _distances_exact(coords, queries, workspace)  # [nb, TILE, L]
    padding = ids == _NO_ID
    if bool(padding.any()):
        dist.masked_fill_(padding[:, None, :], math.inf)
    keep = min(k, ids.size(1))
    found, nearest = _smallest_k(dist, keep, ids[:, None, :], workspace)  # ids or _NO_ID
    query = blocks.ids[sample, block]  # [nb, TILE]
    real = query != _NO_ID
    target = (query + ptr_y[sample, None])[real]
    found = torch.where(found != _NO_ID, found + ptr_x[sample, None, None], -1)
    index_out[target, :keep] = found[real]
    dist_out[target, :keep] = nearest[real]
