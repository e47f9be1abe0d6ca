"""Cell-list candidate search for low-dimensional kNN (the fast path of :func:`pointcoc.ops.knn`).

The points of ``x`` are binned, sample by sample, into a uniform grid of cubic cells whose edge
is chosen from the sample's bounding box so that a cell holds about ``per_cell`` points. Each
query is compared with the points of the ``(2 r + 1)^D`` cells within ``r = reach`` cells of its
own cell (its *block*; along the last axis neighbouring cells are one contiguous run of the
cell-sorted points, so a block is ``(2 r + 1)^(D-1)`` runs), and the ``wide`` nearest of them are
kept as candidates.

The result is *proven*, not assumed: every point outside the block lies beyond one of the
block's faces, so its distance is at least the query's distance ``rho`` to the nearest face that
is not the edge of the sample's grid (:func:`region_bound`; cell ids and faces are computed in
float64 with a margin for their rounding). :func:`pointcoc.ops.exact.rank_and_prove` then accepts a
query only when its k-th float64 distance is below both ``rho^2`` and the distances of the block
points it did not keep; the caller searches every other query again (wider blocks, then float64).
Candidates sorted by their working distances skip the float64 ranking where those distances are
far enough apart to fix the float64 order (:func:`pointcoc.ops.exact.ordered_by_work`).
"""

from __future__ import annotations

import itertools
import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from .batch import batch_ptr
from .exact import REFINE_ROWS, column_distances, ordered_by_work, prove, rank_and_prove
from .search import chunk_end

__all__ = ["GRID_MAX_DIM", "GRID_MIN_POINTS", "CellGrid", "points_per_cell", "region_bound", "cell_search"]

GRID_MAX_DIM = 3
"""Positions with at most this many coordinates may use the cell grid."""

GRID_MIN_POINTS = 512
"""The cell grid is used when some sample holds at least this many points of ``x``."""

BALL_MARGIN = (1.0, 1.0, 1.5)
"""For 1, 2 and 3 coordinates: a ball of ``reach`` cell edges is sized to hold this many times
``wide`` points on average. Queries the first pass cannot prove get a second pass over
blocks up to ``(2 BLOCK_REACH + 3)^D`` cells, costlier in 3-D, so the first pass is sized more
generously there (the optima measured with ``benchmarks/ops.py``)."""

BLOCK_REACH = 1
"""A query's block spans this many cells on each side of its own cell (first pass)."""

CHUNK_ENTRIES = 2**18
"""At most this many distances per chunk (1 MiB in float32): small temporaries are reused."""

PROBE_ROWS = 512
"""At most this many queries in the first chunk of :func:`cell_search`, whose near-ties decide
whether the later chunks sort their candidates by working distance."""

Reach = Union[int, Tensor]  # cells spanned beyond the query's own: one count, or [M, D]

_FACE_MARGIN = 2.0**-40  # relative margin for the rounding of cell ids and faces (float64)


class CellGrid:
    """Points of a ragged batch sorted into per-sample uniform grids.

    ``low: [B, D]`` grid origin, ``high: [B, D]`` the far corner of the points, ``size: [B]``
    cell edge, ``cells: [B, D]`` cells per axis (``last_cell``: ``cells - 1`` in float64),
    ``stride: [B, D]`` (last axis fastest), ``cell_ptr: [B + 1]`` first global cell of each
    sample, ``cell_start: [C + 1]`` first sorted point of each cell, ``coords: [D, N + 1]`` the
    points in cell order (working dtype), ``reference: [D, N + 1]`` the same in float64 (their
    values as given) and ``index: [N + 1]`` their indices in ``x``, each followed by a sentinel
    (a point at infinity, index -1) that padding lanes read.
    """

    def __init__(self, x: Tensor, batch: Tensor, counts: Tensor, per_cell: float) -> None:
        num_samples, dim = counts.numel(), x.size(1)
        index = batch[:, None].expand(-1, dim)
        low = x.new_full((num_samples, dim), math.inf).scatter_reduce_(0, index, x, "amin").double()
        high = x.new_full((num_samples, dim), -math.inf).scatter_reduce_(0, index, x, "amax").double()
        empty = counts == 0
        low.masked_fill_(empty[:, None], 0.0)
        high.masked_fill_(empty[:, None], 0.0)
        extent = high - low
        self.low, self.high = low, high
        self.size = _cell_size(extent, counts.double() / per_cell)
        self.cells = torch.floor(extent / self.size[:, None]).long().add_(1)
        self.stride = self.cells.flip(1).cumprod(1).flip(1).roll(-1, 1)
        self.stride[:, -1] = 1
        self.cell_ptr = batch_ptr(self.cells.prod(1))
        self.last_cell = (self.cells - 1).double()
        global_cell, order = torch.sort(self.cell_id(self.cell_of(x, batch), batch), stable=True)
        total = int(self.cell_ptr[-1])
        self.cell_start = batch_ptr(torch.bincount(global_cell, minlength=total))
        self.coords = torch.cat([x.t().index_select(1, order), x.new_full((dim, 1), math.inf)], 1)
        self.reference = self.coords.double()  # the values of x as given: the working dtype holds them
        self.index = torch.cat([order, order.new_full((1,), -1)])

    def cell_of(self, points: Tensor, batch: Tensor) -> Tensor:
        """Cell coordinates ``[n, D]`` of points of the given samples (clamped to the grid), computed in float64."""
        scaled = (points - self.low.index_select(0, batch)).div_(self.size.index_select(0, batch)[:, None])
        cell = scaled.floor_().clamp_(min=0).clamp_(max=self.last_cell.index_select(0, batch))
        return cell.long()  # clamped in float64 first: far queries cannot overflow int64

    def cell_id(self, cell: Tensor, batch: Tensor) -> Tensor:
        """Global ids ``[n]`` of the cells ``[n, D]`` of the given samples (``cell_ptr`` order)."""
        return self.stride.index_select(0, batch).mul_(cell).sum(1).add_(self.cell_ptr.index_select(0, batch))


def points_per_cell(dim: int, wide: int) -> float:
    """Points per cell such that a ball of ``BLOCK_REACH`` cell edges holds
    ``BALL_MARGIN[dim - 1] * wide`` points on average."""
    ball = math.pi ** (dim / 2) / math.gamma(dim / 2 + 1) * BLOCK_REACH**dim  # volume of a ball of radius BLOCK_REACH
    return BALL_MARGIN[dim - 1] * wide / ball


def _cell_size(extent: Tensor, target: Tensor) -> Tensor:
    """Cell edge ``[B]`` with ``prod_p max(extent_p / h, 1) = max(target, 1)``: about ``target``
    cells of edge ``h`` cover the bounding box (an axis thinner than ``h`` counts as one cell; the
    grid then has ``prod_p (floor(extent_p / h) + 1) < 2^D max(target, 1)`` cells).

    The product is the largest of ``e_1 ... e_j / h^j`` over the ``j`` largest extents ``e``
    (``j = 0 .. D``), each decreasing in ``h``, so ``h`` is the largest of their solutions
    ``(e_1 ... e_j / target)^(1/j)``; 1 where every extent is 0.
    """
    largest_first = extent.sort(1, descending=True).values
    log_products = largest_first.log().cumsum(1)  # -inf from the first zero extent on
    exponent = torch.arange(1, extent.size(1) + 1, dtype=extent.dtype, device=extent.device)
    size = ((log_products - target.clamp(min=1.0).log()[:, None]) / exponent).exp().amax(1)
    return torch.where(size > 0, size, 1.0)


def region_bound(
    grid: CellGrid, y: Tensor, batch_y: Tensor, cell: Tensor, below: Reach = BLOCK_REACH, above: Optional[Reach] = None
) -> Tensor:
    """float64 ``[M]``: a lower bound on the float64 reference squared distance from each query to
    every point of its sample outside its block (``inf`` where the block is the whole grid).

    The block spans ``below`` cells before the query's own cell and ``above`` cells after it
    along every axis (ints, or ``[M, D]`` per query and axis; ``above`` defaults to ``below``).
    A point outside the block has a cell id beyond a face along some axis, so its coordinate
    lies beyond that face up to the rounding of ``floor((x - low) / size)``; the margin covers
    that rounding and the rounding of the faces, and the final factor that of the reference sum.
    """
    gap_below, gap_above = _face_gaps(grid, y, batch_y, cell, below, below if above is None else above)
    scale = (grid.low.abs() + grid.high.abs() + grid.size[:, None]).index_select(0, batch_y).add_(y.abs())
    rho = torch.minimum(gap_below, gap_above).sub_(scale.mul_(_FACE_MARGIN)).amin(1).clamp_(min=0.0)
    dim = y.size(1)
    gamma = 2.0 * (dim + 2) * 2.0**-53  # float64 reference sum: relative error bound (doubled)
    bound = rho.square().mul_((1.0 - _FACE_MARGIN) * (1.0 - gamma)).sub_((dim + 1) * 2.0**-1074)
    return bound.masked_fill_(torch.isinf(rho), math.inf)


def _face_gaps(
    grid: CellGrid, y: Tensor, batch_y: Tensor, cell: Tensor, below: Reach, above: Reach
) -> Tuple[Tensor, Tensor]:
    """float64 ``[M, D]`` distances (rounded) from each query to the lower and upper faces of its
    block (see :func:`region_bound`); ``inf`` where the block reaches the edge of the grid."""
    low, size = grid.low.index_select(0, batch_y), grid.size.index_select(0, batch_y)[:, None]
    first, past = cell - below, cell + (above + 1)  # the block's first cell and the cell after its last
    lower = torch.where(first > 0, torch.addcmul(low, first.double(), size), -math.inf)  # lower cells exist
    upper = torch.where(past < grid.cells.index_select(0, batch_y), torch.addcmul(low, past.double(), size), math.inf)
    return y - lower, upper.sub_(y)


def _blocks(
    grid: CellGrid, y: Tensor, batch_y: Tensor, reach: int, kth: Optional[Tensor]
) -> Tuple[Tensor, Reach, Reach, Tensor, Tensor, Tensor]:
    """The block of each query (float64 ``y``; ``reach``, ``kth`` as in :func:`cell_search`): its
    cell ``[M, D]`` and reach below and above (:func:`_reach`), ``group [M]`` (queries of one cell
    with the same reach share a block) and the runs ``start``, ``length: [G, S]`` of the blocks."""
    cell = grid.cell_of(y, batch_y)
    below, above = _reach(grid, y, batch_y, cell, reach, kth)
    key = grid.cell_id(cell, batch_y)
    if kth is not None:  # the sides a block is widened on, as bits
        extended = torch.cat([below, above], 1) - reach  # [M, 2D] 0 or 1
        key = key * 2 ** extended.size(1) + (extended << torch.arange(extended.size(1), device=y.device)).sum(1)
    blocks, group = torch.unique(key, return_inverse=True)
    first = torch.empty_like(blocks).scatter_(0, group, torch.arange(y.size(0), device=y.device))
    sides = (_take(below, first), _take(above, first))
    runs = _block_runs(grid, batch_y.index_select(0, first), cell.index_select(0, first), *sides)
    return (cell, below, above, group) + runs


def _take(reach: Reach, rows: object) -> Reach:
    """The given rows of a per-query reach (an int is the same for every query)."""
    return reach[rows] if isinstance(reach, Tensor) else reach


def _reach(
    grid: CellGrid, y: Tensor, batch_y: Tensor, cell: Tensor, reach: int, kth: Optional[Tensor]
) -> Tuple[Reach, Reach]:
    """Block reach below and above: ``reach`` cells (ints) without ``kth``; else ``[M, D]``, one
    more on each side whose face is within ``sqrt(kth)`` of the query (``kth``: an upper bound
    on its k-th neighbour distance)."""
    if kth is None:
        return reach, reach
    gap_below, gap_above = _face_gaps(grid, y, batch_y, cell, reach, reach)
    return (gap_below.square() <= kth[:, None]) + reach, (gap_above.square() <= kth[:, None]) + reach


def _block_runs(grid: CellGrid, batch_y: Tensor, cell: Tensor, below: Reach, above: Reach) -> Tuple[Tensor, Tensor]:
    """First sorted point ``[M, S]`` and length ``[M, S]`` of the runs of each block (``below`` /
    ``above`` as in :func:`region_bound`): one run along the last axis for every cell of the
    other axes, ``S = (2 r + 1)^(D-1)`` with ``r`` the largest reach (runs a block does not
    span are empty). The runs of the nearer cells come first (by the sum of the cell offsets):
    the rows :func:`_nearest_in_block` selects from are then partly sorted, which ``topk`` handles
    faster."""
    dim = cell.size(1)
    if isinstance(below, Tensor):
        widest = int(torch.maximum(below, above).max()) if cell.numel() else 0
    else:
        widest, below, above = max(below, above), cell.new_full((1, dim), below), cell.new_full((1, dim), above)
    offsets = range(-widest, widest + 1)
    nearest_first = sorted(itertools.product(offsets, repeat=dim - 1), key=lambda shift: sum(map(abs, shift)))
    shifts = torch.tensor(nearest_first, dtype=torch.long, device=cell.device)
    shifts = shifts.view(len(offsets) ** (dim - 1), dim - 1)  # [S, D-1] (one empty row when D == 1)
    cells, stride = grid.cells.index_select(0, batch_y), grid.stride.index_select(0, batch_y)
    first = grid.cell_ptr.index_select(0, batch_y)[:, None].repeat(1, shifts.size(0))  # [M, S] cell of each run row
    inside = torch.ones_like(first, dtype=torch.bool)
    for p, shift in enumerate(shifts.t()):  # the other axes, one [M, S] pass each
        near = cell[:, p, None] + shift
        inside &= (shift >= -below[:, p, None]) & (shift <= above[:, p, None])  # spanned by the block
        inside &= (near >= 0) & (near < cells[:, p, None])  # inside the grid
        first += near.mul_(stride[:, p, None])
    last_axis = cell[:, -1:]
    first_cell = torch.where(inside, first + (last_axis - below[:, -1:]).clamp(min=0), 0)
    end_cell = torch.where(inside, first + torch.minimum(last_axis + above[:, -1:] + 1, cells[:, -1:]), 0)
    start = grid.cell_start.index_select(0, first_cell.view(-1)).view_as(first_cell)
    return start, grid.cell_start.index_select(0, end_cell.view(-1)).view_as(end_cell) - start


@torch.no_grad()
def cell_search(
    grid: CellGrid,
    y: Tensor,
    k: int,
    wide: int,
    batch_y: Tensor,
    max_chunk_entries: int,
    out: Tuple[Tensor, Tensor, Tensor],
    reach: int = BLOCK_REACH,
    kth: Optional[Tensor] = None,
    presort: bool = True,
) -> bool:
    """The ``k`` nearest points of each query, from the ``wide`` nearest points of its block of
    ``reach`` cells on each side (see the module docstring); with ``kth`` (``[M]``, an upper bound
    on each query's k-th neighbour distance, e.g. from an earlier pass) one cell more on each
    side whose face is within ``sqrt(kth)`` of the query.

    ``grid`` holds the points of ``x`` (see :func:`points_per_cell`), ``y: [M, D]`` the queries
    (any float dtype). Fills ``out = (index [M, k], dist [M, w], proven [M])``: global indices
    (``-1`` padding), the last ``w`` float64 distances of each row (``w = k``, or ``1`` for the
    k-th only) and whether the row is proven, from :func:`pointcoc.ops.exact.rank_and_prove` with
    the block as the region and :func:`region_bound` as the bound outside it.

    Queries are processed in chunks of similar block size, each one distance matrix and one
    ``topk``; the queries sharing a block are gathered once per chunk. Chunks hold at most
    ``min(max_chunk_entries, CHUNK_ENTRIES)`` distances and ``REFINE_ROWS`` queries, so their
    temporaries are reused by the allocator rather than paged in afresh. With ``presort`` the
    candidates come sorted by working distance (:func:`_rank_and_prove`), the first chunk holding
    at most ``PROBE_ROWS`` queries, until a chunk finds over half its rows near-tied (lattices,
    duplicates); returns whether the last chunk still sorted (``presort`` without queries).
    """
    y64 = y.double()
    cell, below, above, group, start, length = _blocks(grid, y64, batch_y, reach, kth)
    region = region_bound(grid, y64, batch_y, cell, below, above)
    total = length.sum(1).index_select(0, group)  # [M] block size of each query
    order = torch.argsort(total * start.size(0) + group)  # by block size, a block's queries together
    sizes = total.index_select(0, order).tolist()
    # per-query values in that order: every chunk below is a slice
    y_work, y64, group, complete, region = (
        t.index_select(0, order) for t in (y.to(grid.coords.dtype), y64, group, total <= wide, region)
    )
    dist = out[1]
    num_points = grid.index.numel() - 1  # the sentinel's position
    capacity = min(max_chunk_entries, CHUNK_ENTRIES)
    first = 0
    while first < len(sizes):
        most = PROBE_ROWS if presort and not first else REFINE_ROWS
        part = slice(first, min(chunk_end(sizes, first, capacity), first + most))
        blocks, local = torch.unique_consecutive(group[part], return_inverse=True)
        runs = start.index_select(0, blocks), length.index_select(0, blocks)
        coords, source = _block_points(grid, *runs, sizes[part.stop - 1])  # D x [g, W], [g, W]
        position, nearest = _nearest_in_block(coords, source, y_work[part], local, wide, num_points, presort)
        top, d64, ok, ranked = _rank_and_prove(
            grid, y64[part], position, nearest, k, dist.size(1), complete[part], region[part], presort
        )
        presort = presort and 2 * ranked <= top.size(0)
        for target, value in zip(out, (top, d64, ok)):
            target.index_copy_(0, order[part], value)
        first = part.stop
    return presort


def _block_points(grid: CellGrid, start: Tensor, length: Tensor, width: int) -> Tuple[List[Tensor], Tensor]:
    """Coordinates (one ``[g, width]`` tensor per axis, ``inf`` padding) and sorted positions
    ``[g, width]`` (the sentinel's at padding lanes) of the points of the blocks with runs
    ``start``, ``length: [g, S]``.

    Positions are a cumulative sum over the lanes of a block: ``start[0]`` at lane 0, then 1 per
    lane plus, where a run begins, the gap from the end of the runs before it. The lane after the
    last run jumps past the sentinel and positions are clamped to it: padding lanes read the
    point at infinity.
    """
    num_blocks = start.size(0)
    sentinel = grid.index.numel() - 1
    positions = torch.int32 if 2 * (sentinel + 1) + width < 2**31 else torch.int64  # partial sums stay below
    end = length.cumsum(1)  # [g, S] first lane after each run
    gaps = torch.cat([start[:, 1:] - start[:, :-1] - length[:, :-1], start.new_full((num_blocks, 1), sentinel + 1)], 1)
    steps = torch.ones(num_blocks, width + 1, dtype=positions, device=start.device)  # lane width: beyond the end
    steps[:, 0] = start[:, 0]
    steps.scatter_add_(1, end.clamp(max=width), gaps.to(positions))
    source = steps[:, :width].cumsum(1, dtype=positions).clamp_(max=sentinel)
    flat = source.view(-1)
    return [axis.index_select(0, flat).view(num_blocks, width) for axis in grid.coords], source


def _nearest_in_block(
    coords: List[Tensor], source: Tensor, y: Tensor, group: Tensor, wide: int, sentinel: int, nearest_first: bool
) -> Tuple[Tensor, Tensor]:
    """The ``wide`` nearest points to ``y: [m, D]`` among the points of the blocks ``group: [m]``
    (``coords``, ``source`` from :func:`_block_points`): their sorted positions ``[m, wide]``
    (``sentinel`` as padding) and working distances ``[m, wide]``, in any order, or with
    ``nearest_first`` sorted by working distance (ties in any order)."""
    m, width = y.size(0), source.size(1)
    keep = min(wide, width)
    if keep < wide:  # fewer points than candidates in every block of the chunk: pad
        position = source.new_full((m, wide - keep), sentinel)
        dist = torch.full((m, wide - keep), math.inf, dtype=y.dtype, device=y.device)
        if not keep:
            return position, dist
        found = _nearest_in_block(coords, source, y, group, keep, sentinel, nearest_first)
        return torch.cat([found[0], position], 1), torch.cat([found[1], dist], 1)
    work = None
    for p, axis in enumerate(coords):  # padding lanes sit at infinity: their distance is inf
        term = axis.index_select(0, group).sub_(y[:, p, None])
        work = term.square_() if work is None else work.addcmul_(term, term)
    bits = torch.int32 if work.dtype == torch.float32 else torch.int64  # >= +0: bit patterns are monotone
    nearest, chosen = torch.topk(work.view(bits), wide, dim=1, largest=False, sorted=nearest_first)
    position = source.view(-1).index_select(0, chosen.add_(group[:, None] * width).view(-1))
    return position.view(m, wide), nearest.view(work.dtype)


def _rank_and_prove(
    grid: CellGrid,
    y64: Tensor,
    position: Tensor,
    nearest: Tensor,
    k: int,
    width: int,
    complete: Tensor,
    region: Tensor,
    nearest_first: bool,
) -> Tuple[Tensor, Tensor, Tensor, int]:
    """:func:`pointcoc.ops.exact.rank_and_prove` for the candidates of :func:`_nearest_in_block`:
    global indices ``[m, k]``, the last ``width`` float64 distances ``[m, width]`` of each row,
    ``proven [m]`` and how many rows were ranked by float64 distance.

    Candidates ``nearest_first`` need no ranking where :func:`pointcoc.ops.exact.ordered_by_work`
    proves their working order the float64 order: the first ``k`` are the answer and only their
    last ``width`` float64 distances are computed. The other rows (near-ties, duplicate points),
    and every row of candidates in any order, are ranked by float64 distance.
    """
    num_points, dim = grid.index.numel() - 1, y64.size(1)
    found = grid.index.index_select(0, position.view(-1)).view_as(position)
    if not nearest_first:
        every = column_distances(y64, grid.reference, position)  # the sentinel's: inf
        top, every, proven = rank_and_prove(found, every, nearest, k, complete, region, num_points, dim)
        return top, every[:, k - width :], proven, found.size(0)
    top = found[:, :k]
    d64 = column_distances(y64, grid.reference, position[:, k - width : k])  # the sentinel's: inf
    proven = prove(d64[:, -1], nearest[:, -1], complete, region, dim)
    rows = (~ordered_by_work(nearest, k, dim)).nonzero()[:, 0]
    if rows.numel():
        every = column_distances(y64[rows], grid.reference, position[rows])
        ranked = rank_and_prove(found[rows], every, nearest[rows], k, complete[rows], region[rows], num_points, dim)
        top[rows], d64[rows], proven[rows] = ranked[0], ranked[1][:, k - width :], ranked[2]
    return top, d64, proven, rows.numel()
