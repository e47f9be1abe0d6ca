"""The exactness contract of the neighbour searches, and the arithmetic that keeps it.

**Reference distance.** Every search ranks by the *float64 brute-force* squared distance

    d(y, x) = sum over p = 0 .. D-1, in order, of (float64(y[p]) - float64(x[p])) ** 2

evaluated in float64 on the input values exactly as given (no centring, no expansion),
ties broken by the lower index of ``x``. "Exact" in this package means: the same neighbour
lists, in the same order, as sorting every candidate by ``(d, index)`` with this ``d``.

**Working precision.** Searching in float64 costs twice the memory traffic of float32, so
float16 / bfloat16 / float32 inputs are searched in float32 (half inputs are widened first,
so nothing overflows in half precision), with exact coordinate differences (no matrix-product
expansion, which cancels when coordinates are large compared with their spread). Each float32
distance is then within a relative error ``delta = 2 (D + 2) 2^-24`` (plus a tiny absolute
term for underflow) of the real distance. The search keeps ``k + REFINE_EXTRA`` candidates,
recomputes their ``d`` in float64 and re-ranks them; the result is provably the float64
ranking whenever the k-th float64 distance is below what any point outside the candidates
can have (:func:`refine`). The cell-grid search (:mod:`pointcoc.ops.cells`, 1-3 coordinates)
compares each query only with the points of a block of cells around it and adds a float64
lower bound on the distance of every point outside the block to that proof; it skips the
re-ranking where the working distances of the first k candidates are far enough apart that
their errors cannot reorder them (:func:`ordered_by_work`). Queries where it
cannot be proven (near-ties spanning all the candidates, e.g. many duplicate points, or a k-th
neighbour beyond the block) get a second cell pass with wider blocks and more candidates; the
few still unproven are searched again entirely in float64.

**Range.** When a sample's squared extent does not fit in float32 (coordinates spread over
more than about 1e19), the search runs in float64 directly; when it does not fit in float64
(spread above about 1e153) a ``ValueError`` is raised: the reference distances themselves
overflow.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "REFINE_EXTRA",
    "REFINE_ROWS",
    "working_dtype",
    "pair_distances",
    "rank_by_distance",
    "refine",
    "refine_rows",
    "rank_and_prove",
    "prove",
    "ordered_by_work",
    "column_distances",
    "reference_columns",
]

REFINE_EXTRA = 4
"""Candidates kept beyond k by a float32 search, re-ranked in float64."""

REFINE_ROWS = 4096
"""Queries re-ranked at once: the temporaries stay near 1 MiB, so the allocator reuses them
from chunk to chunk instead of paging in fresh memory (page faults dominated large calls)."""

_SAFE_FRACTION = 0.25  # squared extents up to a quarter of the dtype's largest value are safe


def working_dtype(x: Tensor, y: Tensor, batch_x: Tensor, batch_y: Tensor, num_samples: int) -> torch.dtype:
    """float32 or float64: the cheapest dtype that holds every squared distance of a sample.

    Raises ``ValueError`` when even float64 cannot hold them.
    """
    if x.size(0) == 0 or y.size(0) == 0:
        return torch.float64 if x.dtype == torch.float64 else torch.float32
    dim = x.size(1)
    low, high = x.new_full((num_samples, dim), math.inf), x.new_full((num_samples, dim), -math.inf)
    for points, batch in ((x, batch_x), (y, batch_y)):  # minima and maxima are exact in any dtype
        index = batch[:, None].expand(-1, dim)
        low.scatter_reduce_(0, index, points, "amin")
        high.scatter_reduce_(0, index, points, "amax")
    extent = (high.double() - low.double()).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # empty samples: 0
    reach = float(extent.square().sum(1).max())
    if not reach <= torch.finfo(torch.float64).max * _SAFE_FRACTION:
        raise ValueError(
            "x and y: squared distances between points of one sample exceed the float64 range "
            f"(squared extent {reach:.3g}); rescale the coordinates"
        )
    if x.dtype == torch.float64 or reach > torch.finfo(torch.float32).max * _SAFE_FRACTION:
        return torch.float64
    return torch.float32


def pair_distances(y: Tensor, x: Tensor, col: Tensor) -> Tensor:
    """``d[i, j] = sum_p (y[i, p] - x[col[i, j], p]) ** 2`` summed in coordinate order: ``[M, k]``."""
    return column_distances(y, x.t().contiguous(), col)


def reference_columns(x: Tensor) -> Tensor:
    """``x: [N, D]`` as float64 coordinate-major ``[D, N]`` (one copy)."""
    return torch.empty(x.size(1), x.size(0), dtype=torch.float64, device=x.device).copy_(x.t())


def column_distances(y: Tensor, columns: Tensor, col: Tensor) -> Tensor:
    """:func:`pair_distances` with ``x`` given coordinate-major, ``columns: [D, N]`` (a column of
    ``inf`` gives ``inf``: a sentinel for padding)."""
    dist = None
    flat = col.reshape(-1)
    for p, axis in enumerate(columns):
        term = axis.index_select(0, flat).view(col.shape)
        term = term.sub_(y[:, p, None]).square_()  # (x - y)^2 == (y - x)^2 exactly
        dist = term if dist is None else dist.add_(term)
    return dist


def rank_by_distance(index: Tensor, dist: Tensor, k: int, num_points: int) -> Tuple[Tensor, Tensor]:
    """The first ``k`` of each row of ``index`` / float64 ``dist`` ``[M, c]`` by (dist, index).

    ``index``: global indices below ``num_points`` (``-1`` with ``dist = inf`` for padding; finite
    ``dist`` below a quarter of the float64 range, as :func:`working_dtype` ensures). One
    sort of int64 keys: the bits of ``dist`` (monotone for ``dist >= +0``) with their lowest
    ``b = bit_length(num_points)`` bits replaced by the index. That is the (dist, index) order
    wherever the sorted ``dist`` is non-decreasing; the rare rows where two distances differing
    only in those bits come out of order are sorted again by index, then stably by distance.
    """
    bits = max(1, int(num_points).bit_length())
    key = dist.view(torch.int64).bitwise_and(-(1 << bits)).add_(index)  # low bits cleared; inf - 1: last
    order = key.sort(dim=1).indices
    dist_sorted = dist.gather(1, order)
    top = index.gather(1, order[:, :k])
    unsorted = (dist_sorted[:, 1:] < dist_sorted[:, :-1]).any(1)
    if bool(unsorted.any()):
        rows = unsorted.nonzero()[:, 0]
        sub_index, by_index = torch.where(index[rows] < 0, torch.iinfo(torch.long).max, index[rows]).sort(dim=1)
        sub_dist, by_dist = dist[rows].gather(1, by_index).sort(dim=1, stable=True)
        top[rows] = index[rows].gather(1, by_index).gather(1, by_dist[:, :k])
        dist_sorted[rows] = sub_dist
    return top, dist_sorted[:, :k]


def refine(
    x: Tensor,
    y: Tensor,
    index: Tensor,
    dist_work: Tensor,
    k: int,
    complete: Tensor,
    region: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Re-rank float32 candidates by the float64 reference distance; prove the result exact.

    Args:
        x, y: the original points (any float dtype).
        index: ``[M, c]`` candidates (global x indices, ``-1`` padding), ``c >= k``, in any
            order: ``c`` points with the smallest float32 (or float64) distances among the points
            of the query's search region, so every other point of the region has a working
            distance of at least the largest of ``dist_work``.
        dist_work: ``[M, c]`` their float32 (or float64) distances.
        complete: ``[M]`` True where the candidates are all the points of the region.
        region: ``[M]`` float64 lower bound on the float64 reference distance of every point of
            the sample outside the region (``None``: the region is the whole sample).

    Returns:
        ``index [M, k]``, float64 ``dist [M, k]`` and ``proven [M]`` (True where no point
        outside the candidates can enter the first k by float64 distance).
    """
    rows = index.size(0)
    top = index.new_empty(rows, k)
    dist = torch.empty(rows, k, dtype=torch.float64, device=index.device)
    proven = torch.empty(rows, dtype=torch.bool, device=index.device)
    columns = reference_columns(x)
    for start in range(0, rows, REFINE_ROWS):
        part = slice(start, start + REFINE_ROWS)
        outside = None if region is None else region[part]
        top[part], dist[part], proven[part] = refine_rows(
            columns, y[part].double(), index[part], dist_work[part], k, complete[part], outside
        )
    return top, dist, proven


def refine_rows(
    columns: Tensor, y: Tensor, index: Tensor, dist_work: Tensor, k: int, complete: Tensor, region: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`refine` in one piece, with ``x`` as float64 coordinate-major ``columns: [D, N]``
    and ``y`` float64 (callers keep the rows at most :data:`REFINE_ROWS`)."""
    d64 = column_distances(y, columns, index.clamp(min=0)).masked_fill_(index < 0, math.inf)
    return rank_and_prove(index, d64, dist_work, k, complete, region, columns.size(1), columns.size(0))


def rank_and_prove(
    index: Tensor,
    d64: Tensor,
    dist_work: Tensor,
    k: int,
    complete: Tensor,
    region: Optional[Tensor],
    num_points: int,
    dim: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`refine` once the candidates' float64 reference distances are known: ranks ``index``
    (below ``num_points``, ``-1`` padding) by (``d64: [M, c]``, ``inf`` at padding; index) and
    proves the first ``k`` from the working distances ``dist_work`` of points of ``dim`` coordinates."""
    index, d64 = rank_by_distance(index, d64, k, num_points)
    return index, d64, prove(d64[:, -1], dist_work.amax(1), complete, region, dim)


def prove(kth: Tensor, farthest: Tensor, complete: Tensor, region: Optional[Tensor], dim: int) -> Tensor:
    """``[M]`` True where no point outside the candidates can enter the first k: the k-th float64
    distance ``kth`` is below the float64 distance of every point of the region whose working
    distance is at least ``farthest`` (the largest of the candidates'; no such point where
    ``complete``) and below ``region`` (as in :func:`refine`)."""
    outside = torch.where(complete, math.inf, _lower_bound(farthest, dim))
    if region is not None:
        outside = torch.minimum(outside, region)
    return (kth < outside) | (outside == math.inf)


def ordered_by_work(dist_work: Tensor, k: int, dim: int) -> Tensor:
    """``[M]`` True where candidates sorted by their working distances ``dist_work: [M, c]``
    (ascending) are provably sorted by the float64 reference distance in their first ``k``, and
    their first ``k`` are the ``k`` nearest of the candidates.

    Each of the first ``min(k + 1, c)`` working distances ``b`` must exceed ``a * factor + slack``
    for the one ``a`` before it. Then the lower bound on its reference distance,
    ``(b - tiny32) / (1 + delta) * (1 - gamma) - tiny64`` (:func:`_lower_bound`), is above the upper
    bound on the previous one's, ``(a + tiny32) / (1 - delta) * (1 + gamma) + tiny64``: ``factor``
    is the ratio of the relative terms and ``slack`` exceeds the absolute ones, both rounded up far
    beyond the rounding of the float64 test. The reference distances are then distinct there, so
    ties by index play no part.
    """
    delta, gamma, tiny32, tiny64 = _error_bounds(dim)
    factor = (1.0 + delta) * (1.0 + gamma) / ((1.0 - delta) * (1.0 - gamma)) * (1.0 + 2.0**-40)
    slack = 4.0 * (tiny32 + tiny64)
    first = dist_work[:, : k + 1].double()
    return (first[:, 1:] > first[:, :-1] * factor + slack).all(1)


def _lower_bound(dist_work: Tensor, dim: int) -> Tensor:
    """A float64 lower bound on the float64 reference distance of points whose float32 (or
    float64) working distance is at least ``dist_work`` (``inf`` gives ``inf``)."""
    delta, gamma, tiny32, tiny64 = _error_bounds(dim)
    return (dist_work.double() - tiny32) / (1.0 + delta) * (1.0 - gamma) - tiny64


def _error_bounds(dim: int) -> Tuple[float, float, float, float]:
    """Relative error bounds (doubled) of the float32 working and float64 reference squared
    distances of points of ``dim`` coordinates, and their absolute terms for underflow."""
    delta = 2.0 * (dim + 2) * 2.0**-24  # float32 search: relative error bound (doubled)
    gamma = 2.0 * (dim + 2) * 2.0**-53  # float64 reference: relative error bound (doubled)
    return delta, gamma, (dim + 1) * 2.0**-149, (dim + 1) * 2.0**-1074
