"""torch-cluster / PyG API of pointcoc.ops: knn_graph, radius, radius_graph, nearest, grid_cluster,
voxel_grid, knn_interpolate, cosine kNN, ptr arguments, tensor FPS ratios.

Hand-built geometries with expected indices worked out by hand from the semantics; brute-force
(float64) and scipy cKDTree oracles on random ragged batches; equality with torch-cluster where
it is installed (skipped otherwise).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

import pointcoc as pc
from pointcoc.ops import (
    fps,
    grid_cluster,
    knn,
    knn_graph,
    knn_interpolate,
    nearest,
    radius,
    radius_graph,
    use_backend,
    voxel_grid,
)
from tests.helpers import DEVICES


@pytest.fixture(autouse=True)
def pure_backend():
    with use_backend("torch"):
        yield


def line(*values, device="cpu", dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, device=device)[:, None]


def ragged(sizes, dim, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(sum(sizes), dim, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return pos, torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)


# ----------------------------------------------------------------------------------------------
# knn_graph
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_knn_graph_on_a_line(device):
    x = line(0, 1, 2, 4, 8, device=device)
    # node 1: 0 and 2 tie at 1 (index order); node 2: 0 and 3 tie at 4 -> 0
    expected_source = [1, 2, 0, 2, 1, 0, 2, 1, 3, 2]
    expected_target = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert knn_graph(x, 2).tolist() == [expected_source, expected_target]
    assert knn_graph(x, 2, flow="target_to_source").tolist() == [expected_target, expected_source]
    assert knn_graph(x, 2, loop=True).tolist() == [[0, 1, 1, 0, 2, 1, 3, 2, 4, 3], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]]


@pytest.mark.parametrize("device", DEVICES)
def test_knn_graph_duplicates_and_small_samples(device):
    x = line(5, 5, 5, 0, 1, device=device)
    batch = torch.tensor([0, 0, 0, 1, 1], device=device)
    # three duplicates: node 2's two nearest (0, 1) do not include itself: it keeps exactly k = 1
    # the 2-point sample gives each node its one other point although k = 3 > n_b - 1
    out = knn_graph(x, 1, batch)
    assert out.tolist() == [[1, 0, 0, 4, 3], [0, 1, 2, 3, 4]]
    out = knn_graph(x, 3, batch)
    assert out.tolist() == [[1, 2, 0, 2, 0, 1, 4, 3], [0, 0, 1, 1, 2, 2, 3, 4]]


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4), k=st.integers(1, 6), seed=st.integers(0, 999))
def test_knn_graph_equals_brute_force(sizes, k, seed):
    x, batch = ragged(sizes, 3, seed=seed)
    xs, bs = x.double().numpy(), batch.numpy()
    source, target = [], []
    for i in range(len(xs)):
        cand = np.nonzero((bs == bs[i]) & (np.arange(len(xs)) != i))[0]
        d = ((xs[cand] - xs[i]) ** 2).sum(1)
        picked = cand[np.lexsort((cand, d))[:k]]
        source += picked.tolist()
        target += [i] * len(picked)
    assert knn_graph(x, k, batch).tolist() == [source, target]


# ----------------------------------------------------------------------------------------------
# radius, radius_graph
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_radius_is_strict_and_keeps_lowest_indices(device):
    x = line(0, 1, 2, 3, 10, device=device, dtype=torch.float64)
    y = line(1.5, device=device, dtype=torch.float64)
    assert radius(x, y, 1.5).tolist() == [[0, 0], [1, 2]]  # 0 and 3 lie exactly at r: excluded
    assert radius(x, y, 1.5000001).tolist() == [[0, 0, 0, 0], [0, 1, 2, 3]]
    assert radius(x, y, 1.5000001, max_num_neighbors=2).tolist() == [[0, 0], [0, 1]]
    assert radius(x, y, 0.0).shape == (2, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_radius_respects_samples(device):
    x = line(0, 1, 0, 1, device=device)
    bx = torch.tensor([0, 0, 1, 1], device=device)
    y = line(0.9, 0.1, device=device)
    by = torch.tensor([0, 1], device=device)
    assert radius(x, y, 0.5, bx, by).tolist() == [[0, 1], [1, 2]]
    ptr_x = torch.tensor([0, 2, 4], device=device)
    assert radius(x, y, 0.5, ptr_x=ptr_x, ptr_y=torch.tensor([0, 1, 2], device=device)).tolist() == [[0, 1], [1, 2]]


@pytest.mark.parametrize("device", DEVICES)
def test_radius_graph_excludes_self_before_truncating(device):
    x = line(0, 0.1, 0.2, 5, device=device)
    out = radius_graph(x, 0.15, max_num_neighbors=1)
    # node 1's neighbours in index order: 0, (itself), 2 -> first non-self: 0
    assert out.tolist() == [[1, 0, 1], [0, 1, 2]]
    out = radius_graph(x, 0.15, loop=True, flow="target_to_source")
    assert out.tolist() == [[0, 0, 1, 1, 1, 2, 2, 3], [0, 1, 0, 1, 2, 1, 2, 3]]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=3),
    dim=st.integers(2, 8),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    r=st.floats(0.05, 0.9),
    offset=st.sampled_from([0.0, 50.0]),
    seed=st.integers(0, 999),
)
def test_radius_equals_brute_force_and_kdtree(sizes, dim, dtype, r, offset, seed):
    x, bx = ragged(sizes, dim, seed=seed)
    y, by = ragged(sizes, dim, seed=seed + 1)
    x, y = (x.double() + offset).to(dtype), (y.double() + offset).to(dtype)
    out = radius(x, y, r, bx, by, max_num_neighbors=1000)
    xs, ys = x.double().numpy(), y.double().numpy()
    d = np.zeros((len(ys), len(xs)))
    for p in range(dim):
        d = d + (ys[:, None, p] - xs[None, :, p]) ** 2
    rows, cols = np.nonzero((d < r * r) & (by.numpy()[:, None] == bx.numpy()[None, :]))
    assert out.tolist() == [rows.tolist(), cols.tolist()]
    if dtype in (torch.float32, torch.float64):  # no lattice: nothing lies exactly at r
        start = 0
        for n in sizes:
            hits = cKDTree(xs[start : start + n]).query_ball_point(ys[start : start + n], r)
            ours = out[:, (out[0] >= start) & (out[0] < start + n)]
            assert ours[1].tolist() == [start + j for found in hits for j in sorted(found)]
            start += n


# ----------------------------------------------------------------------------------------------
# nearest
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_nearest_assigns_each_x_and_breaks_ties_low(device):
    x = line(0, 1, 2, 3, device=device)
    y = line(0.5, 3, device=device)
    assert nearest(x, y).tolist() == [0, 0, 1, 1]
    assert nearest(line(1, device=device), line(0, 2, device=device)).tolist() == [0]  # tie: lowest
    bx = torch.tensor([0, 0, 1, 1], device=device)
    by = torch.tensor([0, 1], device=device)
    assert nearest(x, y, bx, by).tolist() == [0, 0, 1, 1]
    assert nearest(x, line(3, 0, device=device), bx, by).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="batch_x"):
        nearest(x, y[:1], bx, by[:1])


# ----------------------------------------------------------------------------------------------
# grid_cluster, voxel_grid
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_grid_cluster_ids(device):
    pos = torch.tensor([[0.0, 0.0], [0.9, 0.1], [1.0, 0.0], [2.5, 1.5]], device=device)
    # 3 voxels along x (0..2.5), 2 along y (0..1.5): id = vx + 3 * vy
    assert grid_cluster(pos, 1.0).tolist() == [0, 0, 1, 5]
    assert grid_cluster(pos, torch.tensor([1.0, 2.0])).tolist() == [0, 0, 1, 2]
    # start (-1, 0) shifts x voxels by one; end (4, 4): 6 along x
    assert grid_cluster(pos, 1.0, start=[-1.0, 0.0], end=4.0).tolist() == [1, 1, 2, 9]


@pytest.mark.parametrize("device", DEVICES)
def test_voxel_grid_keeps_samples_apart(device):
    pos = torch.tensor([[0.0, 0.0], [0.9, 0.1], [1.0, 0.0], [2.5, 1.5]], device=device)
    batch = torch.tensor([0, 0, 1, 1], device=device)
    # the sample id is a third coordinate (size 1, 2 voxels): id = vx + 3 vy + 6 b
    assert voxel_grid(pos, 1.0, batch).tolist() == [0, 0, 7, 11]
    assert voxel_grid(pos, 1.0).tolist() == [0, 0, 1, 5]
    assert voxel_grid(pos, 1.0, batch, start=0.0, end=3.0).tolist() == [0, 0, 17, 22]  # 4 x 4 x 2 voxels
    same = voxel_grid(pos[:2], 1.0, torch.tensor([0, 1], device=device))
    assert same[0] != same[1]


# ----------------------------------------------------------------------------------------------
# knn_interpolate
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_knn_interpolate_hand_values(device):
    pos_x = line(0, 1, 3, device=device, dtype=torch.float64)
    x = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64, device=device)
    pos_y = line(0.5, device=device, dtype=torch.float64)
    assert knn_interpolate(x, pos_x, pos_y, k=2).tolist() == [[1.5]]
    expected = (4 * 1 + 4 * 2 + 4 / 6.25) / (8 + 1 / 6.25)  # weights 1 / 0.25, 1 / 0.25, 1 / 6.25
    assert knn_interpolate(x, pos_x, pos_y, k=3).item() == pytest.approx(expected, rel=1e-14)
    assert knn_interpolate(x, pos_x, pos_x, k=3).cpu().numpy() == pytest.approx(x.cpu().numpy(), abs=1e-12)


def test_knn_interpolate_ragged_and_gradient():
    pos_x, bx = ragged([10, 2], 3, dtype=torch.float64, seed=4)
    pos_y, by = ragged([4, 3], 3, dtype=torch.float64, seed=5)
    x = torch.rand(12, 5, dtype=torch.float64, requires_grad=True)
    out = knn_interpolate(x, pos_x, pos_y, bx, by, k=3)
    for i in range(7):
        same = torch.nonzero(bx == by[i])[:, 0]
        d = ((pos_x[same] - pos_y[i]) ** 2).sum(1)
        near = same[torch.argsort(d)[:3]]  # sample 1 has only 2 points: both are used
        w = 1.0 / ((pos_x[near] - pos_y[i]) ** 2).sum(1)
        torch.testing.assert_close(out[i], (x[near] * w[:, None]).sum(0) / w.sum())
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------------------
# cosine, ptr, tensor ratio
# ----------------------------------------------------------------------------------------------


def test_knn_cosine_ranks_by_angle():
    x = torch.tensor([[0.0, 2.0], [-1.0, 0.0], [1.0, 1.0], [5.0, 0.0]])
    y = torch.tensor([[3.0, 0.1]])
    assert knn(x, y, 4, cosine=True)[1].tolist() == [3, 2, 0, 1]
    assert knn(x, y, 2)[1].tolist() == [3, 2]
    with pytest.raises(ValueError, match="zero"):
        knn(torch.zeros(2, 2), y, 1, cosine=True)
    with pytest.raises(TypeError, match="cosine"):
        knn(x, y, 1, None, None, 2**20)  # an old positional chunk budget is rejected clearly


@pytest.mark.parametrize("device", DEVICES)
def test_ptr_arguments_equal_batch(device):
    x, bx = ragged([5, 0, 7], 2, device=device, seed=2)
    y, by = ragged([2, 0, 3], 2, device=device, seed=3)
    ptr_x = torch.tensor([0, 5, 5, 12], device=device)
    ptr_y = torch.tensor([0, 2, 2, 5], device=device)
    assert torch.equal(knn(x, y, 3, ptr_x=ptr_x, ptr_y=ptr_y), knn(x, y, 3, bx, by))
    assert torch.equal(knn_graph(x, 2, ptr=ptr_x), knn_graph(x, 2, bx))
    assert torch.equal(radius_graph(x, 0.5, ptr=ptr_x), radius_graph(x, 0.5, bx))
    assert torch.equal(fps(x, ptr=ptr_x, random_start=False), fps(x, bx, random_start=False))
    with pytest.raises(ValueError, match="not both"):
        knn(x, y, 1, bx, by, ptr_x=ptr_x)
    with pytest.raises(ValueError, match="ptr"):
        fps(x, ptr=torch.tensor([0, 5, 11], device=device))
    with pytest.raises(ValueError, match="ptr"):
        fps(x, ptr=torch.tensor([0, 7, 5, 12], device=device))
    with pytest.raises(TypeError, match="ptr"):
        fps(x, ptr=ptr_x.float())


@pytest.mark.parametrize("device", DEVICES)
def test_fps_tensor_ratio_per_sample(device):
    pos, batch = ragged([10, 7, 4], 3, device=device, seed=6)
    ratio = torch.tensor([0.2, 0.5, 1.0], device=device)
    out = fps(pos, batch, ratio=ratio, random_start=False)
    alone = []
    for (lo, hi), r in zip([(0, 10), (10, 17), (17, 21)], [0.2, 0.5, 1.0]):
        alone += (fps(pos[lo:hi], ratio=r, random_start=False) + lo).tolist()
    assert out.tolist() == alone and len(alone) == 2 + 4 + 4
    assert torch.equal(
        fps(pos, batch, ratio=torch.tensor(0.5), random_start=False), fps(pos, batch, ratio=0.5, random_start=False)
    )
    with pytest.raises(ValueError, match="ratio"):
        fps(pos, batch, ratio=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="ratio"):
        fps(pos, batch, ratio=torch.tensor([0.5, 0.0, 1.0]))


def test_new_functions_are_exported():
    for name in ("knn_graph", "radius", "radius_graph", "nearest", "grid_cluster", "voxel_grid", "knn_interpolate"):
        assert name in pc.ops.__all__ and callable(getattr(pc.ops, name))


def test_bad_arguments_name_themselves():
    x = torch.rand(5, 2)
    with pytest.raises(ValueError, match="r must"):
        radius(x, x, -1.0)
    with pytest.raises(TypeError, match="r must"):
        radius(x, x, "1")
    with pytest.raises(ValueError, match="max_num_neighbors"):
        radius(x, x, 1.0, max_num_neighbors=0)
    with pytest.raises(ValueError, match="flow"):
        knn_graph(x, 2, flow="sideways")
    with pytest.raises(TypeError, match="loop"):
        radius_graph(x, 1.0, loop=1)
    with pytest.raises(ValueError, match="size"):
        grid_cluster(x, 0.0)
    with pytest.raises(ValueError, match="size"):
        voxel_grid(x, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="pos_x"):
        knn_interpolate(torch.rand(4, 3), x, x)
    with pytest.raises(ValueError, match="pos_x"):
        knn_interpolate(torch.rand(2, 1), x[:2], x, torch.tensor([0, 0]), torch.tensor([0, 0, 1, 1, 1]))


# ----------------------------------------------------------------------------------------------
# torch-cluster equality (where installed)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_equal_to_torch_cluster(device):
    tc = pytest.importorskip("torch_cluster")
    x, batch = ragged([40, 25, 60], 3, dtype=torch.float64, seed=9, device=device)

    def sort(e):
        return e[:, torch.argsort(e[1] * len(x) + e[0])]

    assert torch.equal(sort(knn_graph(x, 6, batch)), sort(tc.knn_graph(x, 6, batch)))
    theirs = tc.radius(x, x[::5], 0.3, batch, batch[::5], max_num_neighbors=1000)
    assert torch.equal(radius(x, x[::5], 0.3, batch, batch[::5], max_num_neighbors=1000), sort(theirs.flip(0)).flip(0))
    assert torch.equal(nearest(x, x[::9], batch, batch[::9]), tc.nearest(x, x[::9], batch, batch[::9]))
    size = torch.tensor([0.25, 0.3, 0.2], dtype=torch.float64, device=device)
    assert torch.equal(grid_cluster(x, size), tc.grid_cluster(x, size))
    ratio = torch.tensor([0.25, 0.5, 0.75], device=device)
    assert torch.equal(fps(x, batch, ratio=ratio, random_start=False), tc.fps(x, batch, ratio, False))
    assert math.isfinite(float(x.sum()))
