"""Context-cluster benchmark: the grid reference vs the points path, side by side, in one table.

Cases (float32, batch 8):
  a  CoC-Tiny stage 1 op (forward + backward): 56x56, dim 32, 4 heads x 24, 8x8 regions, 2x2 centres
  b  the same without regions, 4x4 centres
  c  the same without regions, 16x16 centres
  d  whole-model training steps at 224x224: coc_tiny and coc_tiny_plain (forward,
     cross-entropy, backward, SGD step; the points path is given the image tensor and
     converts it to points inside the model, as ``image_to_points`` does, at every step)
  i  coc_tiny inference at 224x224 (no grad)
  e  point mode beside lattice mode: the coc_tiny training step of d on the full grid and on
     a fixed random 50% of the pixels (``pc.sample_pixels``), input points built once
  t  compiled: ``torch.compile(model)`` of coc_tiny in lattice mode, inference and training
     (``--compile-backend``; the warm-up step includes the compilation)
  k  activation checkpointing: the training steps of d without it (``checkpoint_stages=0``)
     and with the default (the blocks of the first two stages)

Every row runs in fresh subprocesses (``--rounds`` of them, the implementations of a case
alternating; the table gives medians) so that its peak memory is its own: on CPU the peak
resident set size of the whole process (Python and torch included, what the reference
figures measure), on CUDA ``torch.cuda.max_memory_allocated``. Times are the wall and CPU
seconds per step after one warm-up step; on a loaded machine compare CPU seconds.

The reference figures are QUOTED, not measured here: the published reference code run on
this project's 2-core CPU machine kind (issue 13). Every other figure is measured by the
run that prints it.

    python benchmarks/cluster.py --quick            # d and i, points path only, 1 timed step (< 2 min)
    python benchmarks/cluster.py                    # all cases
    python benchmarks/cluster.py --cases e --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.harness import (  # noqa: E402
    markdown_table,
    median_row,
    peak_cuda_gb,
    peak_rss_gb,
    pin_threads,
    time_steps,
)

__all__ = ["CASES", "REFERENCE_GB", "TARGETS", "run_one", "main"]

OP_CASES = {"a": dict(regions=8, centres=2), "b": dict(regions=1, centres=4), "c": dict(regions=1, centres=16)}
#: case -> (implementations, names)
CASES = {
    "a": (("grid", "points"), ["op"]),
    "b": (("grid", "points"), ["op"]),
    "c": (("grid", "points"), ["op"]),
    "d": (("grid", "points"), ["coc_tiny", "coc_tiny_plain"]),
    "i": (("grid", "points"), ["coc_tiny"]),
    "e": (("lattice", "point"), ["full", "discrete50"]),
    "t": (("compiled",), ["coc_tiny infer", "coc_tiny train"]),
    "k": (("none", "checkpointed"), ["coc_tiny", "coc_tiny_plain"]),
}
#: QUOTED reference peak RSS in GB (published code, batch 8, 224x224, CPU, issue 13). No inference
#: figure was recorded: the inference one is DERIVED, the points path's inference peak measured
#: before issue 13's memory work (0.505 GB, coc_tiny, batch 8, commit 4b26ee1) / issue 13's ratio 0.97.
INFERENCE_BEFORE_GB, INFERENCE_RATIO = 0.505, 0.97
REFERENCE_GB = {
    ("d", "coc_tiny"): 1.37,
    ("d", "coc_tiny_plain"): 1.79,
    ("i", "coc_tiny"): round(INFERENCE_BEFORE_GB / INFERENCE_RATIO, 2),
}
#: memory targets relative to the reference (issue 13)
TARGETS = {("d", "coc_tiny"): 0.8, ("d", "coc_tiny_plain"): 0.6, ("i", "coc_tiny"): 0.8}


def _op_step(pc, case: str, impl: str, device: str) -> Callable[[], None]:
    import torch

    from pointcoc.reference.cluster import Cluster

    cfg = OP_CASES[case]
    B, C, H, W, heads, hd = 8, 32, 56, 56, 4, 24
    img = torch.randn(B, C, H, W, device=device)
    if impl == "grid":
        layer = Cluster(C, C, cfg["centres"], cfg["centres"], cfg["regions"], cfg["regions"], heads, hd).to(device)
        inp = img.clone().requires_grad_(True)
        return lambda: layer(inp).sum().backward()
    layer = pc.nn.ContextCluster(C, C, heads, hd, "grid", cfg["centres"], cfg["regions"]).to(device)
    pts = pc.image_to_points(img)
    inp = pts.x.clone().requires_grad_(True)

    def step() -> None:
        plan = layer.make_plan(pts.pos, pts.batch, pixel=pts.pixel, grid_size=pts.grid_size)
        layer(inp, plan=plan).sum().backward()

    return step


def _model_step(pc, case: str, impl: str, name: str, device: str, backend: str) -> Callable[[], None]:
    import torch

    images = torch.rand(8, 3, 224, 224, device=device)
    target = torch.randint(0, 1000, (8,), device=device)
    model_name = name.split()[0] if case == "t" else ("coc_tiny" if case == "e" else name)
    if impl == "grid":
        model, inputs = pc.reference.create_model(model_name), lambda: images
    elif case in ("d", "i", "k"):  # the model turns the image tensor into points at every step
        stages = {"none": {"checkpoint_stages": 0}, "checkpointed": {}}.get(impl, {})
        model, inputs = pc.create_model(model_name, mode="lattice", **stages), lambda: images
    else:
        mode = impl if case == "e" else "lattice"
        model, points = pc.create_model(model_name, mode=mode), pc.image_to_points(images)
        if name == "discrete50":
            points = pc.sample_pixels(points, ratio=0.5, generator=torch.Generator(device=device).manual_seed(0))
        inputs = lambda: points  # noqa: E731
    model = model.to(device)
    forward = torch.compile(model, backend=backend) if case == "t" else model
    if case == "i" or name.endswith("infer"):
        model.eval()
        return lambda: torch.no_grad()(forward)(inputs())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(forward(inputs()), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_one(case: str, impl: str, name: str, repeats: int, device: str, backend: str) -> Dict:
    """Measure one row in this process."""
    import torch

    import pointcoc as pc

    torch.manual_seed(0)
    if case in OP_CASES:
        step = _op_step(pc, case, impl, device)
    else:
        step = _model_step(pc, case, impl, name, device, backend)
    wall, cpu = time_steps(step, 1, repeats, device)
    peak = peak_cuda_gb(device) if device.startswith("cuda") else peak_rss_gb()
    what = "regions={regions} centres={centres}x{centres}".format(**OP_CASES[case]) if case in OP_CASES else name
    impl = f"{impl} ({backend})" if case == "t" else impl
    return {
        "case": case,
        "what": what,
        "impl": impl,
        "s/step": wall,
        "CPU s/step": cpu,
        "peak GB": peak,
        "load": os.getloadavg()[0],
    }


def _spawn(args: argparse.Namespace, case: str, impl: str, name: str) -> Optional[Dict]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        case,
        impl,
        name,
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--compile-backend",
        args.compile_backend,
    ]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{case}/{impl}/{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _merge_rounds(rows: List[Dict], device: str) -> List[Dict]:
    """One row per (case, what, impl): the medians over its rounds; the time ratio to the case's
    first implementation is taken round by round (each pair ran back to back) and then its median;
    the memory ratio is the median peak over the quoted reference."""
    runs: Dict = {}
    for r in rows:
        runs.setdefault((r["case"], r["what"], r["impl"]), []).append(r)
    first: Dict = {}
    out = []
    for (case, what, impl), group in runs.items():
        row = median_row(group)
        del row["round"]
        row["rounds"] = len(group)
        base = first.setdefault((case, what), group)
        alone = sum(1 for k in runs if k[:2] == (case, what)) == 1  # nothing to compare with
        base_cpu = {b["round"]: b["CPU s/step"] for b in base}
        ratios = [r["CPU s/step"] / base_cpu[r["round"]] for r in group if r["round"] in base_cpu] or [float("nan")]
        row["CPU time / A"] = "" if alone else ("A" if base is group else f"{statistics.median(ratios):.2f}")
        ref = REFERENCE_GB.get((case, what), 0)
        quoted = ref and impl == "points" and device == "cpu"
        row["ref GB (quoted)"] = ref if quoted else ""
        row["peak / ref (target)"] = f"{row['peak GB'] / ref:.2f} (<= {TARGETS[(case, what)]})" if quoted else ""
        out.append(row)
    return out


def _footer(device: str, threads: int) -> str:
    quoted = "; ".join(f"{n}: {g} GB" for (c, n), g in REFERENCE_GB.items() if c == "d")
    return "\n".join([
        "A = the first implementation of each case (a-d, i: the grid reference; e: lattice mode; k: no checkpointing); "
        "CPU time / A = the median over rounds of the row's CPU seconds per step over A's in the same round; "
        "the other figures are medians over rounds.",
        f"QUOTED reference peak RSS (published code, training, batch 8, 224x224, CPU, issue 13): {quoted}; "
        f"inference (coc_tiny): DERIVED, {REFERENCE_GB[('i', 'coc_tiny')]} GB = {INFERENCE_BEFORE_GB} GB (the points "
        f"path before issue 13's memory work, measured at commit 4b26ee1) / {INFERENCE_RATIO} (issue 13's ratio).",
        f"Measured now: every other figure. device={device}, threads per process: {threads}; "
        "peak GB = " + ("peak CUDA memory allocated" if device.startswith("cuda") else "whole-process peak RSS")
        + "; load = 1-min load average at the end of each run.",
    ])  # fmt: skip


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per row after one warm-up step")
    ap.add_argument(
        "--rounds", type=int, default=3, help="processes per row, the implementations of a case alternating (medians)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per process (default 1)")
    ap.add_argument("--quick", action="store_true", help="cases d and i, points path only, 1 timed step")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of case t")
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--worker", nargs=3, metavar=("CASE", "IMPL", "NAME"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    pin_threads(args.threads)
    if args.worker:
        print(json.dumps(run_one(*args.worker, args.repeats, args.device, args.compile_backend)))
        return
    if args.quick:
        args.repeats, args.rounds = 1, 1
    cases = args.cases or (["d", "i"] if args.quick else list(CASES))
    rows, failed = [], 0
    for case in cases:
        impls, names = CASES[case]
        impls = ("points",) if args.quick and case in ("d", "i") else impls
        for name in names:
            for round_ in range(args.rounds):
                for impl in impls:
                    print(f"[{case}] {name} {impl} (round {round_ + 1}/{args.rounds})", file=sys.stderr)
                    row = _spawn(args, case, impl, name)
                    if row is None:
                        failed += 1
                    else:
                        rows.append({**row, "round": round_})
    table = markdown_table(_merge_rounds(rows, args.device)) + "\n\n" + _footer(args.device, args.threads)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")
    if failed:
        sys.exit(f"{failed} run(s) failed (their errors are above)")


if __name__ == "__main__":
    main()
