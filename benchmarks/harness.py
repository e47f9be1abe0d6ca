"""Shared benchmark helpers: thread pinning, peak memory, step timing, markdown tables."""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

__all__ = [
    "pin_threads",
    "peak_rss_gb",
    "peak_cuda_gb",
    "peak_mib",
    "current_rss_mib",
    "sync",
    "time_steps",
    "median_step_times",
    "markdown_table",
    "median_row",
    "matmul_gflop",
    "gemm_gflops",
]


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


def sync(device: str) -> None:
    """Wait for ``device`` (CUDA) to finish its queued work; nothing on CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], warmup: int, steps: int, device: str = "cpu") -> Tuple[float, float]:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step``: (wall, CPU) seconds per step.

    On CUDA the peak-memory counter is reset after the warm-up.
    """
    for _ in range(warmup):
        step()
    sync(device)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - wall0) / steps, (time.process_time() - cpu0) / steps


def median_step_times(step: Callable[[], None], repeats: int, device: str = "cpu") -> Tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls of ``step``, each timed alone (synchronised)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        step()
        sync(device)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return statistics.median(walls), statistics.median(cpus)


def matmul_gflop(step: Callable[[], None]) -> float:
    """Matrix-product GFLOP of one call of ``step`` (``torch.utils.flop_counter``: mm, addmm, bmm, ...)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def gemm_gflops(device: str, repeats: int = 20) -> float:
    """Best float32 GEMM rate of this process on ``device`` (its current threads), in GFLOP/s.

    A ``[4096, 1024] x [1024, 1024]`` product, the shape class of the largest layers of the
    models benchmarked here; the best of ``repeats`` timed calls after a warm-up.
    """
    a = torch.randn(4096, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    best = float("inf")
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:  # the first call is the warm-up
            best = min(best, time.perf_counter() - start)
    return 2 * a.size(0) * a.size(1) * b.size(1) / best / 1e9


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib(device: str) -> float:
    """Peak CUDA memory allocated on ``device`` since the last reset, or this process's peak RSS, in MiB."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def median_row(rows: Sequence[Dict]) -> Dict:
    """The first of ``rows`` with each float field replaced by its median over all of them."""
    return {k: (statistics.median(r[k] for r in rows) if isinstance(v, float) else v) for k, v in rows[0].items()}


def markdown_table(rows: Sequence[Dict], columns: Sequence[str] = ()) -> str:
    """Rows (dicts) as a markdown table; columns default to the keys in first-seen order."""
    cols: List[str] = list(columns)
    for row in rows if not cols else ():
        cols += [k for k in row if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
