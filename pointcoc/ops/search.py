"""The pure-PyTorch k-nearest-neighbour searches behind :mod:`pointcoc.ops.knn`.

Both rank by squared Euclidean distance summed coordinate by coordinate in the dtype they are
given (exact differences, no matrix-product expansion), ties broken by the lower index, and
give identical results:

* dense: both point sets are padded to dense per-sample blocks, and rectangular
  chunks of (samples x query slots) are compared with all points of their
  samples; every chunk's distance matrix holds at most ``max_chunk_entries``
  values, so memory stays bounded;
* tiled (positions with at most :data:`TILED_MAX_DIM` coordinates, samples of at
  least :data:`TILED_MIN_POINTS` points): points are grouped into k-d tree tiles
  and each block of queries is compared only with the tiles that can hold one of
  its neighbours (bounding-box pruning, exact); a 224x224 image as 50,176 points
  computes a few hundred distances per query and never allocates ``N^2``.

In float64 (the reference arithmetic) both return the k smallest (distance, index) pairs of
each row: the k-th value is found with ``topk`` and the ties at it resolved by index. In
float32 they return *candidates*: k points with the smallest float32 distances, ties at the
k-th in no fixed order, which :func:`pointcoc.ops.exact.refine` re-ranks in float64.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from .batch import batch_ptr, slot_in_sample

__all__ = [
    "TILED_MAX_DIM",
    "TILED_MIN_POINTS",
    "DEFAULT_CHUNK_ENTRIES",
    "TILE",
    "NO_ID",
    "Tiles",
    "tile_lower_bound",
    "chunk_end",
    "search",
]

TILED_MAX_DIM = 4
"""Positions with at most this many coordinates may use the tiled search."""

DEFAULT_CHUNK_ENTRIES = 2**20
"""Distance entries computed per chunk; the largest temporaries are the distance chunk, one
term of the same size and its int64 sort keys (about 16 bytes per entry in float32: 16 MiB)."""

TILE = 32
"""Points per tile in the tiled search (x tiles and query blocks)."""

TILED_MIN_POINTS = 2048
"""Samples of at least this many x points (with D <= TILED_MAX_DIM) use the tiled search."""

PROBE_EXTRA_TILES = 4
"""Tiles probed beyond ceil(k / TILE) to bound each query's k-th distance in the tiled search."""

_LOW_32_BITS = 0xFFFFFFFF
NO_ID = 2**31 - 1  # id of padding lanes in the tiled search (sorts after every real point)


@torch.no_grad()
def search(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor,
    batch_y: Tensor,
    counts_x: Tensor,
    counts_y: Tensor,
    max_chunk_entries: int,
    tiled: bool = True,
) -> Tuple[Tensor, Tensor]:
    """Neighbours by (distance in the dtype of ``x``, index): ``index [M, k]`` (global, -1 padded)
    and ``dist [M, k]`` (inf padded). ``x``, ``y`` float32 or float64; batches sorted.
    ``tiled=False``: the dense search whatever the sample sizes."""
    if y.size(0) == 0:
        return torch.empty(0, k, dtype=torch.long, device=y.device), torch.empty(0, k, dtype=y.dtype, device=y.device)
    if tiled and x.size(1) <= TILED_MAX_DIM and x.size(0) and int(counts_x.max()) >= TILED_MIN_POINTS:
        return _knn_tiled(x, y, k, batch_x, batch_y, counts_x, counts_y, max_chunk_entries)
    num_samples = counts_x.numel()
    ptr_x = batch_ptr(counts_x)
    ptr_y = batch_ptr(counts_y)
    slot_y = slot_in_sample(batch_y, ptr_y)
    if x.size(0) == 0:
        x_dense = x.new_zeros(num_samples, 0, x.size(1))
    else:
        x_dense = x.new_zeros(num_samples, int(counts_x.max()), x.size(1))
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
    num_samples, n, _ = x_dense.shape
    m = y_dense.size(1)
    device, dtype = x_dense.device, x_dense.dtype
    slots_out = torch.full((num_samples, m, k), -1, dtype=torch.long, device=device)
    dist_out = torch.full((num_samples, m, k), float("inf"), dtype=dtype, device=device)
    if n == 0 or m == 0:
        return slots_out, dist_out
    x_coords = x_dense.permute(2, 0, 1).contiguous()  # coordinate-major copies: [D, B, n] and [D, B, m]
    y_coords = y_dense.permute(2, 0, 1).contiguous()
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
            dist = _distances_exact(x_coords[:, b0:b1, :nx_r], y_coords[:, b0:b1, j0:j1], workspace)
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


def _smallest_k(dist: Tensor, k: int, columns: Tensor, workspace: _Workspace) -> Tuple[Tensor, Tensor]:
    """The k smallest entries of each row of ``dist: [..., n]``.

    float64: ordered by (value, column id) (``columns: [n]`` or broadcastable to ``dist``, distinct
    non-negative ids ascending along the row). float32: a set of k smallest values in no fixed
    order (which of several values tied at the k-th is kept is unspecified): the float32 search
    only collects candidates that :func:`pointcoc.ops.exact.refine` re-ranks.
    Returns ``(ids [..., k], values [..., k])``; values are >= +0 (inf allowed).
    """
    if dist.dtype == torch.float32:
        # non-negative float32 bit patterns are monotone as int32: (bits << 32) | id is one int64
        # key, and topk on int64 is faster than on float32 (no NaN handling)
        key = workspace.get("key", tuple(dist.shape), torch.int64)
        key.copy_(dist.view(torch.int32))
        key.bitwise_left_shift_(32).bitwise_or_(columns)
        key = torch.topk(key, k, dim=-1, largest=False, sorted=False).values
        ids = key.bitwise_and(_LOW_32_BITS)
        values = key.bitwise_right_shift(32).to(torch.int32).view(torch.float32)
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


class Tiles:
    """Points of a ragged batch in k-d tree tiles.

    ``coords: [D, B, G, TILE]`` (padding lanes repeat the tile's first point, so bounding boxes
    are unchanged), ``ids: [B, G, TILE]`` index of the point inside its sample (``NO_ID`` for
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
        ids = torch.where(real, source - ptr[:-1, None], NO_ID)
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
        widest = (high - low).argmax(1, keepdim=True)[start]  # widest axis of each position's node
        along = current.gather(1, widest).squeeze(1).double()
        floor, span = low[start].gather(1, widest).squeeze(1).double(), (high - low)[start].gather(1, widest).squeeze(1)
        fraction = torch.where(span > 0, (along - floor) / span.double(), 0.0)  # [0, 1] inside the node
        # one sort: by node, then (approximately: any order gives valid tiles) along the widest axis
        order = order[torch.argsort(start.double() + 0.5 * fraction, stable=True)]
        left = TILE * ((-(-size // TILE) + 1) // 2)  # TILE * ceil(tiles / 2)
        right = split & (position - start >= left)
        start = torch.where(right, start + left, start)
        size = torch.where(split, torch.where(right, size - left, left), size)


def _same_points(x: Tensor, y: Tensor, batch_x: Tensor, batch_y: Tensor) -> bool:
    """True when ``y`` is ``x`` (all-to-all search: the query blocks are the tiles themselves)."""
    return (
        x.shape == y.shape
        and x.stride() == y.stride()
        and x.data_ptr() == y.data_ptr()
        and (batch_x.data_ptr() == batch_y.data_ptr() or torch.equal(batch_x, batch_y))
    )


def tile_lower_bound(y_low: Tensor, y_high: Tensor, x_low: Tensor, x_high: Tensor) -> Tensor:
    """Lower bound on squared distances between boxes: ``[D, ..., 1]`` blocks vs ``[D, ..., G]`` tiles."""
    lower = None
    for p in range(y_low.size(0)):
        gap = torch.maximum(y_low[p] - x_high[p], x_low[p] - y_high[p]).clamp_min_(0.0).square_()
        lower = gap if lower is None else lower.add_(gap)
    return lower


@torch.no_grad()
def _candidate_tiles(tiles: Tiles, blocks: Tiles, k: int, max_chunk_entries: int, workspace: _Workspace) -> Tensor:
    """Phase 1 of :func:`_knn_tiled`: per query block ``[B, Q]``, how many tiles lie within a
    distance inside which every query of the block has ``k`` points."""
    num_samples, num_tiles = tiles.valid.shape
    num_blocks = blocks.valid.size(1)
    probes = min(num_tiles, -(-k // TILE) + PROBE_EXTRA_TILES)
    candidates = torch.empty(num_samples, num_blocks, dtype=torch.long, device=tiles.valid.device)
    step = max(1, max_chunk_entries // (num_samples * max(num_tiles, probes * TILE * TILE)))
    for q0 in range(0, num_blocks, step):
        q = slice(q0, q0 + step)
        lower = tile_lower_bound(
            blocks.low[:, :, q, None], blocks.high[:, :, q, None], tiles.low[:, :, None], tiles.high[:, :, None]
        )  # [B, qc, G]
        lower.masked_fill_(~tiles.valid[:, None, :], math.inf)
        probe = torch.topk(lower, probes, dim=-1, largest=False, sorted=False).indices  # [B, qc, probes]
        reach = _probe_reach(tiles, blocks.coords[:, :, q], probe, k, workspace)  # [B, qc]
        candidates[:, q] = ((lower <= reach[..., None]) & tiles.valid[:, None, :]).sum(-1)
    return candidates


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
    tiles = Tiles(x, batch_x, counts_x, ptr_x)
    blocks = tiles if _same_points(x, y, batch_x, batch_y) else Tiles(y, batch_y, counts_y, ptr_y)
    workspace = _Workspace(x.device)
    candidates = _candidate_tiles(tiles, blocks, k, max_chunk_entries, workspace)

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
        stop = chunk_end(counts, start, max(1, max_chunk_entries // per_block))
        width = counts[stop - 1]
        if width > 0:
            chunk = slice(start, stop)
            _tiled_chunk(
                tiles,
                blocks,
                block_sample[chunk],
                block_index[chunk],
                width,
                k,
                ptr_x,
                ptr_y,
                index_out,
                dist_out,
                workspace,
            )
        start = stop
    return index_out, dist_out


def _probe_reach(tiles: Tiles, queries: Tensor, probe: Tensor, k: int, workspace: _Workspace) -> Tensor:
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
    padding = (tiles.ids[sample, probe] == NO_ID).flatten(2).flatten(0, 1)  # [B*qc, P*TILE]
    if bool(padding.any()):
        dist.masked_fill_(padding[:, None, :], math.inf)
    kth = torch.topk(dist, k, dim=-1, largest=False, sorted=False).values.amax(-1)  # [B*qc, TILE]
    return kth.amax(-1).view(num_samples, qc)


def chunk_end(counts: List[int], start: int, capacity: int) -> int:
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
    tiles: Tiles,
    blocks: Tiles,
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
    lower = tile_lower_bound(
        blocks.low[:, sample, block, None],
        blocks.high[:, sample, block, None],
        tiles.low[:, sample],
        tiles.high[:, sample],
    )  # [nb, G]
    lower.masked_fill_(~tiles.valid[sample], math.inf)
    chosen = torch.topk(lower, width, dim=-1, largest=False, sorted=False).indices  # [nb, width]
    ids = tiles.ids[sample[:, None], chosen].flatten(1)  # [nb, L]
    coords = tiles.coords[:, sample[:, None], chosen].flatten(2)  # [D, nb, L]
    if coords.dtype == torch.float64:  # candidates in index order: ties resolve to the lowest index
        ids, by_id = ids.sort(dim=-1)
        coords = coords.gather(2, by_id.expand_as(coords))
    queries = blocks.coords[:, sample, block]  # [D, nb, TILE]
    dist = _distances_exact(coords, queries, workspace)  # [nb, TILE, L]
    padding = ids == NO_ID
    if bool(padding.any()):
        dist.masked_fill_(padding[:, None, :], math.inf)
    keep = min(k, ids.size(1))
    found, nearest = _smallest_k(dist, keep, ids[:, None, :], workspace)  # ids or NO_ID
    query = blocks.ids[sample, block]  # [nb, TILE]
    real = query != NO_ID
    target = (query + ptr_y[sample, None])[real]
    found = torch.where(found != NO_ID, found + ptr_x[sample, None, None], -1)
    index_out[target, :keep] = found[real]
    dist_out[target, :keep] = nearest[real]
