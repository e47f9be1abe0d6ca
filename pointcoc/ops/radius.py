"""Exact radius search on ragged batches: radius, radius_graph (torch-cluster signatures).

A point ``x[j]`` is a neighbour of the query ``y[i]`` when both lie in the same sample and the
float64 reference squared distance (see :mod:`pointcoc.ops.exact`) is strictly below
``float64(r) ** 2``, as torch-cluster's strict comparison. Each query keeps its neighbours in
increasing index order, truncated to the first ``max_num_neighbors`` (torch-cluster's CUDA
kernel also keeps the first ones by index; its CPU kernel keeps an unspecified subset).

The search reuses the k-d tree tiles of :mod:`pointcoc.ops.search`: every (query block, x tile)
pair whose bounding boxes are closer than ``r`` (a float64 lower bound that never exceeds a
pair's float64 distance) is compared exactly, pair by pair, in float64.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._checks import check_bool, check_k
from .batch import batch_ptr
from .exact import working_dtype
from .knn import validate_search_args
from .search import DEFAULT_CHUNK_ENTRIES, NO_ID, TILE, Tiles, tile_lower_bound

__all__ = ["radius", "radius_graph"]


def radius(
    x: Tensor,
    y: Tensor,
    r: float,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    max_num_neighbors: int = 32,
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    *,
    ptr_x: Optional[Tensor] = None,
    ptr_y: Optional[Tensor] = None,
    max_chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
) -> Tensor:
    """For every point of ``y``, the points of ``x`` of its sample closer than ``r``.

    Args:
        x: ``[N, D]`` float points searched; y: ``[M, D]`` float queries (same dtype and device).
        r: radius, a finite number ``>= 0`` (strict: distance ``< r``).
        batch_x, batch_y: sorted sample ids (``None``: one sample); or ``ptr_x`` / ``ptr_y`` offsets.
        max_num_neighbors: at most this many neighbours per query (the lowest indices).
        num_workers, batch_size: as :func:`pointcoc.ops.knn`.
        max_chunk_entries: bound on the distance entries computed at once.

    Returns:
        ``[2, E]`` LongTensor: row 0 indexes ``y``, row 1 ``x``; sorted by query, then by ``x`` index.
    """
    x, y, _, batch_x, batch_y, counts_x, counts_y = validate_search_args(
        x, y, 1, batch_x, batch_y, ptr_x, ptr_y, False, num_workers, batch_size, allow_empty=True
    )
    r2 = _check_radius(r)
    max_num_neighbors = check_k(max_num_neighbors, "max_num_neighbors")
    check_k(max_chunk_entries, "max_chunk_entries")
    return radius_pairs(x, y, r2, batch_x, batch_y, counts_x, counts_y, max_num_neighbors, False, max_chunk_entries)


def radius_graph(
    x: Tensor,
    r: float,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    max_num_neighbors: int = 32,
    flow: str = "source_to_target",
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    *,
    ptr: Optional[Tensor] = None,
) -> Tensor:
    """The radius graph of a ragged batch, as torch-cluster's ``radius_graph``.

    Returns ``edge_index: [2, E]`` grouped by node in order, each node's neighbours by
    increasing index; with ``flow="source_to_target"`` ``edge_index[1]`` is the node and
    ``edge_index[0]`` its neighbour (``"target_to_source"``: swapped). Without ``loop`` the node
    itself is excluded *before* truncating to ``max_num_neighbors`` (torch-cluster truncates
    to ``max_num_neighbors + 1`` first, so it can return one neighbour more or fewer).
    """
    loop = check_bool(loop, "loop")
    if flow not in ("source_to_target", "target_to_source"):
        raise ValueError(f"flow must be 'source_to_target' or 'target_to_source', got {flow!r}")
    x, _, _, batch, _, counts, _ = validate_search_args(
        x, x, 1, batch, batch, ptr, ptr, False, num_workers, batch_size, allow_empty=True
    )
    r2 = _check_radius(r)
    max_num_neighbors = check_k(max_num_neighbors, "max_num_neighbors")
    node, neighbour = radius_pairs(
        x, x, r2, batch, batch, counts, counts, max_num_neighbors, not loop, DEFAULT_CHUNK_ENTRIES
    )
    if flow == "source_to_target":
        return torch.stack([neighbour, node])
    return torch.stack([node, neighbour])


def _check_radius(r: object) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        raise TypeError(f"r must be a number, got {type(r).__name__}")
    if not (math.isfinite(r) and r >= 0):
        raise ValueError(f"r must be finite and >= 0, got {r}")
    return float(r) * float(r)


@torch.no_grad()
def radius_pairs(
    x: Tensor,
    y: Tensor,
    r2: float,
    batch_x: Tensor,
    batch_y: Tensor,
    counts_x: Tensor,
    counts_y: Tensor,
    max_num: int,
    skip_self: bool,
    max_chunk_entries: int,
) -> Tensor:
    """``[2, E]`` (query, x) pairs with float64 distance ``< r2``, sorted, at most ``max_num`` per query."""
    empty = torch.empty(2, 0, dtype=torch.long, device=x.device)
    if x.size(0) == 0 or y.size(0) == 0 or r2 == 0.0:
        return empty
    working_dtype(x, y, batch_x, batch_y, counts_x.numel())  # raises where float64 overflows
    ptr_x, ptr_y = batch_ptr(counts_x), batch_ptr(counts_y)
    tiles = Tiles(x.double(), batch_x, counts_x, ptr_x)
    blocks = Tiles(y.double(), batch_y, counts_y, ptr_y)
    num_samples, num_tiles = tiles.valid.shape
    step = max(1, max_chunk_entries // (num_samples * num_tiles))
    found = []
    for q0 in range(0, blocks.valid.size(1), step):
        q = slice(q0, q0 + step)
        lower = tile_lower_bound(
            blocks.low[:, :, q, None], blocks.high[:, :, q, None], tiles.low[:, :, None], tiles.high[:, :, None]
        )  # [B, qc, G]
        near = (lower < r2) & tiles.valid[:, None, :] & blocks.valid[:, q, None]
        sample, block, tile = near.nonzero(as_tuple=True)
        per_chunk = max(1, max_chunk_entries // (TILE * TILE))
        for c0 in range(0, sample.numel(), per_chunk):
            c = slice(c0, c0 + per_chunk)
            found.append(_pairs_in_tiles(tiles, blocks, sample[c], block[c] + q0, tile[c], r2, ptr_x, ptr_y, skip_self))
    if not found:
        return empty
    pairs = torch.cat(found, 1)
    pairs = pairs[:, torch.argsort(pairs[0] * x.size(0) + pairs[1])]
    start = batch_ptr(torch.bincount(pairs[0], minlength=y.size(0)))
    rank = torch.arange(pairs.size(1), device=x.device) - start[pairs[0]]
    return pairs[:, rank < max_num]


def _pairs_in_tiles(
    tiles: Tiles,
    blocks: Tiles,
    sample: Tensor,
    block: Tensor,
    tile: Tensor,
    r2: float,
    ptr_x: Tensor,
    ptr_y: Tensor,
    skip_self: bool,
) -> Tensor:
    """Global (query, x) pairs closer than ``r2`` among the given (block, tile) pairs: ``[2, E]``."""
    queries = blocks.coords[:, sample, block]  # [D, P, TILE]
    points = tiles.coords[:, sample, tile]
    dist = None
    for p in range(queries.size(0)):  # float64, coordinate order: the reference distance
        term = (queries[p, :, :, None] - points[p, :, None, :]).square_()
        dist = term if dist is None else dist.add_(term)
    query_id = blocks.ids[sample, block]
    point_id = tiles.ids[sample, tile]
    inside = (dist < r2) & (query_id != NO_ID)[:, :, None] & (point_id != NO_ID)[:, None, :]
    query_id = query_id + ptr_y[sample, None]
    point_id = point_id + ptr_x[sample, None]
    if skip_self:
        inside &= query_id[:, :, None] != point_id[:, None, :]
    pair, lane_q, lane_x = inside.nonzero(as_tuple=True)
    return torch.stack([query_id[pair, lane_q], point_id[pair, lane_x]])
