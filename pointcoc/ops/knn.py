"""Exact k-nearest neighbours on ragged and dense batches: knn, knn_padded, knn_dense, knn_graph, nearest.

Every function here is exact in the sense of :mod:`pointcoc.ops.exact`: its neighbour lists
equal those of a float64 brute force on the input values as given (squared Euclidean distance
summed in coordinate order, ties by the lower index), for any number of coordinates and for
float16, bfloat16, float32 and float64 inputs; inputs whose squared distances overflow float64
raise ``ValueError``. The searches themselves live in :mod:`pointcoc.ops.cells` (a uniform
cell grid, used for 1-3 coordinates when a sample holds at least ``GRID_MIN_POINTS`` points)
and :mod:`pointcoc.ops.search` (dense blocks and k-d tree tiles).

Signatures and output layouts follow torch-cluster (``knn``, ``knn_graph``, ``nearest``);
pointcoc is stricter where noted (``knn`` requires ``k`` points of ``x`` in every sample that
holds queries; ``knn_graph`` gives every node exactly ``min(k, n_b - 1)`` neighbours).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._checks import (
    batch_or_ptr,
    check_batch,
    check_bool,
    check_finite,
    check_float,
    check_k,
    check_padded_width,
    check_tensor,
)
from . import cells
from .backend import torch_cluster_module
from .batch import batch_counts
from .exact import REFINE_EXTRA, pair_distances, refine, working_dtype
from .search import DEFAULT_CHUNK_ENTRIES, search

__all__ = ["DEFAULT_CHUNK_ENTRIES", "knn", "knn_padded", "knn_dense", "knn_graph", "nearest"]

WIDE_FACTOR = 2
"""The second cell pass keeps this many times ``k + REFINE_EXTRA`` candidates."""

FALLBACK_DENSE_ENTRIES = 2**24
"""Unproven queries are searched again densely (not tiled) up to this many query-point pairs."""


def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    cosine: bool = False,
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    *,
    ptr_x: Optional[Tensor] = None,
    ptr_y: Optional[Tensor] = None,
    max_chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
) -> Tensor:
    """For every point of ``y``, its ``k`` nearest points of ``x`` within the same sample.

    Args:
        x: ``[N, D]`` float points searched.
        y: ``[M, D]`` float query points (same dtype and device as ``x``).
        k: neighbours per query; every sample holding queries needs at least ``k`` points of ``x``
            (torch-cluster silently returns fewer; use :func:`knn_padded` for that).
        batch_x: ``[N]`` sorted sample ids of ``x`` (``None``: one sample).
        batch_y: ``[M]`` sorted sample ids of ``y`` (``None``: one sample).
        cosine: rank by cosine distance instead: the float64 squared Euclidean distance between
            the float64 L2-normalised vectors (``2 - 2 cos``); zero vectors raise ``ValueError``.
        num_workers: accepted for torch-cluster compatibility; the pure path uses torch's threads.
        batch_size: number of samples (optional, as torch-cluster); must cover every sample id.
        ptr_x, ptr_y: CSR offsets ``[B + 1]`` instead of ``batch_x`` / ``batch_y`` (as pyg-lib).
        max_chunk_entries: bound on the distance entries computed at once.

    Returns:
        ``[2, M * k]`` LongTensor: row 0 indexes ``y`` (each query repeated ``k`` times,
        queries in order), row 1 the global index of the neighbour in ``x``; each query's
        neighbours ordered by (float64 squared distance, index), exactly as a float64 brute force.

    With torch-cluster installed and the backend ``"auto"``, torch-cluster finds the
    neighbours (float32 / float64, no cosine) and they are then put in the same order; only
    which of several points tied at the k-th distance is kept may differ from the pure path.
    """
    args = validate_search_args(
        x, y, k, batch_x, batch_y, ptr_x, ptr_y, cosine, num_workers, batch_size, allow_empty=False
    )
    x, y, k, batch_x, batch_y, counts_x, counts_y = args
    starved = (counts_y > 0) & (counts_x == 0)
    if bool(starved.any()):
        sample = int(starved.nonzero()[0, 0])
        raise ValueError(f"batch_y has queries in sample {sample} but batch_x has no points of x there")
    short = (counts_y > 0) & (counts_x < k)
    if bool(short.any()):
        sample = int(short.nonzero()[0, 0])
        raise ValueError(f"k={k} exceeds the number of x points ({int(counts_x[sample])}) in sample {sample}")
    check_chunk_entries(max_chunk_entries)
    edge = torch.empty(2, y.size(0), k, dtype=torch.long, device=y.device)
    edge[0] = torch.arange(y.size(0), device=y.device)[:, None]  # each query repeated k times
    cluster = torch_cluster_module()
    if cluster is not None and not cosine and _cluster_supports(x, k):
        edge[1] = _knn_cluster(cluster, x, y, k, batch_x, batch_y)
    else:
        exact_knn(x, y, k, batch_x, batch_y, counts_x, counts_y, max_chunk_entries, out=edge[1], distances=False)
    return edge.view(2, -1)


def knn_padded(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    max_chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
    *,
    cosine: bool = False,
    ptr_x: Optional[Tensor] = None,
    ptr_y: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Like :func:`knn` but as fixed-width rows, accepting samples with fewer than ``k`` points.

    Always the pure path (whatever the backend): model layers get the same neighbours, ties
    included, with or without torch-cluster.

    Args: as :func:`knn` (``x`` or ``y`` may be empty).

    Returns:
        ``index: [M, k]`` LongTensor of global ``x`` indices ordered by (float64 distance, index),
        ``-1`` where the query's sample has fewer than ``k`` points of ``x``;
        ``dist: [M, k]`` the float64 reference squared distances rounded to the dtype of ``x``
        (float32 for float16 / bfloat16 inputs, so they cannot overflow; float64 with
        ``cosine=True``), ``inf`` at the ``-1`` slots, no gradient.
    """
    args = validate_search_args(x, y, k, batch_x, batch_y, ptr_x, ptr_y, cosine, 1, None, allow_empty=True)
    check_padded_width(args[2], args[1].size(0), args[5])
    check_chunk_entries(max_chunk_entries)
    index, dist = exact_knn(*args, max_chunk_entries)
    return index, dist.to(torch.float32 if args[0].element_size() < 4 else args[0].dtype)


def knn_dense(x: Tensor, y: Tensor, k: int, max_chunk_entries: int = DEFAULT_CHUNK_ENTRIES) -> Tensor:
    """kNN for equal-size samples in dense form (exact, as :func:`knn`).

    Args:
        x: ``[B, n, D]`` float points searched.
        y: ``[B, m, D]`` float queries.
        k: neighbours per query, ``k <= n``.
        max_chunk_entries: bound on the distance entries computed at once.

    Returns:
        ``[B, m, k]`` LongTensor of indices into ``x[b]`` (0 .. n-1), ordered by (float64 distance, index).
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
    samples = torch.arange(num_samples, device=x.device)
    batch_x, batch_y = samples.repeat_interleave(n), samples.repeat_interleave(m)
    counts_x = torch.full((num_samples,), n, device=x.device)
    counts_y = torch.full((num_samples,), m, device=x.device)
    index, _ = exact_knn(
        x.detach().reshape(-1, dim),
        y.detach().reshape(-1, dim),
        k,
        batch_x,
        batch_y,
        counts_x,
        counts_y,
        max_chunk_entries,
        distances=False,
    )
    return (index - batch_y[:, None] * n).view(num_samples, m, k)


def knn_graph(
    x: Tensor,
    k: int,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    flow: str = "source_to_target",
    cosine: bool = False,
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    *,
    ptr: Optional[Tensor] = None,
) -> Tensor:
    """The k-nearest-neighbour graph of a ragged batch, as torch-cluster's ``knn_graph``.

    Args:
        x: ``[N, D]`` float node positions (or features).
        k: neighbours per node.
        batch: ``[N]`` sorted sample ids (``None``: one sample); or ``ptr`` offsets ``[B + 1]``.
        loop: count every node as its own neighbour (it is then its own first neighbour unless
            duplicates of lower index tie with it).
        flow: ``"source_to_target"`` (``edge_index[1]`` is the node, ``edge_index[0]`` its
            neighbours, PyG's message-passing convention) or ``"target_to_source"`` (swapped).
        cosine, num_workers, batch_size: as :func:`knn`.

    Returns:
        ``edge_index: [2, E]`` LongTensor, grouped by node in order, each node's neighbours by
        (float64 distance, index). Without ``loop`` the node itself is left out and each node
        gets exactly ``min(k, n_b - 1)`` neighbours (stricter than torch-cluster, which drops
        the node from its ``k + 1`` nearest and keeps ``k + 1`` when a duplicate outranks it).
        With ``loop``, ``min(k, n_b)``.
    """
    loop = check_bool(loop, "loop")
    if flow not in ("source_to_target", "target_to_source"):
        raise ValueError(f"flow must be 'source_to_target' or 'target_to_source', got {flow!r}")
    k = check_k(k, "k")
    args = validate_search_args(x, x, k, batch, batch, ptr, ptr, cosine, num_workers, batch_size, allow_empty=True)
    x, _, _, batch, _, counts, _ = args
    width = k + (0 if loop else 1)
    index, _ = exact_knn(x, x, width, batch, batch, counts, counts, DEFAULT_CHUNK_ENTRIES, distances=False)
    node = torch.arange(x.size(0), device=x.device)[:, None].expand_as(index)
    if not loop:  # drop the node itself, or the last neighbour where the node is not listed
        keep = index != node
        keep[:, -1] &= ~keep.all(1)
        index, node = index[keep].view(-1, k), node[keep].view(-1, k)
    valid = index >= 0
    source, target = index[valid], node[valid]
    if flow == "target_to_source":
        source, target = target, source
    return torch.stack([source, target])


def nearest(
    x: Tensor,
    y: Tensor,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    *,
    ptr_x: Optional[Tensor] = None,
    ptr_y: Optional[Tensor] = None,
) -> Tensor:
    """For every point of ``x``, the index of its nearest point of ``y`` in the same sample.

    As torch-cluster's ``nearest`` (cluster assignment of ``x`` to the points of ``y``); ties
    go to the lowest index of ``y``; exact as :func:`knn`. Every sample holding points of
    ``x`` needs a point of ``y``.

    Returns:
        ``[N]`` LongTensor of global indices into ``y``.
    """
    x = check_tensor(x, "x", ndim=2)
    y = check_tensor(y, "y", ndim=2)
    _check_pair(x, y)
    for t, name in ((x, "x"), (y, "y")):
        if t.size(0) == 0:
            raise ValueError(f"{name} is empty: a point set needs at least one point")
    batch_x = batch_or_ptr(batch_x, ptr_x, x.size(0), x.device, "batch_x", "ptr_x")
    batch_y = batch_or_ptr(batch_y, ptr_y, y.size(0), y.device, "batch_y", "ptr_y")
    batch_x, _ = check_batch(batch_x, x.size(0), x.device, "batch_x")
    batch_y, _ = check_batch(batch_y, y.size(0), y.device, "batch_y")
    args = validate_search_args(y, x, 1, batch_y, batch_x, None, None, False, 1, None, allow_empty=False)
    y, x, _, batch_y, batch_x, counts_y, counts_x = args
    starved = (counts_x > 0) & (counts_y == 0)
    if bool(starved.any()):
        raise ValueError(f"batch_x has points in sample {int(starved.nonzero()[0, 0])} where y has none")
    index, _ = exact_knn(y, x, 1, batch_y, batch_x, counts_y, counts_x, DEFAULT_CHUNK_ENTRIES, distances=False)
    return index[:, 0]


def check_chunk_entries(max_chunk_entries: object) -> int:
    """Require a positive int budget of distance entries per chunk."""
    return check_k(max_chunk_entries, "max_chunk_entries")


@torch.no_grad()
def exact_knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor,
    batch_y: Tensor,
    counts_x: Tensor,
    counts_y: Tensor,
    max_chunk_entries: int,
    out: Optional[Tensor] = None,
    distances: bool = True,
) -> Tuple[Tensor, Tensor]:
    """Exact search (see :mod:`pointcoc.ops.exact`): ``index [M, k]`` (-1 padded; written to
    ``out`` when given) and float64 ``dist [M, k]`` (with ``distances=False`` only each row's
    k-th distance, ``[M, 1]``)."""
    work = working_dtype(x, y, batch_x, batch_y, counts_x.numel())
    wide = k + REFINE_EXTRA
    index = torch.empty(y.size(0), k, dtype=torch.long, device=y.device) if out is None else out
    dist = torch.empty(y.size(0), k if distances else 1, dtype=torch.float64, device=y.device)
    last = k - dist.size(1)  # the columns of a distance row that are kept
    if x.size(0) and y.size(0) and x.size(1) <= cells.GRID_MAX_DIM and int(counts_x.max()) >= cells.GRID_MIN_POINTS:
        proven = _cell_search(x, y, k, batch_x, batch_y, counts_x, work, max_chunk_entries, (index, dist))
    elif work == torch.float64 or x.size(0) == 0 or y.size(0) == 0:  # search arithmetic = the reference
        found, found_dist = search(x.double(), y.double(), k, batch_x, batch_y, counts_x, counts_y, max_chunk_entries)
        return index.copy_(found), found_dist[:, last:]
    else:
        candidates, dist_work = search(
            x.float(), y.float(), wide, batch_x, batch_y, counts_x, counts_y, max_chunk_entries
        )
        found, found_dist, proven = refine(x, y, candidates, dist_work, k, counts_x[batch_y] <= wide)
        index.copy_(found)
        dist.copy_(found_dist[:, last:])
    if not bool(proven.all()):  # near-ties beyond the candidates: search those queries in float64
        rows = (~proven).nonzero()[:, 0]
        sub_batch = batch_y[rows]
        sub_counts = batch_counts(sub_batch, counts_y.numel())
        few = rows.numel() * int(counts_x.max()) <= FALLBACK_DENSE_ENTRIES  # tiling all of x would cost more
        found, found_dist = search(
            x.double(), y[rows].double(), k, batch_x, sub_batch, counts_x, sub_counts, max_chunk_entries, tiled=not few
        )
        index[rows], dist[rows] = found, found_dist[:, last:]
    return index, dist


def _cell_search(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Tensor,
    batch_y: Tensor,
    counts_x: Tensor,
    work: torch.dtype,
    max_chunk_entries: int,
    out: Tuple[Tensor, Tensor],
) -> Tensor:
    """The cell-grid search (:mod:`pointcoc.ops.cells`) into ``out = (index [M, k], dist [M, w])``
    (as :func:`pointcoc.ops.cells.cell_search`); returns ``proven [M]``. Queries the first pass
    cannot prove (a k-th neighbour beyond the block, or ties spanning the candidates) get a
    second pass with more candidates, their blocks one cell wider on the sides nearer than the
    k-th distance the first pass found (candidates sorted by working distance only where the first
    pass still sorted them at its end)."""
    wide = k + REFINE_EXTRA
    grid = cells.CellGrid(x.to(work), batch_x, counts_x, cells.points_per_cell(x.size(1), wide))
    index, dist = out
    proven = torch.empty(y.size(0), dtype=torch.bool, device=y.device)
    presort = cells.cell_search(grid, y, k, wide, batch_y, max_chunk_entries, (index, dist, proven))
    rows = (~proven).nonzero()[:, 0]
    if rows.numel():
        kth = dist[rows, -1]  # an upper bound on the k-th neighbour distance
        again = (index.new_empty(rows.numel(), k), dist.new_empty(rows.numel(), dist.size(1)), proven[rows])
        wider = WIDE_FACTOR * wide
        cells.cell_search(grid, y[rows], k, wider, batch_y[rows], max_chunk_entries, again, kth=kth, presort=presort)
        index[rows], dist[rows], proven[rows] = again
    return proven


def _check_pair(x: Tensor, y: Tensor) -> None:
    check_float(x, "x")
    check_float(y, "y")
    if y.dtype != x.dtype:
        raise TypeError(f"y must have the dtype of x ({x.dtype}), got {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if y.size(-1) != x.size(-1):
        raise ValueError(f"y must have as many features as x ({x.size(-1)} per point), got {y.size(-1)}")
    if x.size(-1) == 0:
        raise ValueError("x must have at least one feature per point")
    if not bool(torch.isfinite(x).all() & torch.isfinite(y).all()):  # one host sync for both
        check_finite(x, "x")  # raises, naming the tensor
        check_finite(y, "y")


def validate_search_args(
    x: object,
    y: object,
    k: object,
    batch_x: object,
    batch_y: object,
    ptr_x: object,
    ptr_y: object,
    cosine: object,
    num_workers: object,
    batch_size: object,
    allow_empty: bool,
) -> Tuple[Tensor, Tensor, int, Tensor, Tensor, Tensor, Tensor]:
    """Check the arguments of the kNN functions; return them with per-sample counts ``[B]``."""
    x = check_tensor(x, "x", ndim=2)
    y = check_tensor(y, "y", ndim=2)
    _check_pair(x, y)
    k = check_k(k, "k")
    cosine = check_bool(cosine, "cosine")
    check_k(num_workers, "num_workers")
    if not allow_empty:
        for t, name in ((x, "x"), (y, "y")):
            if t.size(0) == 0:
                raise ValueError(f"{name} is empty: a point set needs at least one point")
    batch_x = batch_or_ptr(batch_x, ptr_x, x.size(0), x.device, "batch_x", "ptr_x")
    batch_y = batch_or_ptr(batch_y, ptr_y, y.size(0), y.device, "batch_y", "ptr_y")
    batch_x, samples_x = _batch_or_empty(batch_x, x, "batch_x")
    batch_y, samples_y = _batch_or_empty(batch_y, y, "batch_y")
    num_samples = max(samples_x, samples_y)
    if batch_size is not None:
        if check_k(batch_size, "batch_size") < num_samples:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of samples ({num_samples})")
        num_samples = batch_size
    counts_x = batch_counts(batch_x, num_samples)
    counts_y = batch_counts(batch_y, num_samples)
    x, y = x.detach(), y.detach()
    if cosine:
        x, y = _unit_rows(x, "x"), _unit_rows(y, "y")
    return x, y, k, batch_x, batch_y, counts_x, counts_y


def _unit_rows(points: Tensor, name: str) -> Tensor:
    """Rows scaled to unit L2 norm in float64 (the cosine-distance reference)."""
    points = points.double()
    norm = points.square().sum(1, keepdim=True).sqrt_()
    if bool((norm == 0).any()):
        raise ValueError(f"{name} has zero vectors: cosine distance is undefined for them")
    return points / norm


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
    """torch-cluster's neighbour sets ``[M, k]``, reordered per query by (float64 distance, index)."""
    row, col = cluster.knn(x, y, k, batch_x, batch_y)
    if not bool((row[1:] >= row[:-1]).all()):  # its CPU kernel already lists queries in order
        col = col[torch.argsort(row, stable=True)]
    col = col.view(y.size(0), k).sort(dim=1).values
    order = pair_distances(y.double(), x.double(), col).sort(dim=1, stable=True).indices
    return col.gather(1, order)
