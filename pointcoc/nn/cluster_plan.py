"""Cluster plans: which points cluster together and where the centres come from.

A plan is everything about a context-cluster layer that depends on positions
only (regions, centre proposals, the members averaged into each centre). All
blocks of a stage share their points' positions, so a model builds the plan
once per stage and every block reuses it.

Terminology (SPEC section 2): a *group* is one (sample, region) pair; each
group has up to ``c`` centres; centre ``j`` of group ``g`` has the global id
``g * c + j``. A centre's features are the mean of its *member* points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._checks import check_batch, check_k, check_positions, check_tensor
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

PROPOSALS = ("grid", "fps", "random", "index", "mean")

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


def region_of_pixels(pixel: Tensor, size: Tensor, folds: Tuple[int, int]) -> Tuple[Tensor, Tensor, Tensor]:
    """Tile each image into ``folds`` regions by pixel position.

    Region row ``r`` covers rows ``[ceil(r*H/f), ceil((r+1)*H/f))`` (the reference's
    equal tiles when ``f`` divides ``H``; a partition by position otherwise).

    Args:
        pixel: ``[N, 2]`` int (row, col) of every point.
        size: ``[N, 2]`` int (H, W) of every point's image.
        folds: regions along rows and columns.

    Returns:
        ``region [N]`` (row-major region id), ``coord [N, 2]`` (row, col) inside the
        region, ``extent [N, 2]`` (h, w) of the point's region.
    """
    f = torch.tensor(folds, device=pixel.device)
    tile = pixel * f // size
    start = (tile * size + f - 1) // f
    end = ((tile + 1) * size + f - 1) // f
    region = tile[:, 0] * folds[1] + tile[:, 1]
    return region, pixel - start, end - start


def region_of_positions(pos: Tensor, batch: Tensor, num_samples: int, folds: Sequence[int]) -> Tensor:
    """Tile each sample's bounding box into equal regions.

    Args:
        pos: ``[N, P]`` positions.
        batch: ``[N]`` sorted sample ids.
        num_samples: ``B``.
        folds: regions along each of the first ``len(folds)`` coordinates.

    Returns:
        ``region [N]`` in ``[0, prod(folds))`` (mixed radix, first axis slowest).
    """
    d = len(folds)
    p = pos[:, :d]
    lo = p.new_full((num_samples, d), float("inf")).index_reduce_(0, batch, p, "amin")
    hi = p.new_full((num_samples, d), float("-inf")).index_reduce_(0, batch, p, "amax")
    f = torch.tensor(folds, device=pos.device, dtype=pos.dtype)
    span = (hi - lo)[batch]
    rel = torch.where(span > 0, (p - lo[batch]) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(p))
    tile = torch.minimum((rel * f).floor().long(), (f.long() - 1).expand_as(rel))
    region = torch.zeros_like(batch)
    for axis in range(d):
        region = region * folds[axis] + tile[:, axis]
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
    """Build the cluster plan of a point set.

    Args:
        pos: ``[N, P]`` positions (needed by every proposal but ``mean``, and for regions
            of point sets without pixel coordinates).
        batch: ``[N]`` sorted sample ids (``None``: one sample).
        proposal: ``"grid"`` (adaptive-pooling bins of each region, needs ``pixel`` and
            ``grid_size``), ``"fps"``, ``"random"``, ``"index"`` (the points ``index``) or
            ``"mean"`` (one centre per group: the mean of all its points).
        centres: centres per region: ``(rows, cols)`` bins for ``grid``; for ``fps`` /
            ``random`` the count ``rows * cols`` (or the int given).
        regions: folds per axis (int, or one per axis); ``1``/``None`` = whole sample.
            With ``pixel`` the tiles are pixel tiles, otherwise bounding-box tiles.
        k: points averaged into each point-proposed centre (``None``: the group's points
            divided by its centre count, rounded up).
        pixel: ``[N, 2]`` int (row, col) of image points. grid_size: ``[B, 2]`` (H, W).
        index: ``[M]`` explicit proposal points (``proposal="index"``).
        generator: random source for ``random`` proposals and random FPS starts.
        random_start: FPS starts at a random point of each region (else at the region's point
            farthest from its bounding box's centre, ties to the lower index).
    """
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    if pos is None and pixel is None and batch is None:
        raise ValueError("pos is required to build a cluster plan")
    ref = pos if pos is not None else (pixel if pixel is not None else batch)
    n = ref.size(0)
    device = ref.device
    if pos is not None:
        check_positions(pos, "pos")
    batch, num_samples = check_batch(batch, n, device)

    folds: Tuple[int, ...]
    if regions is None or (isinstance(regions, int) and not isinstance(regions, bool) and regions == 1):
        folds = (1,)
    elif isinstance(regions, int) and not isinstance(regions, bool):
        check_k(regions, "regions")
        if pixel is None and pos is None:
            raise ValueError("pos is required for regions of points without pixel coordinates")
        folds = (regions, regions) if pixel is not None else (regions,) * min(2, pos.size(1))
    else:
        folds = tuple(check_k(int(r), "regions") for r in regions)
    use_pixels = pixel is not None and grid_size is not None

    if proposal == "grid" and not use_pixels:
        raise ValueError("proposal='grid' needs pixel [N, 2] and grid_size [B, 2] (points from pc.image_to_points)")

    coord = extent = None
    if all(f == 1 for f in folds):
        region, num_regions = torch.zeros_like(batch), 1
        if use_pixels:
            coord, extent = pixel, grid_size[batch]
    elif use_pixels:
        if len(folds) != 2:
            raise ValueError(f"regions of image points need 2 folds (rows, cols), got {folds}")
        region, coord, extent = region_of_pixels(pixel, grid_size[batch], (folds[0], folds[1]))
        num_regions = folds[0] * folds[1]
    else:
        if pos is None:
            raise ValueError("pos is required for regions of points without pixel coordinates")
        if len(folds) > pos.size(1):
            raise ValueError(f"regions has {len(folds)} folds but pos has only {pos.size(1)} coordinates")
        region = region_of_positions(pos, batch, num_samples, folds)
        num_regions = 1
        for f in folds:
            num_regions *= f
    group = batch * num_regions + region
    num_groups = num_samples * num_regions
    dense_index, L = _dense_layout(group, num_groups)

    if proposal == "mean":
        c = 1
        member_centre, member_point, centre_valid = group, None, None
    elif proposal == "grid":
        from ..ops import grid_proposal

        bins = _pair(centres, "centres")
        c = bins[0] * bins[1]
        point, local = grid_proposal(coord, extent, bins)
        member_centre, member_point = group[point] * c + local, point
        # a bin without points (image points with holes) proposes no centre
        occupied = torch.bincount(member_centre, minlength=num_groups * c) > 0
        centre_valid = None if bool(occupied.all()) else occupied.view(num_groups, c)
    else:
        if pos is None:
            raise ValueError(f"pos is required for proposal={proposal!r}")
        if proposal == "index":
            index = check_tensor(index, "index", ndim=1)
            if index.is_floating_point():
                raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
                raise ValueError(f"index must hold point indices in [0, {n})")
            proposals = index[torch.argsort(group[index], stable=True)]
            c = int(batch_counts(group[proposals], num_groups).max())
        else:
            rows, cols = _pair(centres, "centres")
            c = centres if isinstance(centres, int) else rows * cols
            check_k(c, "centres")
            order = torch.argsort(group, stable=True)
            sgroup = group[order]
            counts = batch_counts(sgroup, num_groups)
            if proposal == "fps":
                picked = _fps_capped(pos[order], sgroup, counts, c, random_start, generator)
            else:
                picked = _random_capped(sgroup, counts, c, generator)
            proposals = order[picked]
        member_centre, member_point, centre_valid = _proposal_members(pos, group, num_groups, proposals, k, c)
        if bool(centre_valid.all()):
            centre_valid = None

    centre_count = torch.bincount(member_centre, minlength=num_groups * c)
    return ClusterPlan(
        group=group,
        num_groups=num_groups,
        num_centres=c,
        member_centre=member_centre,
        member_point=member_point,
        centre_count=centre_count,
        centre_valid=centre_valid,
        dense_index=dense_index,
        max_group_size=L,
    )


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
            big_idx[fps_from_centre(pos[big_idx], group[big_idx], counts.numel(), num_points=c,
                                    random_start=random_start, generator=generator)]
        )
    idx = torch.cat(picked)
    return idx[torch.argsort(group[idx], stable=True)]


def _random_capped(group: Tensor, counts: Tensor, c: int, generator) -> Tensor:
    """``min(c, n_g)`` random points of every group (sorted ``group``)."""
    idx = random_sample(group, ratio=1.0, generator=generator)
    g = group[idx]
    rank = torch.arange(idx.numel(), device=idx.device) - batch_ptr(batch_counts(g, counts.numel()))[g]
    return idx[rank < c]
