"""Farthest point sampling of one sample on the CPU, each pick updating only the run of points it can reach.

The points keep their order and are cut into segments of ``width`` consecutive points. A pick
``c`` whose value is ``M`` (its squared distance to the earlier picks: the current maximum) can
lower only the values of points closer to it than ``M``, all within ``sqrt(M)`` of ``c`` along
every coordinate. Along each coordinate, the running max of the segments' upper bounds (from the
first segment on) and the running min of their lower bounds (from the last segment back) are
sorted, so a binary search gives the first and the last segment that can hold such a point, and
only the run of segments between them is updated. Where the points come in a spatially coherent
order (the pixels of an image, a sorted scan) the run is a few segments and a pick costs a few
small tensor operations instead of passes over every point; :meth:`OneSample.runs_are_short`
tells (in random order every run is the whole sample: the padded loop is then as fast).

Exact: the picks are those of the dense loop of :mod:`pointcoc.ops.fps` (the same float64
values, ties to the lowest index). A point whose computed distance to ``c`` is below ``M`` has
``|x_p - c_p| < sqrt(M) * (1 + 2**-40) + 2**-510`` along every coordinate: the computed
distance is at least the computed square of each coordinate difference, the relative margin
covers the roundings of the difference, the square and the square root, and the absolute one
differences whose square underflows. The bounds ``c_p -/+ radius`` are rounded monotonically, so
no point that can change lies outside the run.
"""

from __future__ import annotations

import bisect
import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .squares import squared_difference, sum_of_rows

__all__ = ["RUNS_MAX_FRACTION", "OneSample"]

RUNS_MAX_FRACTION = 0.25
"""Runs pay where, with a zero radius, the run of a segment's first point spans on average less
than this fraction of the segments (in random order it spans them all)."""

_RELATIVE_MARGIN = 1.0 + 2.0**-40
_ABSOLUTE_MARGIN = 2.0**-510


class OneSample:
    """One sample ``pos: [n, P]`` (float64, CPU) in segments of ``width`` consecutive points.

    ``coords: [P, S * width]`` (padding repeats the last point: the segments' bounds are those of
    their points), ``highs`` / ``lows: [P, S]``: per coordinate, the running max of the segments'
    highs from the first segment and the running min of their lows from the last one (both
    non-decreasing, so binary searches find runs).
    """

    @torch.inference_mode()  # inference tensors: views of them in the pick loop are cheaper
    def __init__(self, pos: Tensor) -> None:
        self.size, num_coords = pos.shape
        self.width = max(1, math.isqrt(self.size))
        self.segments = -(-self.size // self.width)
        self.coords = pos[-1:].t().repeat(1, self.segments * self.width)
        self.coords[:, : self.size] = pos.t()
        boxes = self.coords.view(num_coords, self.segments, self.width)
        self.highs = boxes.amax(-1).cummax(1).values
        self.lows = boxes.amin(-1).flip(1).cummin(1).values.flip(1)

    @torch.no_grad()
    def runs_are_short(self) -> bool:
        """True where the points come in a coherent order: see :data:`RUNS_MAX_FRACTION`."""
        firsts = self.coords[:, :: self.width].contiguous()  # [P, S] first point of every segment
        first = torch.searchsorted(self.highs, firsts).amax(0)
        end = torch.searchsorted(self.lows, firsts, right=True).amin(0)
        return bool((end - first).double().mean() < RUNS_MAX_FRACTION * self.segments)

    def sample(self, picks: int, start: int) -> Tensor:
        """``[picks]`` indices in selection order from point ``start``: the picks of
        :func:`pointcoc.ops.fps` (see the module docstring)."""
        with torch.inference_mode():  # cheaper views and small operations; nothing leaves as a tensor
            chosen = self._picks(picks, start) if picks else []
        return torch.tensor(chosen, dtype=torch.long, device=self.coords.device)

    def _picks(self, picks: int, start: int) -> List[int]:
        coords, width = self.coords, self.width
        mindist = torch.full((self.segments * width,), math.inf, dtype=coords.dtype, device=coords.device)
        mindist[self.size :] = -1.0  # padding never wins
        segment_rows = mindist.view(self.segments, width)
        segment_max = segment_rows.amax(1)
        highs, lows = self.highs.tolist(), self.lows.tolist()
        points = coords.t().tolist()
        chosen, pick, value = [start], start, math.inf
        for _ in range(1, picks):
            first, end = _run(points[pick], value, highs, lows)
            if first < end:
                run = slice(first * width, end * width)
                centre = coords[:, pick : pick + 1]
                _update(coords[:, run], centre, mindist[run], segment_rows[first:end], segment_max[first:end])
            segment = int(segment_max.argmax())  # the first segment holding the max, its first max
            pick, value = segment * width + int(segment_rows[segment].argmax()), float(segment_max[segment])
            chosen.append(pick)
        return chosen


def _run(centre: Sequence[float], value: float, highs: List[List[float]], lows: List[List[float]]) -> Tuple[int, int]:
    """Segments ``first .. end - 1`` hold every point within ``radius`` of ``centre`` along every
    coordinate, ``radius`` covering the squared distance ``value`` (see the module docstring)."""
    radius = math.sqrt(max(value, 0.0)) * _RELATIVE_MARGIN + _ABSOLUTE_MARGIN
    first, end = 0, len(highs[0])
    for c, high, low in zip(centre, highs, lows):
        first = max(first, bisect.bisect_left(high, c - radius))
        end = min(end, bisect.bisect_right(low, c + radius))
    return first, end


def _update(block: Tensor, centre: Tensor, mindist: Tensor, segment_rows: Tensor, segment_max: Tensor) -> None:
    """Lower ``mindist`` of the points ``block: [P, L]`` to their distance to ``centre: [P, 1]``
    and refresh the max of their segments (``segment_rows: [s, width]`` -> ``segment_max: [s]``)."""
    squares = squared_difference(block, centre.expand_as(block))
    dist = squares[0] if squares.size(0) == 1 else sum_of_rows(squares.unbind(0))
    torch.minimum(mindist, dist, out=mindist)
    torch.amax(segment_rows, 1, out=segment_max)
