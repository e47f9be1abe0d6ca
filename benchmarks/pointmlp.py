"""Training throughput and peak memory of PointMLP / PointMLP-elite / PointMLP-CoC.

Every (model, batch size) runs in a fresh subprocess so that its peak memory is its own:
CPU peak = ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read at the end of the run
(the whole process, Python and torch included); CUDA peak =
``torch.cuda.max_memory_allocated``. A step is forward + cross-entropy + backward +
SGD (momentum 0.9) on random clouds of ``--points`` points, with random FPS starts
(the training setting). The first ``--warmup`` steps are not timed.

``--baseline`` also runs, in the same conditions, the naive released-layout model of
``tests/test_pointmlp.py`` (Conv1d on ``[B*S, C, k]``, explicit ``[B, S, k, 2C]``
concatenation, cdist + topk, a Python FPS loop), for a like-for-like ratio on a
machine whose load differs from the one the published figures came from.

    python benchmarks/pointmlp.py                       # all models, batch 4, 8 and 32, CPU
    python benchmarks/pointmlp.py --quick --batch-sizes 4 8
    python benchmarks/pointmlp.py --models pointmlp_coc --device cuda --out results.md
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

__all__ = ["REFERENCE", "run_one", "main"]

MODELS = ["pointmlp", "pointmlp_elite", "pointmlp_coc", "pointmlp_elite_coc"]

#: published reference, batch 4 with 1024 points on this project's 2-core CPU machine:
#: (seconds per training step, peak RSS in GB)
REFERENCE = {"pointmlp": (4.0, 2.5), "pointmlp_coc": (6.5, 4.0)}
#: targets relative to the reference: time and memory
TARGET_TIME, TARGET_MEMORY = 0.8, 0.7


def run_one(
    model_name: str, batch: int, points: int, device: str, warmup: int, steps: int, recompute: bool, baseline: bool
) -> Dict:
    """Train ``steps`` timed steps in this process; return the measurements as a dict."""
    import torch

    import pointcoc as pc

    torch.manual_seed(0)
    if baseline:
        from tests.test_pointmlp import ReferencePointMLP

        model = ReferencePointMLP(model_name, num_classes=15, points=points)
    else:
        model = pc.create_model(model_name, num_classes=15, points=points, fps_random_start=True, recompute=recompute)
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    xyz = torch.randn(batch, 3, points, device=device)
    labels = torch.randint(0, 15, (batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(xyz), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    result = {
        "model": model_name,
        "implementation": "baseline" if baseline else "pointcoc",
        "batch": batch,
        "device": device,
        "recompute": recompute,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "s_per_step": wall / steps,
        "cpu_s_per_step": cpu / steps,
        "samples_per_s": batch * steps / wall,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # Linux: KiB
        "load_avg": os.getloadavg()[0],
    }
    if device.startswith("cuda"):
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def _spawn(args: argparse.Namespace, model_name: str, batch: int, recompute: bool, baseline: bool) -> Optional[Dict]:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker",
        "--models", model_name, "--batch-sizes", str(batch), "--device", args.device,
        "--points", str(args.points), "--warmup", str(args.warmup), "--steps", str(args.steps),
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if not recompute:
        cmd.append("--no-recompute")
    if baseline:
        cmd.append("--baseline")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{model_name} batch {batch}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory(r: Dict) -> float:
    """Peak memory of a run: CUDA allocations on a GPU, the whole process's RSS on the CPU."""
    return r.get("peak_cuda_gb", r["peak_rss_gb"])


def _ratio(value: float, reference: Optional[float]) -> str:
    return f"{value / reference:.2f}" if reference else ""


def _table(results: List[Dict]) -> str:
    cuda = any("peak_cuda_gb" in r for r in results)
    head = "| model | implementation | batch | recompute | s/step | CPU s/step | samples/s | peak RSS GB |"
    head += " peak CUDA GB |" if cuda else ""
    head += " time / published | memory / published | time / baseline | memory / baseline |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    baselines = {(r["model"], r["batch"]): r for r in results if r["implementation"] == "baseline"}
    for r in results:
        ours = r["implementation"] != "baseline"
        on_reference_setup = r["batch"] == 4 and r["device"] == "cpu"
        published = REFERENCE.get(r["model"], (None, None)) if on_reference_setup else (None, None)
        base = baselines.get((r["model"], r["batch"])) if ours else None
        row = (
            f"| {r['model']} | {r['implementation']} | {r['batch']} | "
            f"{('yes' if r['recompute'] else 'no') if ours else '-'} | "
            f"{r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | {r['samples_per_s']:.2f} | {r['peak_rss_gb']:.2f} |"
        )
        row += f" {r['peak_cuda_gb']:.2f} |" if cuda else ""
        ratios = [
            _ratio(r["s_per_step"], published[0]),
            _ratio(r["peak_rss_gb"], published[1]),
            _ratio(r["s_per_step"], base and base["s_per_step"]),
            _ratio(_memory(r), base and _memory(base)),
        ]
        lines.append(row + " " + " | ".join(ratios) + " |")
    lines.append("")
    lines.append(
        "Published reference (batch 4, 1024 points, this machine): "
        + "; ".join(f"{m}: {t} s/step, {g} GB peak RSS" for m, (t, g) in REFERENCE.items())
        + f". Targets: time <= {TARGET_TIME}x, memory <= {TARGET_MEMORY}x."
    )
    if results:
        lines.append(
            f"threads: {results[0]['threads']}; 1-min load average at the end of each run: "
            + ", ".join(f"{r['load_avg']:.1f}" for r in results)
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[4, 8, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 warm-up step and 2 timed steps")
    parser.add_argument(
        "--no-recompute", action="store_true", help="store the per-neighbour activations (no recomputation)"
    )
    parser.add_argument("--compare-recompute", action="store_true", help="run every configuration both ways")
    parser.add_argument(
        "--baseline", action="store_true", help="also run the naive released-layout model of the tests"
    )
    parser.add_argument("--threads", type=int, help="torch threads in every run (default: torch's choice)")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steps = 1, 2
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = run_one(
            args.models[0], args.batch_sizes[0], args.points, args.device, args.warmup, args.steps,
            not args.no_recompute, args.baseline,
        )  # fmt: skip
        print(json.dumps(result))
        return

    from tqdm import tqdm

    modes = [True, False] if args.compare_recompute else [not args.no_recompute]
    configs = [(m, b, r, False) for m in args.models for b in args.batch_sizes for r in modes]
    if args.baseline:
        configs += [(m, b, True, True) for m in args.models for b in args.batch_sizes]
    results = []
    for model_name, batch, recompute, baseline in tqdm(configs, desc="configurations"):
        result = _spawn(args, model_name, batch, recompute, baseline)
        if result is not None:
            results.append(result)
            tqdm.write(json.dumps(result))
    table = _table(results)
    print(table)
    if args.out:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(table + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
