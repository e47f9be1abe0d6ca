"""Sampling / neighbour operations: fps, knn, knn_padded, knn_dense, grid proposal, backend switch.

Oracles are plain numpy loops (float64, or float32 arithmetic where stated), started at
each sample's first point for FPS, ordered by (distance, index) for kNN.
"""

from __future__ import annotations

import contextlib
import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import pointcoc as pc
from pointcoc.ops import (
    fps,
    get_backend,
    grid_proposal,
    knn,
    knn_dense,
    knn_padded,
    set_backend,
    use_backend,
)
from pointcoc.ops.backend import torch_cluster_module
from tests.helpers import DEVICES

knn_module = importlib.import_module("pointcoc.ops.knn")  # the module (pointcoc.ops.knn is the function)
search_module = importlib.import_module("pointcoc.ops.search")
cells_module = importlib.import_module("pointcoc.ops.cells")
fps_one_module = importlib.import_module("pointcoc.ops.fps_one")


@pytest.fixture(autouse=True)
def pure_backend():
    """Every test runs the pure-PyTorch path unless it opts into torch-cluster explicitly."""
    with use_backend("torch"):
        yield


# ----------------------------------------------------------------------------------------------
# oracles
# ----------------------------------------------------------------------------------------------


def sq_dist_np(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Squared distances summed coordinate by coordinate (same order as the library)."""
    acc = (points[:, 0] - centre[0]) ** 2
    for p in range(1, points.shape[1]):
        acc = acc + (points[:, p] - centre[p]) ** 2
    return acc


def fps_oracle(pos: np.ndarray, counts, picks, starts=None) -> list:
    """Plain float64 FPS, one sample at a time, from each sample's first point (or the given start slots)."""
    pos = pos.astype(np.float64)
    out, offset = [], 0
    for b, (n_b, m_b) in enumerate(zip(counts, picks)):
        pts = pos[offset : offset + n_b]
        mind = np.full(n_b, np.inf, dtype=pos.dtype)
        current = 0 if starts is None else starts[b]
        for _ in range(m_b):
            out.append(offset + current)
            mind = np.minimum(mind, sq_dist_np(pts, pts[current]))
            current = int(np.argmax(mind))  # first maximum
        offset += n_b
    return out


def knn_oracle(x: np.ndarray, y: np.ndarray, k: int, batch_x: np.ndarray, batch_y: np.ndarray):
    """Per query: x indices of the same sample sorted by (float64 distance, index), first k (padded -1 / inf)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    index = np.full((len(y), k), -1, dtype=np.int64)
    dist = np.full((len(y), k), np.inf, dtype=np.float64)
    for i in range(len(y)):
        cand = np.nonzero(batch_x == batch_y[i])[0]
        d = sq_dist_np(x[cand], y[i])
        order = np.lexsort((cand, d))[:k]
        index[i, : len(order)] = cand[order]
        dist[i, : len(order)] = d[order]
    return index, dist


@contextlib.contextmanager
def search_path(name: str):
    """Force the dense (brute-force block), the tiled or the cell-grid kNN search regardless of
    sample size (the grid serves positions with at most GRID_MAX_DIM coordinates; others fall
    back to the dense search)."""
    saved = search_module.TILED_MIN_POINTS, cells_module.GRID_MIN_POINTS
    search_module.TILED_MIN_POINTS = 1 if name == "tiled" else 2**62
    cells_module.GRID_MIN_POINTS = 1 if name == "grid" else 2**62
    try:
        yield
    finally:
        search_module.TILED_MIN_POINTS, cells_module.GRID_MIN_POINTS = saved


@pytest.fixture(params=["dense", "tiled", "grid"])
def search(request):
    with search_path(request.param):
        yield request.param


def ragged(sizes, dim=3, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(sum(sizes), dim, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)
    return pos, batch


def pixel_grid(h, w, dtype=torch.float32, device="cpu"):
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((rows.reshape(-1), cols.reshape(-1)), 1).to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------
# fps
# ----------------------------------------------------------------------------------------------

SIZES = [1, 2, 7, 33, 100, 1, 64]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 1.0])
def test_fps_matches_oracle_on_ragged_batch(device, dtype, ratio):
    pos, batch = ragged(SIZES, dtype=dtype, device=device)
    picks = [math.ceil(ratio * n) for n in SIZES]
    out = fps(pos, batch, ratio=ratio, random_start=False)
    assert out.dtype == torch.long and out.device.type == device
    assert out.tolist() == fps_oracle(pos.cpu().numpy(), SIZES, picks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_points", [1, 3])
def test_fps_fixed_num_points(device, num_points):
    sizes = [3, 10, 5]
    pos, batch = ragged(sizes, dim=2, device=device, seed=1)
    out = fps(pos, batch, random_start=False, num_points=num_points)
    assert out.tolist() == fps_oracle(pos.cpu().numpy(), sizes, [num_points] * 3)


@pytest.mark.parametrize("device", DEVICES)
def test_fps_ties_on_pixel_grid_take_lowest_index(device):
    pos = pixel_grid(5, 6, torch.float32, device)
    out = fps(pos, ratio=1.0, random_start=False)
    assert out.tolist() == fps_oracle(pos.cpu().numpy(), [30], [30])
    # hand-checked: corner 0, the opposite corner 29, then (0, 4): lowest index at min-distance 16
    assert out[:3].tolist() == [0, 29, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_fps_one_dimensional_and_four_dimensional_positions(device):
    for dim in (1, 4):
        pos, batch = ragged([9, 4], dim=dim, device=device, seed=dim)
        out = fps(pos, batch, ratio=0.5, random_start=False)
        assert out.tolist() == fps_oracle(pos.cpu().numpy(), [9, 4], [5, 2])


@pytest.mark.parametrize("device", DEVICES)
def test_fps_skips_empty_samples(device):
    pos, _ = ragged([4, 3], dim=3, device=device)
    batch = torch.tensor([0, 0, 0, 0, 2, 2, 2], device=device)  # sample 1 has no points
    out = fps(pos, batch, ratio=0.5, random_start=False)
    assert out.tolist() == fps_oracle(pos.cpu().numpy(), [4, 3], [2, 2])


@pytest.mark.parametrize("device", DEVICES)
def test_fps_batch_size_with_trailing_empty_samples(device):
    pos, batch = ragged([4, 3], dim=3, device=device)
    out = fps(pos, batch, ratio=0.5, random_start=False, batch_size=4)  # samples 2 and 3 are empty
    assert out.tolist() == fps_oracle(pos.cpu().numpy(), [4, 3], [2, 2])
    one = fps(pos[:4], torch.zeros(4, dtype=torch.long, device=device), ratio=0.5, random_start=False, batch_size=2)
    assert one.tolist() == fps_oracle(pos[:4].cpu().numpy(), [4], [2])


@pytest.mark.parametrize("device", DEVICES)
def test_fps_random_start_is_fps_from_the_drawn_start(device):
    sizes = [6, 11, 1, 8]
    pos, batch = ragged(sizes, device=device, seed=3)
    gen = torch.Generator(device=device).manual_seed(7)
    out = fps(pos, batch, ratio=0.5, random_start=True, generator=gen)
    picks = [math.ceil(0.5 * n) for n in sizes]
    firsts = np.cumsum([0] + picks[:-1])
    offsets = np.cumsum([0] + sizes[:-1])
    starts = [int(out[f]) - o for f, o in zip(firsts, offsets)]
    assert out.tolist() == fps_oracle(pos.cpu().numpy(), sizes, picks, starts)
    again = fps(pos, batch, ratio=0.5, random_start=True, generator=torch.Generator(device=device).manual_seed(7))
    assert torch.equal(out, again)


@pytest.mark.parametrize("device", DEVICES)
def test_fps_random_start_covers_every_point(device):
    pos, _ = ragged([5], device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    starts = {int(fps(pos, ratio=0.2, generator=gen)[0]) for _ in range(200)}
    assert starts == set(range(5))


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    ratio=st.sampled_from([0.2, 0.5, 0.75, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_fps_ragged_batch_equals_samples_alone(sizes, ratio, seed):
    pos, batch = ragged(sizes, seed=seed)
    together = fps(pos, batch, ratio=ratio, random_start=False)
    alone, offset = [], 0
    for n in sizes:
        alone += (fps(pos[offset : offset + n], ratio=ratio, random_start=False) + offset).tolist()
        offset += n
    assert together.tolist() == alone


def test_fps_one_sample_hand_built_ties():
    # start 0 (x=0): values 0,100,25,25,0,100 -> 1 (lowest of the tied 100s), then 2 (lowest 25),
    # then every value is 0 and the lowest index, 0, is picked again
    pos = torch.tensor([[0.0], [10.0], [5.0], [5.0], [0.0], [10.0]])
    assert fps(pos, ratio=1.0, random_start=False).tolist() == [0, 1, 2, 0, 0, 0]
    assert fps_one_module.OneSample(pos.double()).sample(6, 0).tolist() == [0, 1, 2, 0, 0, 0]
    # a 4 x 4 grid in raster order (segments of 4 points, each a row): corner, opposite corner,
    # then the lowest index among the points at squared distance 9 from both: 3
    assert fps(pixel_grid(4, 4), num_points=3, random_start=False).tolist() == [0, 15, 3]
    assert fps_one_module.OneSample(pixel_grid(4, 4).double()).sample(3, 0).tolist() == [0, 15, 3]


def test_fps_one_sample_runs_are_short_in_coherent_order_only():
    grid = pixel_grid(30, 30).double()
    assert fps_one_module.OneSample(grid).runs_are_short()
    assert not fps_one_module.OneSample(grid[torch.randperm(900)]).runs_are_short()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(40, 40), (9, 7, 12)])
def test_fps_one_sample_in_raster_order_matches_oracle(dtype, shape, monkeypatch):
    """One sample on the CPU updates only the run each pick reaches: the oracle's picks, ties included."""
    axes = torch.meshgrid(*[torch.arange(side) for side in shape], indexing="ij")
    pos = (torch.stack([a.reshape(-1) for a in axes], 1) / 7).to(dtype)
    n = pos.size(0)
    updated, update = [], fps_one_module._update

    def counted(block, *rest):
        updated.append(block.size(1))
        update(block, *rest)

    monkeypatch.setattr(fps_one_module, "_update", counted)
    out = fps(pos, ratio=0.5, random_start=False)
    assert out.tolist() == fps_oracle(pos.double().numpy(), [n], [math.ceil(n / 2)])
    assert sum(updated) < n * len(updated) / 2  # the runs are short: most points are skipped
    start = fps(pos, num_points=1, generator=torch.Generator().manual_seed(5))
    out = fps(pos, num_points=300, generator=torch.Generator().manual_seed(5))
    assert out.tolist() == fps_oracle(pos.double().numpy(), [n], [300], [int(start)])


@pytest.mark.parametrize("scale", [1e-160, 1e150])
def test_fps_one_sample_equals_batched_loop_at_extreme_scales(scale):
    """Squares that underflow (1e-160 ** 2) or are huge: the one-sample run and the batched loop agree."""
    g = torch.Generator().manual_seed(3)
    pos = torch.cat([torch.randint(0, 9, (500, 2), generator=g).double(), torch.rand(500, 2, generator=g)]) * scale
    pos = pos[torch.argsort(pos[:, 0], stable=True)]  # coherent order: short runs
    alone = fps_one_module.OneSample(pos).sample(500, 0)
    twice = fps(torch.cat([pos, pos]), torch.arange(2).repeat_interleave(len(pos)), ratio=0.5, random_start=False)
    assert alone.tolist() == twice[: len(alone)].tolist() == fps_oracle(pos.numpy(), [len(pos)], [len(alone)])


def test_fps_ignores_gradients():
    pos = torch.rand(10, 3, requires_grad=True)
    assert not fps(pos, random_start=False).requires_grad


# ----------------------------------------------------------------------------------------------
# knn
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_knn_tie_order_on_3x3_grid(search, device):
    grid = pixel_grid(3, 3, device=device)
    centre = grid[4:5]
    out = knn(grid, centre, 5)
    assert out.tolist() == [[0] * 5, [4, 1, 3, 5, 7]]
    out = knn(grid.double(), centre.double(), 9)
    assert out[1].tolist() == [4, 1, 3, 5, 7, 0, 2, 6, 8]
    corner = knn(grid, grid[:1], 4)
    assert corner[1].tolist() == [0, 1, 3, 4]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("budget", [2**22, 50])
def test_knn_pixel_grid_ties_match_oracle(search, device, dtype, budget):
    grid = pixel_grid(12, 9, dtype, device)
    batch = torch.zeros(len(grid), dtype=torch.long, device=device)
    out = knn(grid, grid, 13, batch, batch, max_chunk_entries=budget)
    index, _ = knn_oracle(grid.cpu().numpy(), grid.cpu().numpy(), 13, batch.cpu().numpy(), batch.cpu().numpy())
    assert out[1].view(-1, 13).tolist() == index.tolist()
    assert out[0].tolist() == np.repeat(np.arange(len(grid)), 13).tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 3, 8])
@pytest.mark.parametrize("budget", [2**22, 700, 1])
def test_knn_matches_oracle_on_ragged_batch(search, device, dtype, dim, budget):
    x, bx = ragged([40, 7, 25, 60], dim=dim, dtype=dtype, device=device, seed=dim)
    y, by = ragged([5, 9, 1, 30], dim=dim, dtype=dtype, device=device, seed=dim + 100)
    for k in (1, 7, 40):
        index, dist = knn_oracle(x.cpu().numpy(), y.cpu().numpy(), k, bx.cpu().numpy(), by.cpu().numpy())
        if k <= 7:
            out = knn(x, y, k, bx, by, max_chunk_entries=budget)
            assert out[1].view(-1, k).tolist() == index.tolist()
        pad_index, pad_dist = knn_padded(x, y, k, bx, by, max_chunk_entries=budget)
        assert pad_index.tolist() == index.tolist()
        assert pad_dist.cpu().tolist() == torch.from_numpy(dist).to(dtype).tolist()  # float64 bits, rounded


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("budget", [2**22, 1])
@pytest.mark.parametrize("path", ["default", "tiled"])
def test_knn_large_sample_exactly(device, budget, path):
    """A sample above TILED_MIN_POINTS and GRID_MIN_POINTS (the default settings take the cell
    grid): checked against the oracle on some queries.

    ``budget=1`` makes every chunk a single query block (tiled) or query (grid), so no block
    borrows candidates from a neighbour that needs more.
    """
    grid = pixel_grid(47, 50, torch.float32, device) / 49.0 - 0.5  # 2350 points, many tied distances
    assert len(grid) >= max(search_module.TILED_MIN_POINTS, cells_module.GRID_MIN_POINTS)
    queries = grid[::37]
    with search_path("tiled") if path == "tiled" else contextlib.nullcontext():
        out = knn(grid, queries, 24, max_chunk_entries=budget)
    zeros_x, zeros_y = np.zeros(len(grid), dtype=np.int64), np.zeros(len(queries), dtype=np.int64)
    index, _ = knn_oracle(grid.cpu().numpy(), queries.cpu().numpy(), 24, zeros_x, zeros_y)
    assert out[1].view(-1, 24).tolist() == index.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_knn_tiled_keeps_a_neighbour_lying_exactly_at_the_pruning_bound(device):
    """Points 1..64 on a line form two tiles; from 0 the 33rd neighbour (33) is the second tile's
    nearest point, so that tile's lower bound equals the k-th distance and must not be pruned."""
    x = torch.arange(1.0, 65.0, device=device)[:, None]
    with search_path("tiled"):
        out = knn(x, torch.zeros(1, 1, device=device), 33, max_chunk_entries=1)
    assert out[1].tolist() == list(range(33))


@pytest.mark.parametrize("device", DEVICES)
def test_knn_padded_small_and_empty_samples(search, device):
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0]], device=device)
    bx = torch.tensor([0, 0, 0, 2, 2], device=device)
    y = torch.tensor([[0.9], [5.0], [10.4], [7.0]], device=device)
    by = torch.tensor([0, 1, 2, 3], device=device)  # sample 1 and 3 have no x points
    index, dist = knn_padded(x, y, 4, bx, by)
    assert index.tolist() == [[1, 0, 2, -1], [-1] * 4, [3, 4, -1, -1], [-1] * 4]
    expected = torch.tensor(
        [[0.1**2, 0.9**2, 2.1**2, math.inf], [math.inf] * 4, [0.4**2, 0.6**2, math.inf, math.inf], [math.inf] * 4]
    )
    torch.testing.assert_close(dist.cpu(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isinf(dist[index < 0]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_knn_padded_empty_inputs(search, device):
    x = torch.rand(4, 2, device=device)
    index, dist = knn_padded(x, x[:0], 3)
    assert index.shape == (0, 3) and dist.shape == (0, 3)
    index, dist = knn_padded(x[:0], x, 2)
    assert index.tolist() == [[-1, -1]] * 4 and torch.isinf(dist).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("budget", [2**22, 30])
def test_knn_dense_matches_oracle(search, device, budget):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 20, 3, generator=g, dtype=torch.float64).to(device)
    y = torch.rand(3, 6, 3, generator=g, dtype=torch.float64).to(device)
    out = knn_dense(x, y, 5, max_chunk_entries=budget)
    assert out.shape == (3, 6, 5)
    for b in range(3):
        zeros_x, zeros_y = np.zeros(20, dtype=np.int64), np.zeros(6, dtype=np.int64)
        index, _ = knn_oracle(x[b].cpu().numpy(), y[b].cpu().numpy(), 5, zeros_x, zeros_y)
        assert out[b].tolist() == index.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_knn_half_precision_orders_exactly(search, device):
    grid = pixel_grid(4, 4, torch.float16, device)
    out = knn(grid, grid[5:6], 5)
    assert out[1].tolist() == [5, 1, 4, 6, 9]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(3, 70), st.integers(1, 40)), min_size=1, max_size=4),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_knn_ragged_batch_equals_samples_alone(sizes, k, seed):
    x, bx = ragged([s[0] for s in sizes], dim=2, seed=seed)
    y, by = ragged([s[1] for s in sizes], dim=2, seed=seed + 1)
    for name in ("dense", "tiled"):
        with search_path(name):
            together = knn(x, y, k, bx, by)
            rows, cols = [], []
            ox = oy = 0
            for nx, ny in sizes:
                alone = knn(x[ox : ox + nx], y[oy : oy + ny], k)
                rows += (alone[0] + oy).tolist()
                cols += (alone[1] + ox).tolist()
                ox, oy = ox + nx, oy + ny
            assert together.tolist() == [rows, cols]


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(4, 30), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_knn_permuting_x_permutes_neighbours(sizes, seed):
    x, bx = ragged(sizes, dim=2, seed=seed)
    y, by = ragged([3] * len(sizes), dim=2, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    # permute within samples so that batch_x stays sorted
    perm = torch.argsort(bx.double() + torch.rand(len(bx), generator=g, dtype=torch.float64) * 0.5)
    for name in ("dense", "tiled"):
        with search_path(name):
            base = knn(x, y, 4, bx, by)
            moved = knn(x[perm], y, 4, bx, by)
            assert torch.equal(moved[0], base[0])
            assert torch.equal(perm[moved[1]], base[1])


# ----------------------------------------------------------------------------------------------
# grid proposal
# ----------------------------------------------------------------------------------------------


def bin_means(values, coord, extent, bins, region):
    """Mean of each (region, bin) from the membership lists: ``[R, bins0*bins1, C]``."""
    point, bin_ = grid_proposal(coord, extent, bins)
    nb = bins[0] * bins[1]
    slot = region[point] * nb + bin_
    num_regions = int(region.max()) + 1
    sums = torch.zeros(num_regions * nb, values.size(1), dtype=values.dtype).index_add_(0, slot, values[point])
    counts = torch.bincount(slot, minlength=num_regions * nb).to(values.dtype)
    return (sums / counts[:, None]).view(num_regions, nb, -1)


@pytest.mark.parametrize("h,w,bins", [(7, 7, (2, 2)), (5, 9, (3, 4)), (2, 3, (4, 5)), (6, 4, (6, 4)), (1, 1, (2, 3))])
def test_grid_proposal_means_equal_adaptive_avg_pool(h, w, bins):
    g = torch.Generator().manual_seed(h * 31 + w)
    image = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coord = torch.stack((rows.reshape(-1), cols.reshape(-1)), 1)
    extent = torch.tensor([[h, w]]).expand(h * w, 2)
    means = bin_means(image.reshape(3, -1).t(), coord, extent, bins, torch.zeros(h * w, dtype=torch.long))
    pooled = F.adaptive_avg_pool2d(image[None], bins)[0].reshape(3, -1).t()
    torch.testing.assert_close(means[0], pooled, rtol=0, atol=1e-12)


def test_grid_proposal_regions_of_different_sizes():
    """Unequal tiles of one image, each pooled on its own, all in one call."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 11, 10, generator=g, dtype=torch.float64)
    row_cuts, col_cuts = [0, 4, 11], [0, 3, 10]  # tiles 4x3, 4x7, 7x3, 7x7
    bins = (3, 2)
    coord, extent, region, values, expected = [], [], [], [], []
    for i in range(2):
        for j in range(2):
            r0, r1, c0, c1 = row_cuts[i], row_cuts[i + 1], col_cuts[j], col_cuts[j + 1]
            tile = image[:, r0:r1, c0:c1]
            rows, cols = torch.meshgrid(torch.arange(r1 - r0), torch.arange(c1 - c0), indexing="ij")
            coord.append(torch.stack((rows.reshape(-1), cols.reshape(-1)), 1))
            extent.append(torch.tensor([[r1 - r0, c1 - c0]]).expand(rows.numel(), 2))
            region.append(torch.full((rows.numel(),), 2 * i + j))
            values.append(tile.reshape(2, -1).t())
            expected.append(F.adaptive_avg_pool2d(tile[None], bins)[0].reshape(2, -1).t())
    means = bin_means(torch.cat(values), torch.cat(coord), torch.cat(extent), bins, torch.cat(region))
    torch.testing.assert_close(means, torch.stack(expected), rtol=0, atol=1e-12)


def test_grid_proposal_lists_memberships_in_point_then_bin_order():
    coord = torch.tensor([[0, 0], [1, 2], [2, 1]])
    extent = torch.tensor([[3, 3]] * 3)
    point, bin_ = grid_proposal(coord, extent, (2, 2))
    # axis of 3 in 2 bins: bin 0 = [0, 2), bin 1 = [1, 3)
    assert point.tolist() == [0, 1, 1, 2, 2]
    assert bin_.tolist() == [0, 1, 3, 2, 3]


@pytest.mark.parametrize("device", DEVICES)
def test_grid_proposal_on_device(device):
    coord = torch.tensor([[0, 1]], device=device)
    extent = torch.tensor([[1, 2]], device=device)
    point, bin_ = grid_proposal(coord, extent, (1, 3))  # axis of 2 in 3 bins: [0,1), [0,2), [1,2)
    assert point.device.type == device and point.tolist() == [0, 0] and bin_.tolist() == [1, 2]


# ----------------------------------------------------------------------------------------------
# backend switch and torch-cluster equality
# ----------------------------------------------------------------------------------------------


def test_backend_switch_and_context_manager():
    assert get_backend() == "torch"  # set by the autouse fixture
    with use_backend("auto"):
        assert get_backend() == "auto"
        with pytest.raises(RuntimeError):
            with use_backend("torch"):
                assert torch_cluster_module() is None
                raise RuntimeError("inner failure")
        assert get_backend() == "auto"
    set_backend("auto")
    assert get_backend() == "auto"
    set_backend("torch")
    with pytest.raises(ValueError, match="backend"):
        set_backend("cuda")
    with pytest.raises(TypeError, match="backend"):
        set_backend(None)


@pytest.mark.parametrize("device", DEVICES)
def test_fps_equals_torch_cluster(device):
    torch_cluster = pytest.importorskip("torch_cluster")
    pos, batch = ragged([50, 1, 17, 128], dtype=torch.float32, device=device, seed=11)
    expected = torch_cluster.fps(pos, batch, 0.25, False)
    assert torch.equal(fps(pos, batch, ratio=0.25, random_start=False), expected)
    with use_backend("auto"):
        assert torch.equal(fps(pos, batch, ratio=0.25, random_start=False), expected)
        # torch-cluster would count ceil(50 * 0.3) in float32 as 16: the pure path keeps 15
        counted = fps(pos, batch, ratio=0.3, random_start=False)
    assert torch.equal(counted, fps(pos, batch, ratio=0.3, random_start=False))
    assert counted.numel() == 15 + 1 + 6 + 39


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_equals_torch_cluster(device, dtype):
    pytest.importorskip("torch_cluster")
    x, bx = ragged([40, 30, 64], dtype=dtype, device=device, seed=12)
    y, by = ragged([10, 3, 20], dtype=dtype, device=device, seed=13)
    pure = knn(x, y, 9, bx, by)
    with use_backend("auto"):
        assert torch_cluster_module() is not None
        assert torch.equal(knn(x, y, 9, bx, by), pure)


class FakeCluster:
    """Stands in for torch_cluster: records calls, returns neighbour sets in scrambled order."""

    def __init__(self):
        self.calls = []

    def fps(self, pos, batch, ratio, random_start):
        self.calls.append("fps")
        return torch.full((3,), 7)

    def knn(self, x, y, k, batch_x, batch_y):
        self.calls.append("knn")
        with use_backend("torch"):
            row, col = knn(x, y, k, batch_x, batch_y)
        flip = torch.arange(len(row) - 1, -1, -1)  # queries and neighbours reversed
        return torch.stack([row[flip], col[flip]])


@pytest.fixture
def fake_cluster(monkeypatch):
    fake = FakeCluster()
    fps_module = importlib.import_module("pointcoc.ops.fps")
    for module in (fps_module, knn_module):
        monkeypatch.setattr(module, "torch_cluster_module", lambda: fake if get_backend() == "auto" else None)
    return fake


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dispatch_to_torch_cluster(fake_cluster, device, dtype):
    pos, batch = ragged([8, 4], dim=2, dtype=dtype, device=device)
    fps_calls = ["fps", "fps"] if device == "cuda" else []  # its CPU fps kernel is never used
    with use_backend("auto"):
        picked = fps(pos, batch, ratio=0.25, random_start=False)  # ceil(2) + ceil(1) picks
        assert picked.tolist() == ([7, 7, 7] if device == "cuda" else fps_oracle(pos.cpu().numpy(), [8, 4], [2, 1]))
        fps(pos, batch, ratio=0.25, generator=torch.Generator(device=device))  # generator: pure path
        fps(pos, batch, num_points=2)  # fixed count: pure path
        fps(pos, batch, ratio=0.3)  # counts ceil(8 * 0.3) = 3, ceil(4 * 0.3) = 2 agree in float32
        fps(pos, torch.tensor([0] * 8 + [2] * 4, device=device), ratio=0.5)  # empty sample 1: pure path
        assert fake_cluster.calls == fps_calls
        out = knn(pos, pos[:5], 3, batch, batch[:5])  # reversed by the fake, reordered by (distance, index)
        assert fake_cluster.calls == fps_calls + ["knn"]
        knn_padded(pos, pos[:5], 3, batch, batch[:5])  # never torch-cluster
        knn(pos.half(), pos[:5].half(), 3, batch, batch[:5])  # dtype it does not take: pure path
        assert fake_cluster.calls == fps_calls + ["knn"]
    with use_backend("torch"):
        assert torch.equal(out, knn(pos, pos[:5], 3, batch, batch[:5]))
        fps(pos, batch, ratio=0.5)
    assert fake_cluster.calls == fps_calls + ["knn"]


def test_torch_cluster_order_is_restored_on_ties(fake_cluster):
    """The fake lists each query's neighbours backwards: ties must come back in index order."""
    grid = pixel_grid(5, 5)
    with use_backend("auto"):
        out = knn(grid, grid[12:13], 9)
    assert fake_cluster.calls == ["knn"]
    assert out[1].tolist() == [12, 7, 11, 13, 17, 6, 8, 16, 18]


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def test_fps_rejects_bad_input():
    pos = torch.rand(6, 3)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="pos"):
        fps(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="pos"):
        fps(torch.tensor([[0.0, float("inf")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="pos"):
        fps(torch.empty(0, 3))
    with pytest.raises(ValueError, match="pos"):
        fps(torch.rand(6))
    with pytest.raises(TypeError, match="pos"):
        fps(torch.arange(6).view(3, 2))
    with pytest.raises(TypeError, match="pos"):
        fps(pos.numpy())
    with pytest.raises(ValueError, match="batch"):
        fps(pos, batch[:5])
    with pytest.raises(ValueError, match="batch"):
        fps(pos, batch.flip(0))
    with pytest.raises(TypeError, match="batch"):
        fps(pos, batch.float())
    with pytest.raises(ValueError, match="ratio"):
        fps(pos, batch, ratio=0.0)
    with pytest.raises(ValueError, match="ratio"):
        fps(pos, batch, ratio=1.5)
    with pytest.raises(TypeError, match="ratio"):
        fps(pos, batch, ratio="half")
    with pytest.raises(ValueError, match="num_points"):
        fps(pos, batch, num_points=4)
    with pytest.raises(TypeError, match="random_start"):
        fps(pos, batch, random_start=1)


def test_knn_rejects_bad_input():
    x = torch.rand(6, 3)
    bx = torch.tensor([0, 0, 0, 1, 1, 1])
    y = torch.rand(2, 3)
    by = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="x"):
        knn(torch.tensor([[float("nan"), 0.0, 0.0]]), y, 1)
    with pytest.raises(ValueError, match="y"):
        knn(x, torch.tensor([[float("inf"), 0.0, 0.0]]), 1)
    with pytest.raises(ValueError, match="x"):
        knn(torch.empty(0, 3), y, 1)
    with pytest.raises(ValueError, match="y"):
        knn(x, torch.empty(0, 3), 1)
    with pytest.raises(ValueError, match="k=4"):
        knn(x, y, 4, bx, by)
    with pytest.raises(ValueError, match="k"):
        knn(x, y, 0, bx, by)
    with pytest.raises(TypeError, match="k"):
        knn(x, y, 2.0, bx, by)
    with pytest.raises(ValueError, match="batch_x"):
        knn(x, y, 1, bx[:5], by)
    with pytest.raises(ValueError, match="batch_y"):
        knn(x, y, 1, bx, by.flip(0))
    with pytest.raises(TypeError, match="batch_x"):
        knn(x, y, 1, bx.float(), by)
    with pytest.raises(ValueError, match="batch_x"):
        knn(x, y, 1, bx, torch.tensor([0, 2]))  # queries in sample 2, which has no x points
    with pytest.raises(ValueError, match="y"):
        knn(x, torch.rand(2, 2), 1)
    with pytest.raises(TypeError, match="y"):
        knn(x, y.double(), 1)
    with pytest.raises(ValueError, match="x"):
        knn(torch.rand(6), y, 1)
    with pytest.raises(TypeError, match="x"):
        knn(torch.ones(6, 3, dtype=torch.long), y, 1)
    with pytest.raises(ValueError, match="max_chunk_entries"):
        knn(x, y, 1, max_chunk_entries=0)
    with pytest.raises(ValueError, match="y"):
        knn_padded(x, torch.rand(3, 3, 1), 1)


def test_knn_dense_rejects_bad_input():
    x = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="x"):
        knn_dense(torch.rand(5, 3), x, 1)
    with pytest.raises(ValueError, match="y"):
        knn_dense(x, torch.rand(3, 4, 3), 1)
    with pytest.raises(ValueError, match="y"):
        knn_dense(x, torch.rand(2, 4, 2), 1)
    with pytest.raises(ValueError, match="k=6"):
        knn_dense(x, x, 6)


def test_grid_rejects_bad_input():
    coord = torch.tensor([[0, 0]])
    extent = torch.tensor([[2, 2]])
    with pytest.raises(TypeError, match="coord"):
        grid_proposal(coord.float(), extent, (2, 2))
    with pytest.raises(ValueError, match="coord"):
        grid_proposal(torch.tensor([[2, 0]]), extent, (2, 2))
    with pytest.raises(ValueError, match="coord"):
        grid_proposal(torch.tensor([0, 0]), extent, (2, 2))
    with pytest.raises(ValueError, match="extent"):
        grid_proposal(coord, torch.tensor([[0, 2]]), (2, 2))
    with pytest.raises(ValueError, match="extent"):
        grid_proposal(coord, torch.tensor([[2, 2], [2, 2]]), (2, 2))
    with pytest.raises(TypeError, match="bins"):
        grid_proposal(coord, extent, 2)
    with pytest.raises(ValueError, match="bins"):
        grid_proposal(coord, extent, (0, 2))


def test_public_exports():
    for name in (
        "fps",
        "knn",
        "knn_padded",
        "knn_dense",
        "random_sample",
        "grid_proposal",
        "set_backend",
        "get_backend",
        "use_backend",
        "to_dense_batch",
    ):
        assert name in pc.ops.__all__ and callable(getattr(pc.ops, name))
