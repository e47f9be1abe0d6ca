"""Farthest point sampling on ragged batches.

All samples run together: the batch is padded to ``[B, n_max, P]`` and the loop
runs over FPS iterations only (as many as the largest per-sample pick count);
each iteration is a handful of tensor operations on ``[B, n_max]``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_batch, check_positions
from .backend import torch_cluster_module
from .batch import batch_counts, to_dense_batch
from .sampling import per_sample_count

__all__ = ["fps"]


def fps(
    pos: Tensor,
    batch: Optional[Tensor] = None,
    ratio: Optional[float] = 0.5,
    random_start: bool = True,
    num_points: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Farthest point sampling, sample by sample.

    Starting from one point, repeatedly pick the point whose squared Euclidean
    distance to the already picked points is largest (ties: the lowest index).
    Distances are ``sum_p (pos[i, p] - pos[j, p]) ** 2`` in the dtype of ``pos``
    (float64 input gives exact float64 FPS).

    Args:
        pos: ``[N, P]`` float positions.
        batch: ``[N]`` sorted sample ids (``None``: one sample).
        ratio: pick ``ceil(ratio * n_b)`` points in a sample of ``n_b`` points, ``0 < ratio <= 1``.
        random_start: start at a uniformly random point of each sample; otherwise at
            each sample's first point.
        num_points: pick exactly this many points per sample instead of using ``ratio``.
        generator: ``torch.Generator`` (on the device of ``pos``) for the random starts.

    Returns:
        ``[M]`` LongTensor of global point indices, grouped by sample in sample order,
        each sample's picks in selection order.

    When torch-cluster is installed and the backend is ``"auto"``, its kernel is used
    for calls it supports (``ratio`` given, no ``generator``, no empty sample, same
    per-sample counts); it may resolve exact distance ties differently.
    """
    pos = check_positions(pos, "pos")
    batch, num_samples = check_batch(batch, pos.size(0), pos.device, "batch")
    if not isinstance(random_start, bool):
        raise TypeError(f"random_start must be a bool, got {type(random_start).__name__}")
    counts = batch_counts(batch, num_samples)
    picks = per_sample_count(counts, ratio, num_points)
    pos = pos.detach()

    cluster = torch_cluster_module()
    if cluster is not None and generator is None and num_points is None and _cluster_counts_match(counts, picks, ratio, pos):
        return cluster.fps(pos, batch, ratio, random_start)
    return _fps_dense(pos, batch, counts, picks, random_start, generator)


def _cluster_counts_match(counts: Tensor, picks: Tensor, ratio: float, pos: Tensor) -> bool:
    """torch-cluster computes ``ceil(n_b * ratio)`` in the dtype of ``pos``; use it only when that agrees."""
    if pos.dtype not in (torch.float32, torch.float64) or not bool((counts > 0).all()):
        return False
    theirs = torch.ceil(counts.to(pos.dtype) * torch.tensor(ratio, dtype=pos.dtype, device=pos.device)).long()
    return bool(torch.equal(theirs, picks))


@torch.no_grad()
def _fps_dense(
    pos: Tensor, batch: Tensor, counts: Tensor, picks: Tensor, random_start: bool, generator: Optional[torch.Generator]
) -> Tensor:
    """Pure-PyTorch FPS over the padded batch; see :func:`fps`. Returns global indices ``[M]``."""
    device, dtype = pos.device, pos.dtype
    num_samples, num_coords = counts.numel(), pos.size(1)
    dense, mask = to_dense_batch(pos, batch)  # [B, n, P], [B, n]
    n = dense.size(1)
    coords = dense.permute(2, 0, 1).contiguous()  # [P, B, n], coordinate-major
    coords_flat = coords.view(num_coords, num_samples * n)  # [P, B*n]
    offsets = torch.arange(num_samples, device=device) * n  # [B] flat offset of each sample's slot 0

    if random_start:
        draw = torch.rand(num_samples, generator=generator, device=device, dtype=torch.float64)
        current = (draw * counts).long().clamp_(max=(counts - 1).clamp(min=0))  # [B] slot of the first pick
    else:
        current = torch.zeros(num_samples, dtype=torch.long, device=device)

    # squared distance to the nearest picked point; padded slots hold -1 and never win the argmax
    mindist = torch.full((num_samples, n), float("inf"), dtype=dtype, device=device)
    mindist.masked_fill_(~mask, -1.0)
    iterations = int(picks.max())
    chosen = torch.empty(iterations, num_samples, dtype=torch.long, device=device)  # flat slot of each pick
    diff = torch.empty(num_coords, num_samples, n, dtype=dtype, device=device)
    dist = diff[0] if num_coords == 1 else torch.empty(num_samples, n, dtype=dtype, device=device)
    for it in range(iterations):
        torch.add(current, offsets, out=chosen[it])
        if it + 1 == iterations:
            break
        centre = torch.index_select(coords_flat, 1, chosen[it])  # [P, B]
        torch.sub(coords, centre.unsqueeze(-1), out=diff)
        diff.square_()
        if num_coords > 1:  # sum over coordinates in order, as a brute-force loop does
            torch.add(diff[0], diff[1], out=dist)
            for p in range(2, num_coords):
                dist.add_(diff[p])
        torch.minimum(mindist, dist, out=mindist)
        current = mindist.argmax(dim=1)  # ties: lowest slot

    # flat slot -> global index; a sample keeps its first picks[b] iterations (later ones are not recorded)
    first_index = torch.cumsum(counts, 0) - counts
    global_index = chosen.t() - offsets[:, None] + first_index[:, None]  # [B, iterations]
    keep = torch.arange(iterations, device=device)[None, :] < picks[:, None]
    return global_index[keep]
