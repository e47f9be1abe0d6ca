"""Shared benchmark helpers: thread pinning, peak memory, step timing, markdown tables."""
from __future__ import annotations

import os
import resource
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

__all__ = ["pin_threads", "peak_rss_gb", "peak_cuda_gb", "time_steps", "markdown_table"]


def pin_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (and as many OpenMP / MKL threads in child processes)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)


def peak_rss_gb() -> float:
    """Peak resident set size of this whole process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def peak_cuda_gb(device: str) -> float:
    """Peak CUDA memory allocated on ``device`` since the last reset, in GB."""
    return torch.cuda.max_memory_allocated(device) / 1e9


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], warmup: int, steps: int, device: str = "cpu") -> Tuple[float, float]:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step``: (wall, CPU) seconds per step.

    On CUDA the peak-memory counter is reset after the warm-up.
    """
    for _ in range(warmup):
        step()
    _sync(device)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - wall0) / steps, (time.process_time() - cpu0) / steps


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[Dict], columns: Sequence[str] = ()) -> str:
    """Rows (dicts) as a markdown table; columns default to the keys in first-seen order."""
    cols: List[str] = list(columns)
    for row in rows if not cols else ():
        cols += [k for k in row if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
