"""Sampling / neighbour benchmark: fps, knn, knn_graph, radius; pure path vs torch-cluster vs baselines.

Cases (float32 positions):
  clouds  32 point clouds x 1024 random xyz points (PointMLP's setting):
          FPS ratio 0.5; kNN k=24 of the 512 sampled anchors against all points ("knn anchors");
          kNN all-to-all; knn_graph k=24; radius r=0.15 around the anchors (max 32 neighbours)
  image   one 224x224 image as points (50,176 pixel positions, docs/design.md §3.1):
          FPS ratio 0.5 (25,088 iterations); kNN k=24 all-to-all; radius 2.5 pixel spacings
          all-to-all (max 32 neighbours)

Rows per operation: the pure path (``use_backend("torch")``); torch-cluster raw and pointcoc's
"auto" backend (when installed: kNN goes to torch-cluster, CPU FPS stays pure); straightforward
baselines: FPS as a Python loop over samples, kNN as ``torch.cdist`` + ``topk`` per sample
(chunked over 1024 queries; not tie-exact). When torch-cluster is not installed, the two kNN
rows it was measured on elsewhere (one thread, CPU) are printed as QUOTED figures, not measured
here: 53.6 ms (clouds, knn anchors) and 101 ms (image, knn all).

Every (operation, method) runs in a fresh subprocess so its peak memory is its own: on CPU the
growth of the peak resident set size over the RSS before the first call (warm-up included), on
CUDA ``torch.cuda.max_memory_allocated`` minus the memory held by the inputs. Times: median of
``--repeats`` runs after a warm-up call (rows slower than 10 s, or 2 s with ``--quick``: the
warm-up run alone), as wall-clock time and as the process's CPU time (on a
machine shared with other jobs the CPU time is the steadier figure; with one thread and an idle
machine the two agree). The table is printed once, at the end.

Rows timed in separate processes drift apart on a noisy machine (15-30% between runs), so
with torch-cluster installed the two rows it was quoted for are also timed in turn with the
pure path inside one process (``--alternate`` calls each, default 15): that ratio is the
steadier comparison.

    python benchmarks/ops.py                      # all rows, CPU, one thread
    python benchmarks/ops.py --quick              # one timed run, no baselines (about 1-2 minutes)
    python benchmarks/ops.py --device cuda --threads 8
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.harness import current_rss_mib, median_step_times, peak_mib, sync  # noqa: E402

K = 24
RATIO = 0.5
CLOUDS, CLOUD_POINTS = 32, 1024
CLOUD_RADIUS = 0.15
IMAGE_SIDE = 224
IMAGE_RADIUS = 2.5 / (IMAGE_SIDE - 1)
MAX_NEIGHBOURS = 32
BASELINE_QUERY_CHUNK = 1024
SLOW_ROW_S = 10.0  # rows whose warm-up takes longer are timed once (the warm-up itself)

# (case, operation) in table order; "pure" first in every operation (the ratio reference)
OPERATIONS = [
    ("clouds", "fps"),
    ("clouds", "knn anchors"),
    ("clouds", "knn all"),
    ("clouds", "knn_graph"),
    ("clouds", "radius anchors"),
    ("image", "fps"),
    ("image", "knn all"),
    ("image", "radius all"),
]
METHODS = ["pure", "torch-cluster", "auto", "baseline"]
BASELINE_NAMES = {"fps": "python loop over samples", "knn": "cdist + topk per sample"}
QUOTED_TORCH_CLUSTER_MS = {("clouds", "knn anchors"): 53.6, ("image", "knn all"): 101.0}
"""torch-cluster CPU times (one thread) measured in an earlier session, quoted when it is not installed."""


def has_torch_cluster() -> bool:
    try:
        importlib.import_module("torch_cluster")
    except (ImportError, OSError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# inputs and baselines
# ----------------------------------------------------------------------------------------------


def make_inputs(case: str, device: str):
    """``pos [N, P]`` float32 and ``batch [N]`` for a case."""
    if case == "clouds":
        g = torch.Generator().manual_seed(0)
        pos = torch.rand(CLOUDS * CLOUD_POINTS, 3, generator=g)
        batch = torch.arange(CLOUDS).repeat_interleave(CLOUD_POINTS)
    else:
        from pointcoc.points import pixel_positions

        rows, cols = torch.meshgrid(torch.arange(IMAGE_SIDE), torch.arange(IMAGE_SIDE), indexing="ij")
        pixel = torch.stack((rows.reshape(-1), cols.reshape(-1)), 1)
        pos = pixel_positions(pixel, torch.tensor(IMAGE_SIDE), torch.float32)
        batch = torch.zeros(len(pos), dtype=torch.long)
    return pos.to(device), batch.to(device)


def fps_python_loop(pos: torch.Tensor, batch: torch.Tensor, ratio: float) -> torch.Tensor:
    """Baseline: one sample at a time, from its first point, one argmax per pick."""
    counts = torch.bincount(batch).tolist()
    out, start = [], 0
    for n in counts:
        pts = pos[start : start + n]
        picks = math.ceil(ratio * n)
        chosen = torch.empty(picks, dtype=torch.long, device=pos.device)
        chosen[0] = 0
        mindist = ((pts - pts[0]) ** 2).sum(1)
        for i in range(1, picks):
            chosen[i] = mindist.argmax()
            mindist = torch.minimum(mindist, ((pts - pts[chosen[i]]) ** 2).sum(1))
        out.append(chosen + start)
        start += n
    return torch.cat(out)


def knn_cdist(x: torch.Tensor, y: torch.Tensor, k: int, batch_x: torch.Tensor, batch_y: torch.Tensor) -> torch.Tensor:
    """Baseline: dense distances per sample with ``torch.cdist``, ``topk`` (ties in no fixed order)."""
    counts_x = torch.bincount(batch_x).tolist()
    counts_y = torch.bincount(batch_y, minlength=len(counts_x)).tolist()
    cols, sx, sy = [], 0, 0
    for nx, ny in zip(counts_x, counts_y):
        xb = x[sx : sx + nx]
        for q0 in range(0, ny, BASELINE_QUERY_CHUNK):
            yq = y[sy + q0 : sy + min(q0 + BASELINE_QUERY_CHUNK, ny)]
            cols.append(torch.cdist(yq, xb).topk(k, largest=False).indices + sx)
        sx, sy = sx + nx, sy + ny
    return torch.cat(cols).reshape(-1)


def build_call(case: str, operation: str, method: str, device: str) -> Callable[[], object]:
    """The zero-argument callable timed for one table row."""
    from pointcoc.ops import fps, knn, knn_graph, radius, use_backend

    pos, batch = make_inputs(case, device)
    if operation.endswith("anchors"):
        with use_backend("torch"):
            anchors = fps(pos, batch, ratio=RATIO, random_start=False)
        y, batch_y = pos[anchors], batch[anchors]
    else:
        y, batch_y = pos, batch
    r = CLOUD_RADIUS if case == "clouds" else IMAGE_RADIUS
    kind = operation.split()[0]
    if method == "torch-cluster":
        import torch_cluster

        calls = {
            "fps": lambda: torch_cluster.fps(pos, batch, RATIO, False),
            "knn": lambda: torch_cluster.knn(pos, y, K, batch, batch_y),
            "knn_graph": lambda: torch_cluster.knn_graph(pos, K, batch),
            "radius": lambda: torch_cluster.radius(pos, y, r, batch, batch_y, MAX_NEIGHBOURS),
        }
        return calls[kind]
    if method == "baseline":
        if kind == "fps":
            return lambda: fps_python_loop(pos, batch, RATIO)
        return lambda: knn_cdist(pos, y, K, batch, batch_y)
    backend = "torch" if method == "pure" else "auto"
    calls = {
        "fps": lambda: fps(pos, batch, ratio=RATIO, random_start=False),
        "knn": lambda: knn(pos, y, K, batch, batch_y),
        "knn_graph": lambda: knn_graph(pos, K, batch),
        "radius": lambda: radius(pos, y, r, batch, batch_y, MAX_NEIGHBOURS),
    }

    def call():
        with use_backend(backend):
            return calls[kind]()

    return call


def methods_for(operation: str, cluster: bool, quick: bool) -> List[str]:
    """Methods measured for one operation (baselines exist for fps and knn; none in quick mode)."""
    methods = [m for m in METHODS if cluster or m not in ("torch-cluster", "auto")]
    if quick or operation.split()[0] not in BASELINE_NAMES:
        methods.remove("baseline")
    return methods


# ----------------------------------------------------------------------------------------------
# measurement (in a child process)
# ----------------------------------------------------------------------------------------------


def measure(case: str, operation: str, method: str, device: str, repeats: int, quick: bool) -> Dict[str, float]:
    call = build_call(case, operation, method, device)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    else:
        rss_before = current_rss_mib()
    warm = time.perf_counter()
    warm_cpu = time.process_time()
    call()  # warm-up (also the memory peak)
    sync(device)
    warm, warm_cpu = time.perf_counter() - warm, time.process_time() - warm_cpu
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - held) / 2**20
    else:
        peak = peak_mib(device) - rss_before
    if warm > (2.0 if quick else SLOW_ROW_S):  # slow rows: the warm-up run is the measurement
        wall, cpu = warm, warm_cpu
    else:
        wall, cpu = median_step_times(call, repeats, device)
    return {"ms": wall * 1e3, "cpu_ms": cpu * 1e3, "peak_mib": peak}


def alternate(case: str, operation: str, device: str, rounds: int) -> Dict[str, float]:
    """Median times of the pure path and torch-cluster called in turn, ``rounds`` times each, in
    this one process: drifts of a shared machine hit both alike, unlike rows timed one after
    the other in separate processes."""
    calls = {method: build_call(case, operation, method, device) for method in ("pure", "torch-cluster")}
    times: Dict[str, List[float]] = {method: [] for method in calls}
    for method, call in calls.items():  # warm-up
        call()
    for _ in range(rounds):
        for method, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            times[method].append(time.perf_counter() - start)
    return {method: statistics.median(values) * 1e3 for method, values in times.items()}


def run_child(what: List[str], args: argparse.Namespace, flag: str = "--child") -> Optional[Dict[str, float]]:
    """Run this script with ``flag`` and ``what`` (case, operation and, for ``--child``, method)
    in a fresh process; its last output line, parsed as JSON (``None`` if it failed)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        flag,
        *what,
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--alternate",
        str(args.alternate),
    ]
    command += ["--threads", str(args.threads)]
    if args.quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {' '.join(what)} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------------------------


def method_label(operation: str, method: str) -> str:
    if method == "baseline":
        return "baseline: " + BASELINE_NAMES[operation.split()[0]]
    labels = {
        "pure": "pointcoc pure torch",
        "torch-cluster": "torch-cluster",
        "auto": "pointcoc auto backend",
        "quoted": "torch-cluster QUOTED (not measured)",
    }
    return labels[method]


def collect(args: argparse.Namespace, cluster: bool) -> List[Dict[str, object]]:
    """Measure every row (one subprocess each); quoted torch-cluster rows where it is missing."""
    rows = []
    for case, operation in OPERATIONS:
        for method in methods_for(operation, cluster, args.quick):
            print(f"  measuring {case} {operation} {method} ...", file=sys.stderr, flush=True)
            result = run_child([case, operation, method], args)
            if result is not None:
                rows.append({"case": case, "operation": operation, "method": method, **result})
        quoted = QUOTED_TORCH_CLUSTER_MS.get((case, operation))
        if quoted is not None and not cluster and args.device == "cpu":
            rows.append(
                {
                    "case": case,
                    "operation": operation,
                    "method": "quoted",
                    "ms": quoted,
                    "cpu_ms": None,
                    "peak_mib": None,
                }
            )
    return rows


def print_table(rows: List[Dict[str, object]]) -> None:
    """One table: times, ratio to the pure path, ratio of the pure path to torch-cluster."""
    header = (
        f"{'case':<7} {'operation':<15} {'method':<37} {'wall ms':>9} {'cpu ms':>9} "
        f"{'vs pure':>8} {'pure/tc (cpu)':>19} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        same = [r for r in rows if (r["case"], r["operation"]) == (row["case"], row["operation"])]
        pure = next((r for r in same if r["method"] == "pure"), None)
        reference = next((r for r in same if r["method"] in ("torch-cluster", "quoted")), None)
        versus = f"{row['ms'] / pure['ms']:.2f}x" if pure and row["method"] != "quoted" else "-"
        against = "-"
        if row["method"] == "pure" and reference is not None:
            against = f"{row['ms'] / reference['ms']:.2f}x"
            if row["cpu_ms"] is not None and reference["method"] == "quoted":
                against += f" ({row['cpu_ms'] / reference['ms']:.2f}x cpu)"
        cpu = "-" if row["cpu_ms"] is None else f"{row['cpu_ms']:.1f}"
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.1f}"
        print(
            f"{row['case']:<7} {row['operation']:<15} {method_label(row['operation'], row['method']):<37} "
            f"{row['ms']:>9.1f} {cpu:>9} {versus:>8} {against:>19} {peak:>9}"
        )
    print(
        "vs pure: wall time relative to the pure path. pure/tc: pure path's wall time (and CPU time) "
        "relative to torch-cluster; QUOTED rows are figures measured elsewhere, not on this machine. "
        "Peak: memory growth of the call."
    )


def print_alternation(args: argparse.Namespace) -> None:
    """The rows torch-cluster was quoted for, timed in turn with the pure path in one process."""
    print(f"\nalternating in one process, {args.alternate} calls each (median ms):")
    for case, operation in QUOTED_TORCH_CLUSTER_MS:
        result = run_child([case, operation], args, flag="--alternate-child")
        if result is not None:
            pure, theirs = result["pure"], result["torch-cluster"]
            ratio = pure / theirs
            print(f"  {case:<7} {operation:<12} pure {pure:8.1f}  torch-cluster {theirs:8.1f}  pure/tc {ratio:.2f}x")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--quick", action="store_true", help="one timed run, no baselines; slow rows reuse their warm-up"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (median), default 5")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument(
        "--alternate",
        type=int,
        default=15,
        help="with torch-cluster: also time its two QUOTED rows in turn with the pure path in one process, "
        "this many calls each (default 15; 0: off)",
    )
    parser.add_argument("--child", nargs=3, metavar=("CASE", "OPERATION", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--alternate-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(*args.child, args.device, args.repeats, args.quick)))
        return
    if args.alternate_child:
        print(json.dumps(alternate(*args.alternate_child, args.device, args.alternate)))
        return

    from pointcoc.ops.knn import DEFAULT_CHUNK_ENTRIES

    cluster = has_torch_cluster()
    rows = collect(args, cluster)
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"torch-cluster {'installed' if cluster else 'not installed'}, k={K}, ratio={RATIO}, "
        f"kNN chunk budget {DEFAULT_CHUNK_ENTRIES} distance entries, repeats {args.repeats}"
    )
    print_table(rows)
    if cluster and args.alternate > 0 and not args.quick:
        print_alternation(args)


if __name__ == "__main__":
    main()
