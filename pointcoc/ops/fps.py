"""Farthest point sampling on ragged batches.

All samples run together: the batch is padded to ``[B, n_max, P]`` and the loop
runs over FPS iterations only (as many as the largest per-sample pick count);
each iteration is a handful of tensor operations on ``[B, n_max]``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .._checks import batch_or_ptr, check_batch, check_bool, check_k, check_positions
from .backend import torch_cluster_module
from .batch import batch_counts, to_dense_batch
from .exact import working_dtype
from .sampling import per_sample_count

__all__ = ["fps"]


def fps(
    pos: Tensor,
    batch: Optional[Tensor] = None,
    ratio: Union[float, Tensor, None] = 0.5,
    random_start: bool = True,
    num_points: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    *,
    batch_size: Optional[int] = None,
    ptr: Optional[Tensor] = None,
) -> Tensor:
    """Farthest point sampling, sample by sample.

    Starting from one point, repeatedly pick the point whose squared Euclidean distance to
    the already picked points is largest (ties: the lowest index). Exact: the picks are those
    of a float64 brute force on the input values as given, distances
    ``sum_p (float64(pos[i, p]) - float64(pos[j, p])) ** 2`` summed in coordinate order,
    whatever the dtype of ``pos`` (float16 / bfloat16 / float32 / float64) and the number of
    coordinates. Positions whose squared distances overflow float64 raise ``ValueError``.

    Args:
        pos: ``[N, P]`` float positions.
        batch: ``[N]`` sorted sample ids (``None``: one sample).
        ratio: pick ``ceil(ratio * n_b)`` points in a sample of ``n_b`` points, ``0 < ratio <= 1``;
            a float, or a tensor (0-d, or ``[B]`` with one ratio per sample, as torch-cluster).
        random_start: start at a uniformly random point of each sample; otherwise at
            each sample's first point.
        num_points: pick exactly this many points per sample instead of using ``ratio``.
        generator: ``torch.Generator`` (on the device of ``pos``) for the random starts.
        batch_size: number of samples (optional, as torch-cluster); must cover every sample id.
        ptr: CSR offsets ``[B + 1]`` instead of ``batch`` (as torch-cluster).

    Returns:
        ``[M]`` LongTensor of global point indices, grouped by sample in sample order,
        each sample's picks in selection order. The pick count is exactly
        ``ceil(ratio * n_b)`` computed in float64 (torch-cluster rounds ``ratio * n_b`` in the
        dtype of ``pos`` and may pick one more).

    When torch-cluster is installed and the backend is ``"auto"``, its CUDA kernel is
    used for calls it supports (CUDA tensors, float ``ratio`` given, no ``generator``, no empty
    sample, same per-sample counts); it computes in the dtype of ``pos`` and may resolve
    near-ties differently. Its CPU kernel is not used.
    """
    pos = check_positions(pos, "pos").detach()
    batch = batch_or_ptr(batch, ptr, pos.size(0), pos.device, "batch", "ptr")
    batch, num_samples = check_batch(batch, pos.size(0), pos.device, "batch")
    if batch_size is not None:
        if check_k(batch_size, "batch_size") < num_samples:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of samples ({num_samples})")
        num_samples = batch_size
    random_start = check_bool(random_start, "random_start")
    counts = batch_counts(batch, num_samples)
    picks = per_sample_count(counts, ratio, num_points)
    working_dtype(pos, pos, batch, batch, num_samples)  # raises where float64 overflows

    cluster = torch_cluster_module() if pos.is_cuda else None  # on CPU its kernel is slower than ours
    if cluster is not None and generator is None and num_points is None and not isinstance(ratio, Tensor):
        if _cluster_counts_match(counts, picks, ratio, pos):
            return cluster.fps(pos, batch, ratio, random_start)
    return _fps_dense(pos.double(), batch, counts, picks, _start_slots(counts, random_start, generator))


def _cluster_counts_match(counts: Tensor, picks: Tensor, ratio: float, pos: Tensor) -> bool:
    """Use torch-cluster only where its pick counts agree with ours and it handles the input.

    It computes ``ceil(n_b * ratio)`` in the dtype of ``pos`` on CUDA (float32 in its CPU
    kernel; float32 rounding can give one more pick, e.g. ``ratio=0.3``) and fails on empty
    samples.
    """
    if pos.dtype not in (torch.float32, torch.float64) or not bool((counts > 0).all()):
        return False
    count_dtype = pos.dtype if pos.is_cuda else torch.float32
    theirs = torch.ceil(counts.to(count_dtype) * torch.tensor(ratio, dtype=pos.dtype, device=pos.device)).long()
    return bool(torch.equal(theirs, picks))


def _start_slots(counts: Tensor, random_start: bool, generator: Optional[torch.Generator]) -> Tensor:
    """Slot of each sample's first pick: uniformly random, or 0."""
    if not random_start:
        return torch.zeros(counts.numel(), dtype=torch.long, device=counts.device)
    draw = torch.rand(counts.numel(), generator=generator, device=counts.device, dtype=torch.float64)
    return (draw * counts).long().clamp_(max=(counts - 1).clamp(min=0))


def _to_global(chosen: Tensor, counts: Tensor, picks: Tensor) -> Tensor:
    """Slots ``[iterations, B]`` -> global indices; a sample keeps its first ``picks[b]`` picks."""
    first_index = torch.cumsum(counts, 0) - counts
    global_index = chosen.t() + first_index[:, None]  # [B, iterations]
    keep = torch.arange(chosen.size(0), device=chosen.device)[None, :] < picks[:, None]
    return global_index[keep]


@torch.no_grad()
def _fps_dense(pos: Tensor, batch: Tensor, counts: Tensor, picks: Tensor, start: Tensor) -> Tensor:
    """Pure-PyTorch FPS over the padded batch; see :func:`fps`. Returns global indices ``[M]``.

    The argmax of each step runs in two levels (the max of every segment of ``width`` slots,
    then the argmax inside the first segment holding the overall max): same result as one
    argmax, lowest slot on ties, but the full-size pass is a plain ``amax``, much cheaper.
    """
    device, dtype = pos.device, pos.dtype
    num_samples, num_coords = counts.numel(), pos.size(1)
    largest = int(counts.max())
    width = max(1, math.isqrt(largest))  # slots per segment
    segments = -(-largest // width)
    n = segments * width
    dense, mask = to_dense_batch(pos, batch, max_points=n)  # [B, n, P], [B, n]
    coords = dense.permute(2, 0, 1).contiguous()  # [P, B, n], coordinate-major
    coords_flat = coords.view(num_coords, num_samples * n)  # [P, B*n]

    offsets = torch.arange(num_samples, device=device) * n  # [B] flat offset of each sample's slot 0
    segment_offsets = torch.arange(num_samples, device=device) * segments

    # squared distance to the nearest picked point; padded slots hold -1 and never win
    mindist = torch.full((num_samples, n), float("inf"), dtype=dtype, device=device)
    mindist.masked_fill_(~mask, -1.0)
    mindist_segments = mindist.view(num_samples * segments, width)
    mindist_split = mindist.view(num_samples, segments, width)
    iterations = int(picks.max())
    chosen = torch.empty(iterations, num_samples, dtype=torch.long, device=device)  # flat slot of each pick
    torch.add(start, offsets, out=chosen[0])
    # preallocated buffers and their views: the loop below only launches arithmetic
    centre = torch.empty(num_coords, num_samples, dtype=dtype, device=device)
    centre_column = centre.unsqueeze(-1)  # [P, B, 1]
    diff = torch.empty(num_coords, num_samples, n, dtype=dtype, device=device)
    diff_rows = list(diff.unbind(0))
    dist = diff_rows[0] if num_coords == 1 else torch.empty(num_samples, n, dtype=dtype, device=device)
    for it in range(1, iterations):
        torch.index_select(coords_flat, 1, chosen[it - 1], out=centre)
        torch.sub(coords, centre_column, out=diff)
        diff.square_()
        if num_coords > 1:  # sum over coordinates in order, as a brute-force loop does
            torch.add(diff_rows[0], diff_rows[1], out=dist)
            for row in diff_rows[2:]:
                dist.add_(row)
        torch.minimum(mindist, dist, out=mindist)
        segment = torch.add(mindist_split.amax(-1).argmax(1), segment_offsets)  # first segment holding the max
        inside = torch.index_select(mindist_segments, 0, segment).argmax(1)  # [B] first max inside it
        torch.add(inside, segment, alpha=width, out=chosen[it])

    return _to_global(chosen - offsets, counts, picks)  # flat slot -> slot in sample -> global
