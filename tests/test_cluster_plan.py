"""Point-mode cluster plans, hand-built: regions of the lattice, FPS centres, memberships, automatic k."""

from __future__ import annotations

import pytest
import torch

from pointcoc.nn.cluster_plan import make_plan, region_of_pixels
from pointcoc.nn.geometry import PointGeometry, point_lattice


def _lattice(rows_cols, batch=None):
    pos = torch.tensor(rows_cols, dtype=torch.float64)
    batch = torch.zeros(len(rows_cols), dtype=torch.long) if batch is None else batch
    return point_lattice(PointGeometry(pos=pos, batch=batch, num_samples=int(batch.max()) + 1), pitch=1.0)


def _memberships(plan):
    point = plan.member_point if plan.member_point is not None else torch.arange(plan.num_points)
    return sorted(zip(plan.member_centre.tolist(), point.tolist()))


def test_regions_tile_the_lattice_with_ceil_bounds():
    """Extent 5 x 4 cut 2 x 2: rows [0, 3) and [3, 5), columns [0, 2) and [2, 4)."""
    pixel = torch.tensor([[0, 0], [2, 0], [3, 0], [2, 1], [2, 2], [3, 3], [4, 1]])
    region, coord, extent = region_of_pixels(pixel, torch.tensor([[5, 4]]).expand(7, 2), (2, 2))
    assert region.tolist() == [0, 0, 2, 0, 1, 3, 2]
    assert coord.tolist() == [[0, 0], [2, 0], [0, 0], [2, 1], [2, 0], [0, 1], [1, 1]]
    assert extent.tolist() == [[3, 2], [3, 2], [2, 2], [3, 2], [3, 2], [2, 2], [2, 2]]


def test_point_mode_plan_hand_built():
    pts = [(0, 0), (0, 3), (1, 1), (2, 2), (2, 0), (3, 1), (4, 3), (4, 0), (3, 3), (0, 2)]
    geo = _lattice(pts)
    assert geo.grid_size.tolist() == [[5, 4]]
    plan = make_plan(geo.pos, geo.batch, proposal="fps", centres=2, regions=2, pixel=geo.pixel, grid_size=geo.grid_size)
    assert plan.group.tolist() == [0, 1, 0, 1, 0, 2, 3, 2, 3, 1]
    assert plan.num_groups == 4 and plan.num_centres == 2 and plan.centre_valid is None
    # FPS from the point farthest from each region's box centre (ties: lower index); k = ceil(n / c)
    expected = [(0, 0), (0, 2), (1, 2), (1, 4), (2, 1), (2, 9), (3, 3), (3, 9), (4, 5), (5, 7), (6, 6), (7, 8)]
    assert _memberships(plan) == expected
    assert plan.centre_count.tolist() == [2, 2, 2, 2, 1, 1, 1, 1]


def test_automatic_k_is_the_group_share_rounded_up():
    geo = _lattice([(float(i), 0.0) for i in range(10)])
    plan = make_plan(
        geo.pos, geo.batch, proposal="fps", centres=3, regions=None, pixel=geo.pixel, grid_size=geo.grid_size
    )
    # centres at points 0, 9, then 4 (4 and 5 tie at distance 4); k = ceil(10 / 3) = 4, ties by index
    assert _memberships(plan) == sorted(
        [(0, p) for p in (0, 1, 2, 3)] + [(1, p) for p in (9, 8, 7, 6)] + [(2, p) for p in (4, 3, 5, 2)]
    )
    fixed = make_plan(
        geo.pos, geo.batch, proposal="fps", centres=3, regions=None, k=2, pixel=geo.pixel, grid_size=geo.grid_size
    )
    assert fixed.centre_count.tolist() == [2, 2, 2]


def test_small_regions_propose_every_point_and_absent_centres_are_invalid():
    geo = _lattice([(0.0, 0.0), (0.0, 1.0), (5.0, 5.0)], torch.tensor([0, 0, 1]))
    plan = make_plan(
        geo.pos, geo.batch, proposal="fps", centres=2, regions=None, pixel=geo.pixel, grid_size=geo.grid_size
    )
    assert plan.centre_valid.tolist() == [[True, True], [True, False]]
    assert _memberships(plan) == [(0, 0), (1, 1), (2, 2)]


def test_fps_start_does_not_depend_on_the_point_order():
    geo = _lattice([(0.0, 1.0), (4.0, 0.0), (1.0, 3.0), (2.0, 1.0)])
    plan = make_plan(geo.pos, geo.batch, proposal="fps", centres=1, regions=None, k=1)
    assert _memberships(plan) == [(0, 1)]  # point 1 is farthest from the box centre (2, 1.5)
    perm = torch.tensor([2, 3, 1, 0])
    moved = make_plan(geo.pos[perm], geo.batch, proposal="fps", centres=1, regions=None, k=1)
    assert _memberships(moved) == [(0, 2)]  # the same point, now at index 2


def test_grid_proposal_needs_a_lattice():
    with pytest.raises(ValueError, match="grid"):
        make_plan(torch.rand(5, 2), None, proposal="grid")
