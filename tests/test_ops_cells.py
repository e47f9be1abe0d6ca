"""The cell-grid kNN search (pointcoc.ops.cells): cell ids, blocks, the region bound, end to end.

Cell ids are checked against an independent floor computation, blocks against the cells'
definition (every point whose cell differs by at most one along every axis), and the region
bound against the float64 distance of every point outside the block; a wrong cell id, block
run or ring radius fails here. End to end, knn_padded with the grid forced equals a float64
brute force on dense clouds (many cells, so most queries rely on the region bound).
"""

from __future__ import annotations

import contextlib
import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointcoc.ops import knn, knn_padded, use_backend
from pointcoc.ops.batch import batch_counts
from tests.helpers import DEVICES
from tests.test_ops_exact import DTYPES, brute_knn, cloud, spread_for

cells_module = importlib.import_module("pointcoc.ops.cells")
exact_module = importlib.import_module("pointcoc.ops.exact")


@pytest.fixture(autouse=True)
def pure_backend():
    with use_backend("torch"):
        yield


@contextlib.contextmanager
def grid_forced():
    saved = cells_module.GRID_MIN_POINTS
    cells_module.GRID_MIN_POINTS = 1
    try:
        yield
    finally:
        cells_module.GRID_MIN_POINTS = saved


def numpy_cells(grid, points: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Independent cell coordinates: clip(floor((p - low) / size), 0, cells - 1) in float64."""
    low, size = grid.low.cpu().numpy()[batch], grid.size.cpu().numpy()[batch, None]
    cells = grid.cells.cpu().numpy()[batch]
    return np.clip(np.floor((points - low) / size), 0, cells - 1).astype(np.int64)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 120), min_size=1, max_size=3),
    dim=st.integers(1, 3),
    dtype=st.sampled_from(DTYPES),
    offset=st.sampled_from([0.0, 1e3, 1e4]),
    duplicates=st.integers(0, 20),
    wide=st.integers(1, 12),
    reach=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_blocks_and_region_bound(sizes, dim, dtype, offset, duplicates, wide, reach, seed):
    """Neighbours with ``k = wide >= n`` are exactly the block's points; every other point of the
    sample is at least the region bound away (float64 reference distance)."""
    if sum(sizes) == 0:
        sizes = sizes + [1]
    x, bx = cloud(sizes, dim, offset, spread_for(dtype, offset), dtype, seed, duplicates)
    y, by = cloud(sizes, dim, offset, 1.3 * spread_for(dtype, offset), dtype, seed + 1)  # some queries outside
    work = torch.float32 if dtype != torch.float64 else torch.float64
    counts = batch_counts(bx, len(sizes))
    grid = cells_module.CellGrid(x.to(work), bx, counts, 0.3 * wide)  # small cells: many blocks
    index = torch.empty(len(y), len(x), dtype=torch.long)
    out = (index, torch.empty(len(y), 1, dtype=torch.float64), torch.empty(len(y), dtype=torch.bool))
    cells_module.cell_search(grid, y, len(x), len(x), by, 50, out, reach)
    region = cells_module.region_bound(grid, y.double(), by, grid.cell_of(y.double(), by), reach)
    xs, ys, bxs, bys = x.double().numpy(), y.double().numpy(), bx.numpy(), by.numpy()
    cell_x = numpy_cells(grid, xs, bxs)
    cell_y = numpy_cells(grid, ys, bys)
    assert grid.cell_of(x.double(), bx).tolist() == cell_x.tolist()
    for i in range(len(ys)):
        same = np.nonzero(bxs == bys[i])[0]
        inside = same[(np.abs(cell_x[same] - cell_y[i]) <= reach).all(1)]
        found = index[i][index[i] >= 0].numpy()
        assert sorted(found.tolist()) == inside.tolist()
        outside = np.setdiff1d(same, inside)
        d = ((xs[outside] - ys[i]) ** 2).sum(1)
        assert (d >= float(region[i])).all()


@pytest.mark.parametrize("r", [1, 2, 3])
def test_region_bound_on_a_line(r):
    """1-D points 0..999: the bound is the squared distance to the nearest inner block face."""
    x = torch.arange(1000.0, dtype=torch.float64)[:, None]
    bx = torch.zeros(1000, dtype=torch.long)
    grid = cells_module.CellGrid(x, bx, batch_counts(bx), 10.0)
    size, low = float(grid.size[0]), float(grid.low[0, 0])
    y = torch.tensor([[500.3], [0.5], [999.0], [-50.0]], dtype=torch.float64)
    by = torch.zeros(4, dtype=torch.long)
    cell = grid.cell_of(y, by)
    region = cells_module.region_bound(grid, y, by, cell, r)
    c = int(cell[0, 0])
    expected = min(500.3 - (low + (c - r) * size), low + (c + r + 1) * size - 500.3) ** 2
    assert expected > (r * size) ** 2 * 0.99
    assert float(region[0]) == pytest.approx(expected, rel=1e-9) and float(region[0]) <= expected
    # at the grid's ends only the inner face counts; outside the grid too
    assert float(region[1]) == pytest.approx((low + (r + 1) * size - 0.5) ** 2, rel=1e-9)
    assert float(region[3]) == pytest.approx((low + (r + 1) * size + 50.0) ** 2, rel=1e-9)
    last = int(grid.cells[0, 0]) - 1
    assert float(region[2]) == pytest.approx((999.0 - (low + (last - r) * size)) ** 2, rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_grid_knn_on_dense_clouds_equals_brute_force(device, dtype, dim):
    """Ragged dense clouds with duplicates and an offset of 1e4 x spread (1e2 in half precision)."""
    offset = 1e4 if dtype in (torch.float32, torch.float64) else 100.0
    x, bx = cloud([900, 40, 0, 1300], dim, offset, spread_for(dtype, offset), dtype, dim, 60, device)
    y, by = cloud([70, 10, 5, 90], dim, offset, spread_for(dtype, offset), dtype, dim + 7, 0, device)
    y[::4] = x[::50][: len(y[::4])]  # queries on data points (some in another sample's range)
    for k in (1, 6, 30):
        expected = brute_knn(x.double().cpu().numpy(), y.double().cpu().numpy(), k, bx.cpu().numpy(), by.cpu().numpy())
        with grid_forced():
            index, _ = knn_padded(x, y, k, bx, by, max_chunk_entries=4000)
        assert index.cpu().tolist() == expected.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_grid_knn_pixel_grid_ties(device, dtype):
    """All-to-all on a 60x50 pixel grid: rings of tied distances at every k-th neighbour."""
    rows, cols = torch.meshgrid(torch.arange(60), torch.arange(50), indexing="ij")
    grid = torch.stack((rows.reshape(-1), cols.reshape(-1)), 1).to(dtype=dtype, device=device)
    out = knn(grid, grid, 13)[1].view(-1, 13)
    zeros = np.zeros(len(grid), dtype=np.int64)
    rows = slice(None, None, 7)
    expected = brute_knn(grid.double().cpu().numpy(), grid[rows].double().cpu().numpy(), 13, zeros, zeros[rows])
    assert len(grid) >= cells_module.GRID_MIN_POINTS  # the default settings take the grid
    assert out[rows].cpu().tolist() == expected.tolist()


@pytest.mark.parametrize("dim", [2, 3])
def test_grid_knn_mixed_density_equals_brute_force(dim):
    """A dense cluster sets small cells; queries in the sparse background have blocks with a few
    points while their true neighbours often lie outside the block, so only the region bound
    keeps the answer exact (an overestimated ring radius returns wrong neighbours here)."""
    g = torch.Generator().manual_seed(dim)
    dense = 0.1 * torch.rand(2700, dim, generator=g, dtype=torch.float64)
    sparse = torch.rand(300, dim, generator=g, dtype=torch.float64)
    x = torch.cat([dense, sparse]).float()
    y = torch.rand(400, dim, generator=g, dtype=torch.float64).float()
    zeros_x, zeros_y = np.zeros(len(x), dtype=np.int64), np.zeros(len(y), dtype=np.int64)
    for k in (1, 2, 4):
        expected = brute_knn(x.double().numpy(), y.double().numpy(), k, zeros_x, zeros_y)
        assert knn_padded(x, y, k)[0].tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_far_queries_and_coincident_points(dtype):
    """Every x point of a sample at one place (cell edge 1) and queries very far away: their cell
    ids are clamped before any integer overflow, and all points tie (lowest indices first)."""
    far = 1e30 if dtype == torch.float64 else 1e18
    x = torch.cat([torch.full((600, 2), 3.0), torch.rand(600, 2)]).to(dtype)
    bx = torch.cat([torch.zeros(600), torch.ones(600)]).long()
    y = torch.tensor([[far, -far], [-far, 3.0], [3.0, 3.0], [far, -far]], dtype=dtype)
    by = torch.tensor([0, 0, 0, 1])
    expected = brute_knn(x.double().numpy(), y.double().numpy(), 5, bx.numpy(), by.numpy())
    assert len(x) >= cells_module.GRID_MIN_POINTS
    assert knn_padded(x, y, 5, bx, by)[0].tolist() == expected.tolist()
    assert expected[:3].tolist() == [[0, 1, 2, 3, 4]] * 3
    grid = cells_module.CellGrid(x.double(), bx, batch_counts(bx), 10.0)
    last = (grid.cells[1] - 1).tolist()
    assert grid.cell_of(y.double(), by).tolist() == [[0, 0], [0, 0], [0, 0], [last[0], 0]]


def test_ordered_by_work_needs_gaps_beyond_the_error_bounds():
    """Sorted working distances fix the float64 order only where every gap among the first k + 1
    exceeds the rounding of both arithmetics: ties, gaps of a few float32 ulps and a (k+1)-th
    candidate too close to the k-th are refused; a gap just above the bound is accepted."""
    delta, gamma, _, _ = exact_module._error_bounds(3)
    bound = (1.0 + delta) * (1.0 + gamma) / ((1.0 - delta) * (1.0 - gamma))  # about 1 + 1.2e-6
    above = torch.tensor(1.0 + 13 * 2.0**-23)  # 1 + 1.55e-6, a float32
    below = torch.tensor(1.0 + 7 * 2.0**-23)  # 1 + 0.83e-6, a float32
    assert float(below) < bound < float(above)
    inf = float("inf")
    rows = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, inf],  # far apart: ordered
            [1.0, 1.0, 2.0, 3.0, 4.0],  # a tie
            [0.5, 1.0, float(above), 3.0, 4.0],  # a gap just above the bound
            [0.5, 1.0, float(below), 3.0, 4.0],  # a gap just below it
            [0.5, 1.0, 2.0, 2.0, 4.0],  # the (k+1)-th ties the k-th
            [0.0, 1.0, 2.0, 3.0, 3.0],  # zero first; beyond k + 1 nothing matters
            [1.0, 2.0, 3.0, inf, inf],  # a block of exactly k points: padding after them
            [1.0, 2.0, inf, inf, inf],  # fewer than k points
        ]
    )
    ordered = exact_module.ordered_by_work(rows, 3, 3)
    assert ordered.tolist() == [True, False, True, False, False, True, True, False]


def test_grid_knn_sorted_candidates_with_near_ties_equal_brute_force():
    """Candidates sorted by float32 distance, some of them a few ulps apart (their float32 order
    may differ from the float64 one): those rows are ranked in float64, the rest keep the float32
    order; every row equals the float64 brute force."""
    g = torch.Generator().manual_seed(5)
    background = torch.rand(700, 2, generator=g)
    angle = torch.rand(40, generator=g, dtype=torch.float64) * 6.283
    ring = (0.5 + 0.01 * torch.stack((angle.cos(), angle.sin()), 1)).float()  # 40 points 0.01 from the centre
    ring = ring + torch.randint(-3, 4, ring.shape, generator=g) * 2.0**-24  # a few float32 ulps off
    x = torch.cat([background, ring])
    y = torch.cat([torch.full((5, 2), 0.5), background[:200]])
    out = knn(x, y, 12)[1].view(-1, 12)
    zeros = np.zeros(len(x), dtype=np.int64)
    expected = brute_knn(x.double().numpy(), y.double().numpy(), 12, zeros, zeros[: len(y)])
    assert len(x) >= cells_module.GRID_MIN_POINTS  # the default settings take the grid
    assert out.tolist() == expected.tolist()
