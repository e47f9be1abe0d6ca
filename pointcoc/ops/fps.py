"""Farthest point sampling on ragged batches.

All samples run together: the batch is padded to ``[P, B, n_max]`` and the loop
runs over FPS iterations only (as many as the largest per-sample pick count);
each iteration is a handful of tensor operations on ``[B, n_max]``. One sample on the
CPU whose points come in a coherent order (an image's pixels) instead updates at each
pick only the run of points the pick can reach (:mod:`pointcoc.ops.fps_one`).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .._checks import batch_or_ptr, check_batch, check_bool, check_k, check_positions
from .backend import torch_cluster_module
from .batch import batch_counts
from .exact import working_dtype
from .fps_one import OneSample
from .sampling import per_sample_count
from .squares import squared_difference

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

    Otherwise one sample on the CPU whose points come in a coherent order (an image's pixels)
    updates at each pick only the run of points the pick can reach (:mod:`pointcoc.ops.fps_one`);
    everything else runs one padded loop. Both give the exact picks.
    """
    pos = check_positions(pos, "pos").detach()
    batch, counts = _checked_batch(pos, batch, ptr, batch_size)
    random_start = check_bool(random_start, "random_start")
    picks = per_sample_count(counts, ratio, num_points)
    working_dtype(pos, pos, batch, batch, counts.numel())  # raises where float64 overflows
    cluster = torch_cluster_module() if pos.is_cuda else None  # on CPU its kernel is slower than ours
    if cluster is not None and generator is None and num_points is None and not isinstance(ratio, Tensor):
        if _cluster_counts_match(counts, picks, ratio, pos):
            return cluster.fps(pos, batch, ratio, random_start)
    return _fps_pure(pos.double(), batch, counts, picks, _start_slots(counts, random_start, generator))


def _fps_pure(pos: Tensor, batch: Tensor, counts: Tensor, picks: Tensor, start: Tensor) -> Tensor:
    """The pure-PyTorch picks (``pos`` float64): one sample on the CPU whose points come in a
    coherent order updates only the run each pick reaches; everything else runs the padded loop."""
    if counts.numel() == 1 and pos.device.type == "cpu":
        one = OneSample(pos)
        if one.runs_are_short():
            return one.sample(int(picks[0]), int(start[0]))
    return _fps_dense(pos, batch, counts, picks, start)


def _checked_batch(
    pos: Tensor, batch: Optional[Tensor], ptr: Optional[Tensor], batch_size: Optional[int]
) -> Tuple[Tensor, Tensor]:
    """Validated sample ids ``[N]`` and points per sample ``[B]`` (``B`` from ``batch_size`` if given)."""
    batch = batch_or_ptr(batch, ptr, pos.size(0), pos.device, "batch", "ptr")
    batch, num_samples = check_batch(batch, pos.size(0), pos.device, "batch")
    if batch_size is not None:
        if check_k(batch_size, "batch_size") < num_samples:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of samples ({num_samples})")
        num_samples = batch_size
    return batch, batch_counts(batch, num_samples)


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


class _Padded:
    """The padded batch of the dense loop, coordinate-major, in segments of ``width`` slots.

    ``coords: [P, B, n]`` (padding slots: 0), ``mindist: [B, n]`` squared distance of each slot
    to the nearest pick (padding: -1, never picked; viewed as ``split: [B, S, width]`` and
    ``segment_rows: [B * S, width]``), ``segment_max: [B, S]`` the max of each segment.
    """

    def __init__(self, pos: Tensor, batch: Tensor, counts: Tensor) -> None:
        device, num_samples = pos.device, counts.numel()
        largest = int(counts.max())
        self.width = max(1, math.isqrt(largest))  # slots per segment
        self.segments = -(-largest // self.width)
        n = self.segments * self.width
        slot = torch.arange(batch.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[batch]
        self.coords = pos.new_zeros(pos.size(1), num_samples, n)
        self.coords[:, batch, slot] = pos.t()
        real = torch.arange(n, device=device) < counts[:, None]
        self.mindist = torch.where(real, math.inf, -1.0).to(pos.dtype)
        self.split = self.mindist.view(num_samples, self.segments, self.width)
        self.segment_rows = self.mindist.view(num_samples * self.segments, self.width)
        self.segment_max = self.split.amax(-1)


@torch.no_grad()
def _fps_dense(pos: Tensor, batch: Tensor, counts: Tensor, picks: Tensor, start: Tensor) -> Tensor:
    """Pure-PyTorch FPS over the padded batch; see :func:`fps`. Returns global indices ``[M]``.

    Each step updates the nearest-pick distances of every slot, then picks the max in two levels
    (the first segment holding the overall max, then the first max inside it): the lowest slot
    on ties, as one argmax, but the full-size pass is a plain ``amax``, much cheaper.
    """
    with torch.inference_mode():  # cheaper views and small operations; only ``chosen`` is kept
        padded = _Padded(pos, batch, counts)
    num_samples, n = counts.numel(), padded.mindist.size(1)
    offsets = torch.arange(num_samples, device=pos.device) * n  # [B] flat offset of each sample's slot 0
    chosen = torch.empty(int(picks.max()), num_samples, dtype=torch.long, device=pos.device)  # flat slots
    torch.add(start, offsets, out=chosen[0])
    with torch.inference_mode():
        _full_loop(padded, chosen)
    return _to_global(chosen - offsets, counts, picks)  # flat slot -> slot in sample -> global


def _pick(padded: _Padded, segment_offsets: Tensor, out: Tensor) -> None:
    """Flat slot of each sample's max: the first max of the first segment holding the max."""
    segment = torch.add(padded.segment_max.argmax(1), segment_offsets)
    inside = torch.index_select(padded.segment_rows, 0, segment).argmax(1)
    torch.add(inside, segment, alpha=padded.width, out=out)


def _full_loop(padded: _Padded, chosen: Tensor) -> None:
    """Picks ``1 ..`` of ``chosen: [iterations, B]`` (flat slots), every slot updated each step."""
    coords, mindist = padded.coords, padded.mindist
    num_coords, num_samples, n = coords.shape
    coords_flat = coords.view(num_coords, num_samples * n)
    segment_offsets = torch.arange(num_samples, device=coords.device) * padded.segments
    centre = coords.new_empty(num_coords, num_samples)
    centre_rows = centre.unsqueeze(-1).expand(num_coords, num_samples, n).unbind(0)  # [B, n] views
    coord_rows = coords.unbind(0)
    dist, square = torch.empty_like(mindist), torch.empty_like(mindist)
    rows = chosen.unbind(0)
    for it in range(1, len(rows)):
        torch.index_select(coords_flat, 1, rows[it - 1], out=centre)
        squared_difference(coord_rows[0], centre_rows[0], out=dist)
        for coord, centre_row in zip(coord_rows[1:], centre_rows[1:]):  # summed in coordinate order
            dist.add_(squared_difference(coord, centre_row, out=square))
        torch.minimum(mindist, dist, out=mindist)
        torch.amax(padded.split, -1, out=padded.segment_max)
        _pick(padded, segment_offsets, out=rows[it])
