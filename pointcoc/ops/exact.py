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
term for underflow) of the real distance. The search keeps ``k + REFINE_EXTRA`` candidates and
ranks them by (float32 distance, index). Where the first k float32 distances lie further apart
than these errors, from each other and from the other candidates, that is the float64 ranking
too; elsewhere (near-ties) every candidate's ``d`` is recomputed in float64 and re-ranked. The
result is provably the float64 ranking whenever the k-th float64 distance is below what any
point outside the candidates can have (:func:`refine`). The cell-grid search (:mod:`pointcoc.ops.cells`, 1-3 coordinates)
compares each query only with the points of a block of cells around it and adds a float64
lower bound on the distance of every point outside the block to that proof. Queries where it
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
    low = torch.full((num_samples, dim), float("inf"), dtype=torch.float64, device=x.device)
    high = torch.full((num_samples, dim), -float("inf"), dtype=torch.float64, device=x.device)
    for points, batch in ((x, batch_x), (y, batch_y)):
        index = batch[:, None].expand(-1, dim)
        low.scatter_reduce_(0, index, points.double(), "amin")
        high.scatter_reduce_(0, index, points.double(), "amax")
    extent = (high - low).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # empty samples: 0
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
    return _column_distances(y, x.t().contiguous(), col)


def reference_columns(x: Tensor) -> Tensor:
    """``x: [N, D]`` as float64 coordinate-major ``[D, N]`` (one copy)."""
    return torch.empty(x.size(1), x.size(0), dtype=torch.float64, device=x.device).copy_(x.t())


def _column_distances(y: Tensor, columns: Tensor, col: Tensor) -> Tensor:
    """:func:`pair_distances` with ``x`` given coordinate-major, ``columns: [D, N]``."""
    dist = None
    flat = col.reshape(-1)
    for p, axis in enumerate(columns):
        term = axis.index_select(0, flat).view(col.shape)
        term = term.sub_(y[:, p, None]).square_()  # (x - y)^2 == (y - x)^2 exactly
        dist = term if dist is None else dist.add_(term)
    return dist


def rank_by_distance(index: Tensor, dist: Tensor, k: int, num_points: int) -> Tuple[Tensor, Tensor]:
    """The first ``k`` of each row of ``index`` / float32 or float64 ``dist`` ``[M, c]`` by (dist, index).

    ``index``: global indices below ``num_points`` (``-1`` with ``dist = inf`` for padding; finite
    ``dist`` below a quarter of the dtype's range, as :func:`working_dtype` ensures). One sort of
    int64 keys: the bits of ``dist`` (monotone for ``dist >= +0``) above ``b = bit_length(num_points)``
    bits holding the index. float32 bits fit whole (when ``b <= 32``): the key order is the
    (dist, index) order. float64 bits lose their lowest ``b`` bits: that is the (dist, index)
    order wherever the sorted ``dist`` is non-decreasing; the rare rows where two distances
    differing only in those bits come out of order are sorted again by index, then stably by distance.
    """
    bits = max(1, int(num_points).bit_length())
    if dist.dtype == torch.float32 and bits <= 32:
        key = dist.view(torch.int32).long().bitwise_left_shift_(bits).add_(index)  # inf - 1: last
    else:
        key = dist.double().view(torch.int64).bitwise_right_shift(bits).bitwise_left_shift_(bits).add_(index)
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
    columns: Tensor,
    y: Tensor,
    index: Tensor,
    dist_work: Tensor,
    k: int,
    complete: Tensor,
    region: Optional[Tensor],
    tail: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`refine` in one piece, with ``x`` as float64 coordinate-major ``columns: [D, N]``
    and ``y`` float64 (callers keep the rows at most :data:`REFINE_ROWS`); ``dist`` holds the
    float64 distances of the last ``tail`` (default ``k``) of the ``k`` neighbours.

    The candidates are ranked by (working distance, index) first. Where the first ``k`` working
    distances lie further apart than their rounding errors, from each other and from the rest
    (:func:`_separated`), that is the float64 ranking too and only the ``tail`` is computed in
    float64; the other rows are ranked by the float64 distances of all their candidates.
    """
    tail = k if tail is None else tail
    index, dist_work = rank_by_distance(index, dist_work, index.size(1), columns.size(1))
    top = index[:, :k]
    dist = _reference_distances(y, columns, top[:, k - tail :])
    separated = _separated(dist_work, k, complete, columns.size(0))
    proven = separated if region is None else separated & ((dist[:, -1] < region) | (region == math.inf))
    rows = (~separated).nonzero()[:, 0]
    if rows.numel():
        outside = None if region is None else region[rows]
        top[rows], dist[rows], proven[rows] = _rerank(
            columns, y[rows], index[rows], dist_work[rows], k, complete[rows], outside, tail
        )
    return top, dist, proven


def _rerank(
    columns: Tensor,
    y: Tensor,
    index: Tensor,
    dist_work: Tensor,
    k: int,
    complete: Tensor,
    region: Optional[Tensor],
    tail: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The rows whose working distances do not decide (as :func:`refine_rows`, candidates ranked by
    working distance): every candidate's float64 distance, ranked by (float64 distance, index);
    proven where the k-th is below every point the candidates leave out."""
    dim = columns.size(0)
    d64 = _reference_distances(y, columns, index)
    later, earlier = d64[:, 1:], d64[:, :-1]
    in_order = (later > earlier) | ((later == earlier) & (index[:, 1:] > index[:, :-1])) | (index[:, 1:] < 0)
    rows = (~in_order.all(1)).nonzero()[:, 0]  # mostly near-ties of float32 distances
    if rows.numel():
        index[rows], d64[rows] = rank_by_distance(index[rows], d64[rows], index.size(1), columns.size(1))
    delta, tiny = _rounding(dist_work.dtype, dim)
    gamma, tiny64 = _rounding(torch.float64, dim)
    outside = (dist_work.amax(1).double() - tiny) / (1.0 + delta) * (1.0 - gamma) - tiny64
    outside = torch.where(complete, math.inf, outside)
    if region is not None:
        outside = torch.minimum(outside, region)
    proven = (d64[:, k - 1] < outside) | (outside == math.inf)
    return index[:, :k], d64[:, k - tail : k], proven


def _reference_distances(y: Tensor, columns: Tensor, index: Tensor) -> Tensor:
    """float64 reference distances ``[m, c]`` of the candidates ``index`` (``inf`` at ``-1`` padding)."""
    return _column_distances(y, columns, index.clamp(min=0)).masked_fill_(index < 0, math.inf)


def _rounding(dtype: torch.dtype, dim: int) -> Tuple[float, float]:
    """Bounds on the rounding of a squared distance of ``dim`` coordinates computed in ``dtype``
    (float32 or float64) from values it holds exactly: relative ``delta`` and absolute ``tiny``
    (underflow), each doubled for safety: ``|computed - real| <= delta * real + tiny``."""
    if dtype == torch.float32:
        return 2.0 * (dim + 2) * 2.0**-24, (dim + 1) * 2.0**-149
    return 2.0 * (dim + 2) * 2.0**-53, (dim + 1) * 2.0**-1074


def _separated(dist: Tensor, k: int, complete: Tensor, dim: int) -> Tensor:
    """``[m]`` True where the ranked working distances ``dist: [m, c]`` decide the float64 ranking
    of the first ``k``: each is below the next one, and the k-th below the rest of the candidates,
    by at least :func:`_decisive_gap` units in the last place (the bit patterns of ``dist >= +0``
    count them). With ``c == k`` the rest is the points of the region left out: rows qualify
    only where the candidates are all of them (``complete``)."""
    bits = dist.view(torch.int32 if dist.dtype == torch.float32 else torch.int64)
    gap = _decisive_gap(dist.dtype, dim)
    first = bits[:, :k]
    apart = (first[:, 1:] - first[:, :-1]).ge_(gap).all(1)
    if dist.size(1) == k:
        return apart & complete
    return apart & (bits[:, k:].amin(1) - first[:, -1] >= gap)


def _decisive_gap(dtype: torch.dtype, dim: int) -> int:
    """Units in the last place by which two working distances ``a <= b`` must differ for every
    float64 reference distance of a point at ``a`` to be below that of a point at ``b``.

    With the bounds of :func:`_rounding` (``delta, tiny`` for the working dtype, ``gamma,
    tiny64`` for float64) that holds when ``b - a > (R - 1) a + (1 + R) tiny + 2 tiny64 (1 + delta)
    / (1 - gamma)``, ``R = (1 + delta)(1 + gamma) / ((1 - delta)(1 - gamma))``. ``n`` units in the
    last place above ``a`` are at least ``n max(a 2^-p, s) >= n/2 (a 2^-p + s)`` (``p`` the
    precision, ``s`` the smallest subnormal), so ``n`` covers twice each term."""
    delta, tiny = _rounding(dtype, dim)
    gamma, tiny64 = _rounding(torch.float64, dim)
    precision, smallest = (24, 2.0**-149) if dtype == torch.float32 else (53, 2.0**-1074)
    ratio = (1.0 + delta) * (1.0 + gamma) / ((1.0 - delta) * (1.0 - gamma))
    relative = (ratio - 1.0) * 2.0**precision
    absolute = (tiny * (1.0 + ratio) + 2.0 * tiny64 * (1.0 + delta) / (1.0 - gamma)) / smallest
    return math.ceil(2.0 * max(relative, absolute)) + 1
