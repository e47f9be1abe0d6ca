"""Exactness of knn / knn_padded / knn_dense / fps against a float64 brute force.

The contract (pointcoc.ops.exact): neighbour lists and FPS picks equal those of a float64
brute force on the input values as given, ties by index, for 2-8 coordinates, offsets up to
1e4 x the spread, duplicates, and every float dtype; ValueError where float64 overflows.
scipy's cKDTree is an independent oracle for the neighbour distances.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from pointcoc.ops import fps, knn, knn_dense, knn_padded, use_backend
from tests.helpers import DEVICES

exact_module = importlib.import_module("pointcoc.ops.exact")
search_module = importlib.import_module("pointcoc.ops.search")
cells_module = importlib.import_module("pointcoc.ops.cells")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def pure_backend():
    with use_backend("torch"):
        yield


def brute_knn(x: np.ndarray, y: np.ndarray, k: int, bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    """float64 brute force: per query, same-sample x indices sorted by (distance, index), -1 padded."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    out = np.full((len(y), k), -1, dtype=np.int64)
    for i in range(len(y)):
        cand = np.nonzero(bx == by[i])[0]
        d = np.zeros(len(cand))
        for p in range(x.shape[1]):
            d = d + (y[i, p] - x[cand, p]) ** 2
        order = np.lexsort((cand, d))[:k]
        out[i, : len(order)] = cand[order]
    return out


def brute_fps(pos: np.ndarray, sizes, picks) -> list:
    pos = pos.astype(np.float64)
    out, offset = [], 0
    for n, m in zip(sizes, picks):
        pts = pos[offset : offset + n]
        mind = np.full(n, np.inf)
        current = 0
        for _ in range(m):
            out.append(offset + current)
            d = np.zeros(n)
            for p in range(pos.shape[1]):
                d = d + (pts[:, p] - pts[current, p]) ** 2
            mind = np.minimum(mind, d)
            current = int(np.argmax(mind))
        offset += n
    return out


def cloud(sizes, dim, offset, spread, dtype, seed, duplicates=0, device="cpu"):
    """Ragged batch: offset + spread * uniform, rounded to ``dtype``; some rows duplicated."""
    g = torch.Generator().manual_seed(seed)
    pos = offset + spread * torch.rand(sum(sizes), dim, generator=g, dtype=torch.float64)
    if duplicates:
        src = torch.randint(0, len(pos), (duplicates,), generator=g)
        dst = torch.randint(0, len(pos), (duplicates,), generator=g)
        pos[dst] = pos[src]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return pos.to(dtype).to(device), batch.to(device)


def spread_for(dtype, offset):
    """A spread the dtype still resolves at this offset (offset <= 1e4 x spread)."""
    resolution = {torch.float16: 2**-10, torch.bfloat16: 2**-7}.get(dtype, 2**-23)
    return max(1.0, offset / 1e4, 64 * resolution * max(offset, 1.0))


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 45), min_size=1, max_size=4),
    dim=st.integers(2, 8),
    dtype=st.sampled_from(DTYPES),
    offset=st.sampled_from([0.0, 100.0, 1e3, 1e4]),
    duplicates=st.integers(0, 6),
    k=st.integers(1, 12),
    search=st.sampled_from(["dense", "tiled", "grid"]),
    seed=st.integers(0, 2**16),
)
def test_knn_equals_float64_brute_force(sizes, dim, dtype, offset, duplicates, k, search, seed):
    x, bx = cloud(sizes, dim, offset, spread_for(dtype, offset), dtype, seed, duplicates)
    y, by = cloud(sizes, dim, offset, spread_for(dtype, offset), dtype, seed + 1)
    y[::3] = x[: len(y[::3])]  # queries that coincide with data points
    expected = brute_knn(x.double().numpy(), y.double().numpy(), k, bx.numpy(), by.numpy())
    saved = search_module.TILED_MIN_POINTS, cells_module.GRID_MIN_POINTS
    search_module.TILED_MIN_POINTS = 1 if search == "tiled" else 2**62
    cells_module.GRID_MIN_POINTS = 1 if search == "grid" else 2**62
    try:
        index, dist = knn_padded(x, y, k, bx, by)
        if min(sizes) >= k:
            assert knn(x, y, k, bx, by)[1].view(-1, k).tolist() == expected.tolist()
    finally:
        search_module.TILED_MIN_POINTS, cells_module.GRID_MIN_POINTS = saved
    assert index.tolist() == expected.tolist()
    assert dist.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [2, 5, 8])
def test_knn_large_offset_distances_match_kdtree(device, dtype, dim):
    """Offset 1e4 x spread (the float32 expansion |y|^2 + |x|^2 - 2 y.x fails here)."""
    offset = 1e4 if dtype in (torch.float32, torch.float64) else 10.0
    x, bx = cloud([300, 200], dim, offset, spread_for(dtype, offset), dtype, seed=dim, device=device)
    y, by = x[::7], bx[::7]
    index, dist = knn_padded(x, y, 6, bx, by)
    xs, ys = x.double().cpu().numpy(), y.double().cpu().numpy()
    expected = brute_knn(xs, ys, 6, bx.cpu().numpy(), by.cpu().numpy())
    assert index.cpu().tolist() == expected.tolist()
    for b, lo, hi in ((0, 0, 300), (1, 300, 500)):
        rows = (by == b).cpu().numpy()
        tree_dist, _ = cKDTree(xs[lo:hi]).query(ys[rows], k=6)
        np.testing.assert_allclose(dist.cpu().numpy()[rows], tree_dist**2, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_knn_dense_exact_in_every_dtype(device, dtype):
    x, _ = cloud([4 * 50], 5, 1e3, spread_for(dtype, 1e3), dtype, seed=3, device=device)
    x = x.view(4, 50, 5)
    y = x[:, ::4]
    out = knn_dense(x, y, 7)
    for b in range(4):
        zeros = np.zeros(50, dtype=np.int64)
        expected = brute_knn(x[b].double().cpu().numpy(), y[b].double().cpu().numpy(), 7, zeros, zeros[:13])
        assert out[b].cpu().tolist() == expected.tolist()


def test_half_precision_squares_do_not_overflow():
    """float16 coordinates in [0, 1000]: squared distances exceed float16's range (65504)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(30, 3, generator=g, dtype=torch.float64) * 1000).half()
    out = knn_dense(x[None], x[None, :10], 3)[0]
    zeros = np.zeros(30, dtype=np.int64)
    assert out.tolist() == brute_knn(x.double().numpy(), x[:10].double().numpy(), 3, zeros, zeros[:10]).tolist()
    picks = fps(x, ratio=0.5, random_start=False)
    assert picks.tolist() == brute_fps(x.double().numpy(), [30], [15])


def test_near_ties_beyond_the_candidates_are_searched_in_float64():
    """Points whose float32 distances tie but float64 distances differ: the float64 re-search decides."""
    base = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    x = base + torch.arange(40, dtype=torch.float64)[:, None] * torch.tensor([[0.0, 2.0**-30]])
    x = torch.cat([x.flip(0)]).float()  # all distinct in float32, distances equal in float32
    y = torch.zeros(1, 2)
    index, _ = knn_padded(x, y, 3)
    expected = brute_knn(x.double().numpy(), y.double().numpy(), 3, np.zeros(40, np.int64), np.zeros(1, np.int64))
    assert index.tolist() == expected.tolist()


def test_refine_reports_unproven_rows():
    """refine() proves a row only when the k-th float64 distance is below every outside point."""
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    y = torch.tensor([[0.0]])
    candidates = torch.tensor([[0, 1]])
    index, dist, proven = exact_module.refine(x, y, candidates, torch.tensor([[0.0, 1.0]]), 1, torch.tensor([False]))
    assert index.tolist() == [[0]] and dist.tolist() == [[0.0]] and proven.tolist() == [True]
    _, _, proven = exact_module.refine(x, y, candidates, torch.tensor([[0.0, 1.0]]), 2, torch.tensor([False]))
    assert proven.tolist() == [False]  # 2nd distance 1.0 is not below the bound 1.0 of the outside points
    _, _, proven = exact_module.refine(x, y, candidates, torch.tensor([[0.0, 1.0]]), 2, torch.tensor([True]))
    assert proven.tolist() == [True]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    dim=st.integers(2, 8),
    dtype=st.sampled_from(DTYPES),
    offset=st.sampled_from([0.0, 100.0, 1e4]),
    duplicates=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_fps_equals_float64_brute_force(sizes, dim, dtype, offset, duplicates, seed):
    pos, batch = cloud(sizes, dim, offset, spread_for(dtype, offset), dtype, seed, duplicates)
    picks = [-(-n // 2) for n in sizes]
    assert fps(pos, batch, ratio=0.5, random_start=False).tolist() == brute_fps(pos.double().numpy(), sizes, picks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_spreads(dtype):
    """float32 spreads above 1e19 are searched in float64; float64 overflow raises ValueError."""
    x = torch.tensor([[0.0, 0.0], [3e19, 0.0], [1e20, 1.0], [-2e20, 5.0]], dtype=dtype)
    index, _ = knn_padded(x, x, 4)
    expected = brute_knn(x.double().numpy(), x.double().numpy(), 4, np.zeros(4, np.int64), np.zeros(4, np.int64))
    assert index.tolist() == expected.tolist()
    assert fps(x, ratio=1.0, random_start=False).tolist() == brute_fps(x.numpy(), [4], [4])
    if dtype == torch.float64:
        huge = torch.tensor([[0.0], [1e200]], dtype=dtype)
        with pytest.raises(ValueError, match="float64"):
            knn_padded(huge, huge, 1)
        with pytest.raises(ValueError, match="float64"):
            fps(huge)
