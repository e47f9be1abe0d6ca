"""Context-cluster benchmark: the grid reference vs the points path, side by side.

Cases (forward + backward, float32):
  a  CoC-Tiny stage 1: batch 8, 56x56, dim 32, 4 heads x 24, 8x8 regions, 2x2 centres
  b  the same without regions, 4x4 centres
  c  the same without regions, 16x16 centres
  d  whole-model training steps at 224x224, batch 8: coc_tiny and coc_tiny_plain
     (forward, cross-entropy, backward, SGD step; the points path includes image_to_points)
  e  point mode beside lattice mode: the coc_tiny training step of d on 224x224 images as
     points, the full grid and a fixed random 50% of the pixels (``pc.sample_pixels``);
     the input points are built once, outside the timed step

Every (case, implementation) runs in a fresh subprocess so that its peak memory
is its own: on CPU the peak resident set size (and its growth over the RSS just
before the timed steps), on CUDA ``torch.cuda.max_memory_allocated``.

    python benchmarks/cluster.py                 # all cases
    python benchmarks/cluster.py --cases a b c --repeats 5
    python benchmarks/cluster.py --cases e --threads 1   # point mode vs lattice mode
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OP_CASES = {
    "a": dict(fold=8, centres=2),
    "b": dict(fold=1, centres=4),
    "c": dict(fold=1, centres=16),
}
MODEL_CASES = {"d": ["coc_tiny", "coc_tiny_plain"]}
POINT_CASES = {"e": ["full", "discrete50"]}
CASES = ["a", "b", "c", "d", "e"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(step, repeats: int, device: str):
    step()  # warm-up
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _peak_mb(device), base


def worker(case: str, impl: str, name: str, repeats: int, device: str) -> dict:
    import pointcoc as pc
    from pointcoc.grid.cluster import Cluster

    torch.manual_seed(0)
    if case in OP_CASES:
        cfg = OP_CASES[case]
        B, C, H, W, heads, hd = 8, 32, 56, 56, 4, 24
        img = torch.randn(B, C, H, W, device=device)
        if impl == "grid":
            layer = Cluster(C, C, cfg["centres"], cfg["centres"], cfg["fold"], cfg["fold"], heads, hd).to(device)
            inp = img.clone().requires_grad_(True)

            def step():
                layer(inp).sum().backward()
        else:
            layer = pc.nn.ContextCluster(C, C, heads, hd, "grid", cfg["centres"], cfg["fold"]).to(device)
            pts = pc.image_to_points(img)
            inp = pts.x.clone().requires_grad_(True)

            def step():
                plan = layer.make_plan(pts.pos, pts.batch, pixel=pts.pixel, grid_size=pts.grid_size)
                layer(inp, plan=plan).sum().backward()
    elif case in POINT_CASES:
        step = _point_case_step(pc, impl, name, device)
    else:
        images = torch.rand(8, 3, 224, 224, device=device)
        target = torch.randint(0, 1000, (8,), device=device)
        model = (pc.grid.create_model(name) if impl == "grid" else pc.create_model(name)).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            inp = images if impl == "grid" else pc.image_to_points(images)
            loss = torch.nn.functional.cross_entropy(model(inp), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    sec, peak, base = _timed(step, repeats, device)
    return dict(case=case, impl=impl, name=name, sec=sec, peak_mb=peak, growth_mb=peak - base)


def _point_case_step(pc, impl: str, name: str, device: str):
    """Case e: one coc_tiny training step in ``impl`` mode ("lattice" / "point") on image points."""
    images = torch.rand(8, 3, 224, 224, device=device)
    target = torch.randint(0, 1000, (8,), device=device)
    points = pc.image_to_points(images)
    if name == "discrete50":
        points = pc.sample_pixels(points, ratio=0.5, generator=torch.Generator(device=device).manual_seed(0))
    model = pc.create_model("coc_tiny", mode=impl).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(model(points), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(case: str, impl: str, name: str, repeats: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, impl, name, "--repeats", str(repeats), "--device", device,
           "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    if out.returncode != 0:
        raise RuntimeError(f"worker {case}/{impl}/{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (median reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--worker", nargs=3, metavar=("CASE", "IMPL", "NAME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.device)))
        return
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats}")
    mem = "peak MB (CUDA alloc)" if args.device == "cuda" else "peak RSS MB (growth)"
    header = f"{'case':<4} {'what':<22} {'A s':>9} {'B s':>9} {'time ratio':>10}   {mem:<24} {'mem ratio':>9}"
    print(header + "\n(a-d: A = grid reference, B = points path; e: A = lattice mode, B = point mode)")
    for case in args.cases:
        names = MODEL_CASES.get(case) or POINT_CASES.get(case) or ["op"]
        impls = ("lattice", "point") if case in POINT_CASES else ("grid", "points")
        for name in names:
            g = run(case, impls[0], name, args.repeats, args.device)
            p = run(case, impls[1], name, args.repeats, args.device)
            key = "peak_mb" if args.device == "cuda" else "growth_mb"
            if case in OP_CASES:
                what = "fold={fold} centres={centres}x{centres}".format(**OP_CASES[case])
            else:
                what = name if case in MODEL_CASES else f"coc_tiny {name}"
            gm, pm = g[key], p[key]
            print(
                f"{case:<4} {what:<22} {g['sec']:>9.3f} {p['sec']:>9.3f} {p['sec'] / g['sec']:>9.2f}x   "
                f"{g['peak_mb']:>7.0f} ({gm:>6.0f}) -> {p['peak_mb']:>5.0f} ({pm:>5.0f}) {pm / max(gm, 1e-9):>8.2f}x"
            )
    print("time ratio = B / A (lower is better); mem ratio = B / A memory "
          + ("allocated" if args.device == "cuda" else "growth during the timed steps"))


if __name__ == "__main__":
    main()
