"""Point-mode reducer: lattices and pitch, grid-subsampled anchors, kernel taps with linear influence."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import pointcoc as pc
from pointcoc.models.coc import as_point_batch
from pointcoc.nn.anchors import fps_from_centre, grid_subsample
from pointcoc.nn.geometry import PointGeometry, canonical_order, estimate_pitch, lattice_coordinates, point_lattice
from pointcoc.nn.kernel import tap_coverage, tap_influence
from pointcoc.nn.reducer import PointReducer
from tests.helpers import DEVICES


def _cloud(pos, batch=None, pitch=None):
    batch = torch.zeros(pos.size(0), dtype=torch.long) if batch is None else batch
    geo = PointGeometry(pos=pos, batch=batch, num_samples=int(batch.max()) + 1)
    return point_lattice(geo, pitch)


def _brute_force(reducer, x, geo, anchors):
    """Float64 oracle: every (anchor, point, tap) triple, influence prod max(0, 1 - |offset - tap|),
    the weighted sum divided by the coverage: sum over the taps whose node rounds into the
    extent of min(1, their influence), over the number of those taps."""
    k = torch.tensor(reducer.kernel, dtype=torch.float64)
    w = reducer.proj.weight.detach().double()
    out = torch.zeros(anchors.pos.size(0), w.size(0), dtype=torch.float64)
    for a in range(anchors.pos.size(0)):
        b = int(anchors.batch[a])
        covered, inside = 0.0, 0
        for tap in itertools.product(*(range(n) for n in reducer.kernel)):
            t = torch.tensor(tap, dtype=torch.float64)
            node = torch.floor((anchors.pos[a] - geo.origin[b]) / geo.pitch[b] + t - (k - 1) / 2 + 0.5)
            influence = 0.0
            for i in (geo.batch == b).nonzero().flatten().tolist():
                u = (geo.pos[i] - anchors.pos[a]) / geo.pitch[b] + (k - 1) / 2
                h = torch.clamp(1 - (u - t).abs(), min=0).prod()
                if h > 0:
                    out[a] += h * (w[(slice(None), slice(None)) + tap] @ x[i])
                    influence += float(h)
            if bool(((node >= 0) & (node < geo.grid_size[b])).all()):
                covered, inside = covered + min(1.0, influence), inside + 1
        if covered > 0:
            out[a] *= inside / covered
    return out + reducer.proj.bias.detach().double()


# ----------------------------------------------------------------------------------------------
# lattices: rounding, pitch, origin, extent
# ----------------------------------------------------------------------------------------------
def test_lattice_coordinates_round_half_up():
    pos = torch.tensor([[0.0], [0.49], [0.5], [1.5], [2.5], [-0.5]], dtype=torch.float64)
    batch = torch.zeros(6, dtype=torch.long)
    q = lattice_coordinates(pos, batch, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    assert q.flatten().tolist() == [0, 0, 1, 2, 3, 0]  # halves go up (not to even)


def test_estimate_pitch_is_the_mean_nearest_neighbour_distance():
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.0, 7.0], [9.0, 9.0]], dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    torch.testing.assert_close(estimate_pitch(pos, batch, 3), torch.tensor([4 / 3, 2.0, 1.0], dtype=torch.float64))


def test_point_lattice_of_image_points_and_of_clouds():
    pts = pc.image_to_points([torch.rand(1, 5, 3), torch.rand(1, 1, 4)])
    _, geo = as_point_batch(pts)
    geo = point_lattice(geo, pitch=123.0)  # image points: the grid wins
    torch.testing.assert_close(geo.pitch, torch.tensor([[0.25, 0.5], [1.0, 1 / 3]]))
    torch.testing.assert_close(geo.origin, torch.tensor([[-0.5, -0.5], [0.0, -0.5]]))
    assert torch.equal(geo.pixel, pts.pixel) and geo.grid_size.tolist() == [[5, 3], [1, 4]]
    cloud = _cloud(torch.tensor([[1.0, 2.0, 0.0], [1.5, 2.0, 0.9], [2.0, 3.24, 0.0]], dtype=torch.float64), pitch=0.5)
    torch.testing.assert_close(cloud.origin, torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64))
    assert cloud.pixel.tolist() == [[0, 0, 0], [1, 0, 2], [2, 2, 0]] and cloud.grid_size.tolist() == [[3, 3, 3]]
    with pytest.raises(ValueError, match="pitch"):
        _cloud(torch.rand(4, 3, dtype=torch.float64), pitch=0.0)
    with pytest.raises(ValueError, match="pitch is too small"):
        _cloud(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64), pitch=1e-9)


def test_canonical_order_sorts_by_sample_then_position():
    pos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [5.0, 5.0], [-1.0, 9.0]])
    batch = torch.tensor([0, 0, 0, 1, 1])
    assert canonical_order(pos, batch).tolist() == [2, 1, 0, 4, 3]


# ----------------------------------------------------------------------------------------------
# anchors
# ----------------------------------------------------------------------------------------------
def test_grid_subsample_hand_built():
    """Pitch 1, origin 0: cells of 2 nodes; anchors at c * 2 - 1 + 1 (3x3, stride 2, padding 1)."""
    pos = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0], [4.0, 4.0], [0.0, 4.0]], dtype=torch.float64)
    geo = _cloud(pos, pitch=1.0)
    new = grid_subsample(geo, (3, 3), (2, 2), (1, 1))
    assert new.pixel.tolist() == [[0, 0], [0, 2], [1, 0], [2, 2]]  # cell (0,0) holds points 0 and 1
    torch.testing.assert_close(
        new.pos, torch.tensor([[0.0, 0.0], [0.0, 4.0], [2.0, 0.0], [4.0, 4.0]], dtype=torch.float64)
    )
    assert new.grid_size.tolist() == [[3, 3]]
    torch.testing.assert_close(new.pitch, torch.full((1, 2), 2.0, dtype=torch.float64))
    stem = grid_subsample(geo, (4, 4), (4, 4), (0, 0))  # cells of 4, anchors at the window centres 1.5
    assert stem.pixel.tolist() == [[0, 0], [0, 1], [1, 1]]
    torch.testing.assert_close(stem.pos, torch.tensor([[1.5, 1.5], [1.5, 5.5], [5.5, 5.5]], dtype=torch.float64))


def test_grid_subsample_on_a_full_lattice_gives_the_window_positions():
    pts = pc.image_to_points(torch.rand(1, 9, 14, dtype=torch.float64))
    _, geo = as_point_batch(pts)
    new = grid_subsample(point_lattice(geo), (3, 3), (2, 2), (1, 1))
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    assert torch.equal(new.pixel, torch.stack((rows.flatten(), cols.flatten()), 1))
    rows, cols = rows.flatten().double(), cols.flatten().double()
    expected = torch.stack((2 * rows / 8 - 0.5, 2 * cols / 13 - 0.5), 1)
    torch.testing.assert_close(new.pos, expected, rtol=0, atol=1e-15)


def test_fps_starts_farthest_from_the_bounding_box_centre():
    pos = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 1.0], [0.2, 1.0]])
    # four corners tie: the lowest index (0) starts; then the farthest, ties to the lower index
    picks = fps_from_centre(pos, torch.zeros(6, dtype=torch.long), 1, num_points=3)
    assert picks.tolist() == [0, 3, 1]
    other = torch.tensor([[0.0, 1.0], [4.0, 0.0], [1.0, 3.0], [2.0, 1.0]])  # box centre (2, 1.5): point 1 is farthest
    assert fps_from_centre(other, torch.zeros(4, dtype=torch.long), 1, num_points=3).tolist() == [
        1,
        2,
        0,
    ]  # then 0 and 3 tie (5): the lower


# ----------------------------------------------------------------------------------------------
# kernel taps
# ----------------------------------------------------------------------------------------------
def test_tap_influence_hand_built():
    u = torch.tensor([[0.25, 1.0], [-0.5, 2.5], [2.0, 2.0]], dtype=torch.float64)
    pair, tap, weight = tap_influence(u, (3, 4))
    got = sorted(zip(pair.tolist(), tap.tolist(), weight.tolist()))
    # row-major taps: t = t_row * 4 + t_col; taps outside the kernel and zero influence dropped
    assert got == [(0, 1, 0.75), (0, 5, 0.25), (1, 2, 0.25), (1, 3, 0.25), (2, 10, 1.0)]


def test_tap_coverage_hand_built():
    """Lattice 3x3 (pitch 1, origin 0), 3x3 kernel: inside taps are those whose node rounds into the extent."""
    nodes = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"), -1).reshape(-1, 2)
    geo = _cloud(nodes.double(), pitch=1.0)
    anchors = PointGeometry(
        pos=torch.tensor([[0.0, 0.0], [1.0, 1.5]], dtype=torch.float64),
        batch=torch.zeros(2, dtype=torch.long),
        num_samples=1,
    )
    influence = torch.zeros(2, 9, dtype=torch.float64)
    # anchor 0: taps at nodes -1..1 per axis, inside: rows 1-2 x cols 1-2 = taps 4, 5, 7, 8;
    # tap 0 (outside) is ignored, tap 4 counts at most 1: (1 + 0.5 + 0.25) / 4
    influence[0, [0, 4, 5, 8]] = torch.tensor([1.0, 2.0, 0.5, 0.25], dtype=torch.float64)
    # anchor 1: column nodes 0.5, 1.5, 2.5 round half up to 1, 2, 3: kernel columns 0-1 inside
    # (taps 0, 1, 3, 4, 6, 7; half to even would keep all nine)
    influence[1] = 0.5
    influence[1, 0] = 0.0
    coverage = tap_coverage(influence, geo, anchors, (3, 3))
    torch.testing.assert_close(coverage, torch.tensor([1.75 / 4, 2.5 / 6], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_partial_convolution_on_a_lattice_with_holes_hand_built(device):
    """4x4 image, 3x3 stride 2 padding 1: each anchor's output is the zero-filled convolution
    scaled by (window pixels inside the image) / (of those, present), in point and lattice mode."""
    torch.manual_seed(0)
    image = torch.rand(1, 2, 4, 4, dtype=torch.float64, device=device)
    mask = torch.ones(4, 4, dtype=torch.bool, device=device)
    mask[0, 0] = mask[1, 1] = mask[2, 3] = mask[3, 2] = mask[3, 3] = False
    x, geo = as_point_batch(pc.image_to_points(image, mask=mask))
    reducer = PointReducer(2, 3, 3, 2, 1).double().to(device)
    zero_filled = F.conv2d(image * mask, reducer.proj.weight, stride=2, padding=1)[0].permute(1, 2, 0).reshape(4, 3)
    # windows rows/cols {-1, 0, 1} or {1, 2, 3}: inside 4, 6, 6, 9 pixels; present 2, 5, 5, 5
    scale = torch.tensor([4 / 2, 6 / 5, 6 / 5, 9 / 5], dtype=torch.float64, device=device)
    expected = zero_filled * scale[:, None] + reducer.proj.bias
    for mode, g in (("point", point_lattice(geo)), ("lattice", geo)):
        out, new = reducer(x, g, mode)
        assert new.pixel.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("anchors", ["grid", "fps", "random"])
@pytest.mark.parametrize("pos_dim", [2, 3])
def test_point_reducer_matches_brute_force_off_lattice(pos_dim, anchors):
    g = torch.Generator().manual_seed(pos_dim)
    counts = torch.tensor([23, 15])
    pos = torch.rand(38, pos_dim, generator=g, dtype=torch.float64) * 3
    batch = torch.arange(2).repeat_interleave(counts)
    geo = _cloud(pos, batch, pitch=0.7)
    x = torch.randn(38, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    for kernel, stride, padding in (((3,) * pos_dim, 2, 1), ((2,) * pos_dim, 2, 0)):
        reducer = PointReducer(3, 4, kernel, stride, padding, pos_dim=pos_dim, anchors=anchors).double()
        out, new = reducer(x, geo, "point", generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out, _brute_force(reducer, x, geo, new), rtol=0, atol=1e-12)
        assert (
            new.counts.tolist()
            == grid_subsample(geo, kernel, (stride,) * pos_dim, (padding,) * pos_dim).counts.tolist()
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,kernel,stride,padding", [((9, 7), 3, 2, 1), ((16, 12), 4, 4, 0), ((5, 8), 1, 1, 0)])
def test_point_reducer_on_a_full_lattice_is_the_convolution(device, size, kernel, stride, padding):
    torch.manual_seed(0)
    image = torch.rand(2, 3, *size, dtype=torch.float64, device=device)
    pts = pc.image_to_points(image)
    x, geo = as_point_batch(pts)
    reducer = PointReducer(3, 5, kernel, stride, padding).double().to(device)
    out, new = reducer(x, point_lattice(geo), "point")
    conv = F.conv2d(image, reducer.proj.weight, reducer.proj.bias, stride=stride, padding=padding)
    torch.testing.assert_close(out, conv.permute(0, 2, 3, 1).reshape(-1, 5), rtol=0, atol=1e-12)
    lattice, _ = reducer(x, geo, "lattice")
    torch.testing.assert_close(out, lattice, rtol=0, atol=1e-12)


def test_point_reducer_on_a_voxelised_cloud_is_a_conv3d():
    """A full 5x6x4 voxel lattice (pitch 0.3): the 3-D kernel in Conv3d layout, axes in position order."""
    torch.manual_seed(0)
    grid = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(6), torch.arange(4), indexing="ij"), -1)
    pos = grid.reshape(-1, 3).double() * 0.3 + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    volume = torch.rand(1, 2, 5, 6, 4, dtype=torch.float64)
    x = volume[0].permute(1, 2, 3, 0).reshape(-1, 2)
    perm = torch.randperm(pos.size(0))  # any point order
    reducer = PointReducer(2, 3, 3, 2, 1, pos_dim=3).double()
    assert reducer.proj.weight.shape == (3, 2, 3, 3, 3)
    out, new = reducer(x[perm], _cloud(pos[perm], pitch=0.3), "point")
    conv = F.conv3d(volume, reducer.proj.weight, reducer.proj.bias, stride=2, padding=1)
    torch.testing.assert_close(out, conv[0].permute(1, 2, 3, 0).reshape(-1, 3), rtol=0, atol=1e-12)
    assert new.grid_size.tolist() == [[3, 3, 2]]


def test_a_swapped_kernel_tap_changes_the_output():
    """The tap order is the weight's: exchanging two taps of the weight changes the point-mode result."""
    torch.manual_seed(0)
    x, geo = as_point_batch(pc.image_to_points(torch.rand(1, 3, 6, 6, dtype=torch.float64)))
    geo = point_lattice(geo)
    reducer = PointReducer(3, 2, 3, 2, 1).double()
    out, _ = reducer(x, geo, "point")
    with torch.no_grad():
        reducer.proj.weight[:, :, [0, 1]] = reducer.proj.weight[:, :, [1, 0]]
    swapped, _ = reducer(x, geo, "point")
    assert (out - swapped).abs().max() > 1e-3


def test_lattice_anchors_are_the_occupied_cells():
    """3x3 stride 2: an anchor exists when its cell (2x2 pixels from 2 * anchor) holds a point,
    even if its window reaches other points; the same in point and lattice mode."""
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1, 1] = mask[4, 3] = (
        True  # cells (0, 0) and (2, 1); pixel (1, 1) is also in the windows of (0, 1), (1, 0), (1, 1)
    )
    pts = pc.image_to_points(torch.rand(1, 6, 6, dtype=torch.float64), mask=mask)
    x, geo = as_point_batch(pts)
    reducer = PointReducer(1, 2, 3, 2, 1).double()
    out_l, lat = reducer(x, geo, "lattice")
    out_p, pt = reducer(x, point_lattice(geo), "point")
    assert lat.pixel.tolist() == pt.pixel.tolist() == [[0, 0], [2, 1]]
    torch.testing.assert_close(out_p, out_l, rtol=0, atol=1e-12)


def test_reducer_bad_input():
    with pytest.raises(ValueError, match="pos_dim"):
        PointReducer(3, 4, 3, 2, 1, pos_dim=1)
    with pytest.raises(ValueError, match="anchors"):
        PointReducer(3, 4, 3, 2, 1, anchors="voxel")
    reducer = PointReducer(3, 4, 3, 2, 1)
    geo = PointGeometry(pos=torch.rand(5, 2), batch=torch.zeros(5, dtype=torch.long), num_samples=1)
    with pytest.raises(ValueError, match="lattice"):
        reducer(torch.rand(5, 3), geo, "point")
    with pytest.raises(ValueError, match="mode"):
        reducer(torch.rand(5, 3), point_lattice(geo), "knn")
    with pytest.raises(ValueError, match="coordinates"):
        reducer(torch.rand(5, 3), _cloud(torch.rand(5, 3)), "point")
