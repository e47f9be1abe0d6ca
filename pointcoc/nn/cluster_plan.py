"""Cluster plans: which points cluster together and where the centres come from.

A plan is everything about a context-cluster layer that depends on positions
only (regions, centre proposals, the members averaged into each centre). All
blocks of a stage share their points' positions, so a model builds the plan
once per stage and every block reuses it.

Terminology (docs/design.md §6): a *group* is one (sample, region) pair; each
group has up to ``c`` centres; centre ``j`` of group ``g`` has the global id
``g * c + j``. A centre's features are the mean of its *member* points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._checks import check_batch, check_k, check_positions, check_tensor
from .._compile import eager_under_compile
from ..ops.batch import batch_counts, batch_ptr
from ..ops.sampling import random_sample
from .anchors import fps_from_centre

__all__ = [
    "ClusterPlan",
    "PROPOSALS",
    "region_of_pixels",
    "region_of_positions",
    "make_plan",
]

IntPair = Union[int, Tuple[int, int]]


@dataclass
class ClusterPlan:
    """Segments and centre memberships of one context-cluster layer.

    Attributes:
        group: ``[N]`` group (sample x region) of every point, in ``[0, num_groups)``.
        num_groups: number of groups ``G`` (empty groups allowed).
        num_centres: centres per group ``c`` (the largest count; see ``centre_valid``).
        member_centre: ``[E]`` global centre id of each membership.
        member_point: ``[E]`` point of each membership; ``None`` means ``arange(N)``
            (every point is a member of exactly the centre ``member_centre[i]``).
        centre_count: ``[G * c]`` members per centre (0 for absent centres).
        centre_valid: ``[G, c]`` bool, False for absent centres; ``None`` if all exist.
        dense_index: ``[N]`` position of each point in a dense ``[G, L]`` layout
            (``L = max_group_size``); ``None`` when the points already are that layout.
        max_group_size: ``L``.
    """

    group: Tensor
    num_groups: int
    num_centres: int
    member_centre: Tensor
    member_point: Optional[Tensor]
    centre_count: Tensor
    centre_valid: Optional[Tensor]
    dense_index: Optional[Tensor]
    max_group_size: int

    @property
    def num_points(self) -> int:
        return self.group.numel()


def _pair(v: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    a, b = (check_k(int(t) if not isinstance(t, bool) else t, name) for t in v)
    return a, b


def region_of_pixels(pixel: Tensor, size: Tensor, regions: Tuple[int, int]) -> Tuple[Tensor, Tensor, Tensor]:
    """Tile each image into ``regions`` (rows, cols) by pixel position.

    Region row ``r`` covers rows ``[ceil(r*H/f), ceil((r+1)*H/f))`` (the reference's
    equal tiles when ``f`` divides ``H``; a partition by position otherwise).

    Args:
        pixel: ``[N, 2]`` int (row, col) of every point.
        size: ``[N, 2]`` int (H, W) of every point's image.
        regions: regions along rows and columns.

    Returns:
        ``region [N]`` (row-major region id), ``coord [N, 2]`` (row, col) inside the
        region, ``extent [N, 2]`` (h, w) of the point's region.
    """
    f = torch.tensor(regions, device=pixel.device)
    tile = pixel * f // size
    start = (tile * size + f - 1) // f
    end = ((tile + 1) * size + f - 1) // f
    region = tile[:, 0] * regions[1] + tile[:, 1]
    return region, pixel - start, end - start


def region_of_positions(pos: Tensor, batch: Tensor, num_samples: int, regions: Sequence[int]) -> Tensor:
    """Tile each sample's bounding box into equal regions.

    Args:
        pos: ``[N, P]`` positions.
        batch: ``[N]`` sorted sample ids.
        num_samples: ``B``.
        regions: regions along each of the first ``len(regions)`` coordinates.

    Returns:
        ``region [N]`` in ``[0, prod(regions))`` (mixed radix, first axis slowest).
    """
    d = len(regions)
    p = pos[:, :d]
    rows = batch[:, None].expand(-1, d)
    lo = p.new_full((num_samples, d), float("inf")).scatter_reduce(0, rows, p, "amin", include_self=False)
    hi = p.new_full((num_samples, d), float("-inf")).scatter_reduce(0, rows, p, "amax", include_self=False)
    f = torch.tensor(regions, device=pos.device, dtype=pos.dtype)
    span = (hi - lo)[batch]
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    rel = torch.where(span > 0, (p - lo[batch]) / safe_span, torch.zeros_like(p))
    tile = torch.minimum((rel * f).floor().long(), (f.long() - 1).expand_as(rel))
    region = torch.zeros_like(batch)
    for axis in range(d):
        region = region * regions[axis] + tile[:, axis]
    return region


def _dense_layout(group: Tensor, num_groups: int) -> Tuple[Optional[Tensor], int]:
    """Slot of each point in a dense ``[G, L]`` layout (``None`` if already dense)."""
    counts = batch_counts(group, num_groups)
    L = int(counts.max()) if counts.numel() else 0
    order = torch.argsort(group, stable=True)
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - batch_ptr(counts)[group[order]]
    dense_index = group * L + rank
    if dense_index.numel() == num_groups * L and bool(
        (dense_index == torch.arange(dense_index.numel(), device=group.device)).all()
    ):
        return None, L
    return dense_index, L


def _proposal_members(
    pos: Tensor, group: Tensor, num_groups: int, proposals: Tensor, k: Optional[int], num_centres: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """Members of point-proposed centres: the k nearest points (same group) of each proposal.

    ``proposals``: ``[M]`` point indices sorted by group. Returns ``member_centre``,
    ``member_point`` and ``centre_valid [G, c]``.
    """
    from ..ops import knn_padded  # late import: ops and nn are siblings

    device = pos.device
    counts = batch_counts(group, num_groups)
    pgroup = group[proposals]
    pcount = batch_counts(pgroup, num_groups)
    local = torch.arange(proposals.numel(), device=device) - batch_ptr(pcount)[pgroup]
    centre = pgroup * num_centres + local
    centre_valid = torch.zeros(num_groups * num_centres, dtype=torch.bool, device=device)
    centre_valid[centre] = True
    # k nearest points of every proposal inside its group; k=None: about the group's share per centre
    if k is None:
        k_per = torch.div(counts[pgroup] + pcount[pgroup] - 1, pcount[pgroup], rounding_mode="floor")
    else:
        k_per = torch.minimum(torch.full_like(pgroup, k), counts[pgroup])
    k_max = int(k_per.max())
    order = torch.argsort(group, stable=True)
    sorted_pos = pos[order]
    nbr, _ = knn_padded(sorted_pos, pos[proposals], k_max, group[order], pgroup)
    keep = (nbr >= 0) & (torch.arange(k_max, device=device)[None, :] < k_per[:, None])
    member_point = order[nbr[keep]]
    member_centre = centre[:, None].expand(-1, k_max)[keep]
    return member_centre, member_point, centre_valid.view(num_groups, num_centres)


@dataclass
class _Request:
    """What a proposal builder reads: the points, their groups and the plan's arguments."""

    pos: Optional[Tensor]
    group: Tensor
    num_groups: int
    coord: Optional[Tensor]  # (row, col) inside the region, image points only
    extent: Optional[Tensor]  # (h, w) of the point's region, image points only
    centres: IntPair
    k: Optional[int]
    index: Optional[Tensor]
    generator: Optional[torch.Generator]
    random_start: bool


# a builder returns (centres per group c, member_centre, member_point, centre_valid)
_Proposal = Tuple[int, Tensor, Optional[Tensor], Optional[Tensor]]


# Eager under torch.compile: plan building is position-only integer work (region ids, FPS,
# bincounts) with data-dependent loops and sizes read on the host, which dynamo would unroll
# or recompile on; nothing in it is differentiated or fused. The float maths stays compiled.
@eager_under_compile
def make_plan(
    pos: Optional[Tensor] = None,
    batch: Optional[Tensor] = None,
    *,
    proposal: str = "grid",
    centres: IntPair = 2,
    regions: Optional[Union[int, Sequence[int]]] = 1,
    k: Optional[int] = None,
    pixel: Optional[Tensor] = None,
    grid_size: Optional[Tensor] = None,
    index: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    random_start: bool = False,
) -> ClusterPlan:
    """Build the cluster plan of a point set: first the regions, then the centre proposals.

    Args:
        pos: ``[N, P]`` positions (for every proposal but ``mean``, and regions without ``pixel``).
        batch: ``[N]`` sorted sample ids (``None``: one sample).
        proposal: ``"grid"`` (adaptive-pooling bins of each region, needs ``pixel`` and
            ``grid_size``), ``"fps"``, ``"random"``, ``"index"`` (the points ``index``) or
            ``"mean"`` (one centre per group: the mean of all its points).
        centres: centres per region: ``(rows, cols)`` bins for ``grid``; for ``fps`` /
            ``random`` the count ``rows * cols`` (or the int given).
        regions: regions per axis (int, or one per axis); ``1``/``None`` = whole sample.
            With ``pixel`` the tiles are pixel tiles, otherwise bounding-box tiles.
        k: points averaged into each point-proposed centre (``None``: the group's points
            divided by its centre count, rounded up).
        pixel, grid_size: ``[N, 2]`` int (row, col) of image points; ``[B, 2]`` (H, W) of images.
        index: ``[M]`` explicit proposal points (``proposal="index"``).
        generator: random source for ``random`` proposals and random FPS starts.
        random_start: FPS starts at a random point of each region (else at the region's point
            farthest from its bounding box's centre, ties to the lower index).
    """
    if proposal not in _PROPOSAL_BUILDERS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    if pos is None and pixel is None and batch is None:
        raise ValueError("pos is required to build a cluster plan")
    if pos is not None:
        check_positions(pos, "pos")
    ref = pos if pos is not None else (pixel if pixel is not None else batch)  # any [N, ...] tensor
    batch, num_samples = check_batch(batch, ref.size(0), ref.device)
    per_axis = _regions_per_axis(regions, pos, pixel)
    if proposal == "grid" and (pixel is None or grid_size is None):
        raise ValueError("proposal='grid' needs pixel [N, 2] and grid_size [B, 2] (points from pc.image_to_points)")
    group, num_groups, coord, extent = _region_step(pos, batch, num_samples, per_axis, pixel, grid_size)
    dense_index, L = _dense_layout(group, num_groups)
    request = _Request(pos, group, num_groups, coord, extent, centres, k, index, generator, random_start)
    c, member_centre, member_point, centre_valid = _PROPOSAL_BUILDERS[proposal](request)
    return ClusterPlan(
        group=group,
        num_groups=num_groups,
        num_centres=c,
        member_centre=member_centre,
        member_point=member_point,
        centre_count=torch.bincount(member_centre, minlength=num_groups * c),
        centre_valid=centre_valid,
        dense_index=dense_index,
        max_group_size=L,
    )


def _regions_per_axis(
    regions: Optional[Union[int, Sequence[int]]], pos: Optional[Tensor], pixel: Optional[Tensor]
) -> Tuple[int, ...]:
    """``regions`` as one count per axis; ``(1,)`` for the whole sample."""
    if regions is None or (isinstance(regions, int) and not isinstance(regions, bool) and regions == 1):
        return (1,)
    if isinstance(regions, int) and not isinstance(regions, bool):
        check_k(regions, "regions")
        if pixel is None and pos is None:
            raise ValueError("pos is required for regions of points without pixel coordinates")
        return (regions, regions) if pixel is not None else (regions,) * min(2, pos.size(1))
    return tuple(check_k(int(r), "regions") for r in regions)


def _region_step(
    pos: Optional[Tensor],
    batch: Tensor,
    num_samples: int,
    per_axis: Tuple[int, ...],
    pixel: Optional[Tensor],
    grid_size: Optional[Tensor],
) -> Tuple[Tensor, int, Optional[Tensor], Optional[Tensor]]:
    """Group (sample x region) of every point: ``group [N]``, ``G``, and for image points the
    ``coord`` / ``extent`` inside the region (``None`` otherwise)."""
    use_pixels = pixel is not None and grid_size is not None
    coord = extent = None
    num_regions = math.prod(per_axis)
    if num_regions == 1:
        region = torch.zeros_like(batch)
        if use_pixels:
            coord, extent = pixel, grid_size[batch]
    elif use_pixels:
        if len(per_axis) != 2:
            raise ValueError(f"regions of image points need 2 counts (rows, cols), got {per_axis}")
        region, coord, extent = region_of_pixels(pixel, grid_size[batch], (per_axis[0], per_axis[1]))
    else:
        if pos is None:
            raise ValueError("pos is required for regions of points without pixel coordinates")
        if len(per_axis) > pos.size(1):
            raise ValueError(f"regions has {len(per_axis)} counts but pos has only {pos.size(1)} coordinates")
        region = region_of_positions(pos, batch, num_samples, per_axis)
    return batch * num_regions + region, num_samples * num_regions, coord, extent


def _mean_proposal(r: _Request) -> _Proposal:
    """One centre per group: the mean of all its points."""
    return 1, r.group, None, None


def _grid_proposal(r: _Request) -> _Proposal:
    """The adaptive-pooling bins of every region; a bin without points proposes no centre."""
    from ..ops import grid_proposal  # late import: ops and nn are siblings

    bins = _pair(r.centres, "centres")
    c = bins[0] * bins[1]
    point, local = grid_proposal(r.coord, r.extent, bins)
    member_centre = r.group[point] * c + local
    occupied = torch.bincount(member_centre, minlength=r.num_groups * c) > 0
    return c, member_centre, point, None if bool(occupied.all()) else occupied.view(r.num_groups, c)


def _index_proposal(r: _Request) -> _Proposal:
    """The given points ``index`` propose the centres."""
    pos = _require_pos(r, "index")
    index = check_tensor(r.index, "index", ndim=1)
    if index.is_floating_point():
        raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
    n = pos.size(0)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"index must hold point indices in [0, {n})")
    proposals = index[torch.argsort(r.group[index], stable=True)]
    c = int(batch_counts(r.group[proposals], r.num_groups).max())
    return _point_proposal(r, proposals, c)


def _fps_proposal(r: _Request) -> _Proposal:
    """Farthest point sampling inside every group."""
    pos = _require_pos(r, "fps")
    c = _centre_count(r.centres)
    order, sgroup, counts = _sorted_groups(r)
    picked = _fps_capped(pos[order], sgroup, counts, c, r.random_start, r.generator)
    return _point_proposal(r, order[picked], c)


def _random_proposal(r: _Request) -> _Proposal:
    """Random points of every group."""
    _require_pos(r, "random")
    c = _centre_count(r.centres)
    order, sgroup, counts = _sorted_groups(r)
    return _point_proposal(r, order[_random_capped(sgroup, counts, c, r.generator)], c)


_PROPOSAL_BUILDERS = {
    "grid": _grid_proposal,
    "fps": _fps_proposal,
    "random": _random_proposal,
    "index": _index_proposal,
    "mean": _mean_proposal,
}
PROPOSALS = tuple(_PROPOSAL_BUILDERS)


def _require_pos(r: _Request, proposal: str) -> Tensor:
    if r.pos is None:
        raise ValueError(f"pos is required for proposal={proposal!r}")
    return r.pos


def _centre_count(centres: IntPair) -> int:
    """Centres per group of a point proposal: the int given, or ``rows * cols``."""
    rows, cols = _pair(centres, "centres")
    return check_k(centres if isinstance(centres, int) else rows * cols, "centres")


def _sorted_groups(r: _Request) -> Tuple[Tensor, Tensor, Tensor]:
    """``order`` sorting the points by group, the sorted groups and the points per group."""
    order = torch.argsort(r.group, stable=True)
    sgroup = r.group[order]
    return order, sgroup, batch_counts(sgroup, r.num_groups)


def _point_proposal(r: _Request, proposals: Tensor, c: int) -> _Proposal:
    """Centres at the points ``proposals`` (sorted by group), each with its k nearest members."""
    member_centre, member_point, centre_valid = _proposal_members(r.pos, r.group, r.num_groups, proposals, r.k, c)
    return c, member_centre, member_point, None if bool(centre_valid.all()) else centre_valid


def _fps_capped(pos: Tensor, group: Tensor, counts: Tensor, c: int, random_start: bool, generator) -> Tensor:
    """FPS inside every group: ``min(c, n_g)`` points per group (``group`` sorted).

    Groups with at least ``c`` points run FPS together, each from its point farthest from
    its bounding box's centre (a random point with ``random_start``); smaller groups propose
    all their points. Returns indices sorted by group.
    """
    small = (counts < c)[group]
    big_idx = torch.nonzero(~small).flatten()
    picked = [torch.nonzero(small).flatten()]
    if big_idx.numel():
        picked.append(
            big_idx[
                fps_from_centre(
                    pos[big_idx],
                    group[big_idx],
                    counts.numel(),
                    num_points=c,
                    random_start=random_start,
                    generator=generator,
                )
            ]
        )
    idx = torch.cat(picked)
    return idx[torch.argsort(group[idx], stable=True)]


def _random_capped(group: Tensor, counts: Tensor, c: int, generator) -> Tensor:
    """``min(c, n_g)`` random points of every group (sorted ``group``)."""
    idx = random_sample(group, ratio=1.0, generator=generator)
    g = group[idx]
    rank = torch.arange(idx.numel(), device=idx.device) - batch_ptr(batch_counts(g, counts.numel()))[g]
    return idx[rank < c]
