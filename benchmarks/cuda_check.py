"""One-shot CUDA check: device tests, CPU-vs-CUDA logits, throughput and peak memory (issue 13).

In one process (target: under 5 minutes on one GPU):

1. the device-parametrised tests (``pytest -k cuda``);
2. CPU-vs-CUDA equality of every registered model's logits (eval mode, float32);
3. training and inference throughput, eager and ``torch.compile``: coc_tiny (224x224,
   batch 64), pointmlp / pointmlp_elite / pointmlp_coc (1024 points, batch 32), with the
   peak CUDA memory of each row.

It prints one table. The V100 figures in the last column are QUOTED from the papers
(inference); everything else is measured by the run. Without CUDA (or with
``--cpu-smoke``) it runs a small CPU version of the throughput rows (eager; batch 2,
64x64 images, 256 points) and marks the CUDA-only rows "skipped: no CUDA".

    python benchmarks/cuda_check.py               # on a GPU machine
    python benchmarks/cuda_check.py --cpu-smoke   # the CPU-only parts
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pointcoc as pc  # noqa: E402
from benchmarks.harness import markdown_table, peak_cuda_gb, pin_threads, time_steps  # noqa: E402

__all__ = ["PUBLISHED_V100", "main"]

#: QUOTED published inference throughput on one V100 (images or samples per second)
PUBLISHED_V100 = {"coc_tiny": 518, "pointmlp": 112, "pointmlp_elite": 176}
#: (model, batch) of the throughput rows on a GPU and in the CPU smoke run
GPU_ROWS = [("coc_tiny", 64), ("pointmlp", 32), ("pointmlp_elite", 32), ("pointmlp_coc", 32)]
SMOKE_ROWS = [(name, 2) for name, _ in GPU_ROWS]


def _input(name: str, batch: int, device: str, smoke: bool, seed: int = 0):
    """A random input batch of the model's kind (image points or ``[B, 3, n]`` clouds)."""
    g = torch.Generator().manual_seed(seed)
    if name.startswith("pointmlp"):
        return torch.randn(batch, 3, 256 if smoke else 1024, generator=g).to(device)
    side = 64 if smoke else 224
    return pc.image_to_points(torch.rand(batch, 3, side, side, generator=g).to(device))


def _model(name: str, smoke: bool, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("pointmlp"):
        kw["points"] = 256 if smoke else 1024
    return pc.create_model(name, num_classes=15 if name.startswith("pointmlp") else 1000, **kw)


def device_tests() -> Dict:
    """Run the CUDA-parametrised tests in this process."""
    import pytest

    t0 = time.perf_counter()
    code = pytest.main(["-q", "-x", "-k", "cuda", "-p", "no:cacheprovider", os.path.join(ROOT, "tests")])
    return {"check": "pytest -k cuda", "result": "pass" if code == 0 else f"FAIL (exit {int(code)})",
            "seconds": time.perf_counter() - t0}  # fmt: skip


def logits_match(name: str) -> Dict:
    """CPU vs CUDA logits of one registered model (eval, float32, batch 2)."""
    model = _model(name, smoke=False).eval()
    inp = _input(name, 2, "cpu", smoke=name.startswith("coc"))  # 64x64 images: every stage still has points
    with torch.no_grad():
        cpu = model(inp)
        cuda = model.cuda()(_input(name, 2, "cuda", smoke=name.startswith("coc"))).cpu()
    diff = (cpu - cuda).abs().max().item()
    ok = torch.allclose(cuda, cpu, rtol=1e-3, atol=1e-3)
    return {"check": f"logits CPU vs CUDA: {name}", "result": ("pass" if ok else "FAIL") + f" (max |diff| {diff:.1e})"}


def throughput(name: str, batch: int, device: str, train: bool, compiled: bool, smoke: bool) -> Dict:
    """Samples per second of training steps or inference forwards; peak CUDA memory of the timed steps."""
    kw = {"fps_random_start": True} if name.startswith("pointmlp") else {}
    model = _model(name, smoke, **kw).to(device).train(train)
    forward = torch.compile(model) if compiled else model
    inp = _input(name, batch, device, smoke)
    labels = torch.randint(0, 15 if name.startswith("pointmlp") else 1000, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        if not train:
            with torch.no_grad():
                forward(inp)
            return
        loss = torch.nn.functional.cross_entropy(forward(inp), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    wall, _ = time_steps(step, warmup=2, steps=1 if smoke else 5, device=device)
    row = {"check": f"{'train' if train else 'infer'} {name} b{batch}", "compiled": "yes" if compiled else "no",
           "result": "ok", "samples/s": batch / wall, "seconds": time.perf_counter() - t0}  # fmt: skip
    if device == "cuda":
        row["peak CUDA GB"] = peak_cuda_gb(device)
    if not train and name in PUBLISHED_V100 and device == "cuda":
        row["published V100 samples/s (quoted)"] = PUBLISHED_V100[name]
    return row


def _guarded(fn, label: str, *args) -> Dict:
    """Run one check; a failure becomes a FAIL row instead of ending the run."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table
        return {"check": label, "result": f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="CPU-only parts (automatic without CUDA)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the device tests")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    rows: List[Dict] = []
    if smoke:
        rows.append({"check": "pytest -k cuda", "result": "skipped: no CUDA"})
        rows.append({"check": "logits CPU vs CUDA: every model", "result": "skipped: no CUDA"})
    else:
        if not args.skip_tests:
            rows.append(device_tests())
        rows += [_guarded(logits_match, f"logits CPU vs CUDA: {n}", n) for n in pc.list_models()]
    for name, batch in SMOKE_ROWS if smoke else GPU_ROWS:
        for train in (True, False):
            for compiled in (False, True):
                label = f"{'train' if train else 'infer'} {name} b{batch}"
                if smoke and compiled:  # CPU inductor compilation alone takes minutes: tests/test_compile.py covers it
                    rows.append({"check": label, "compiled": "yes", "result": "skipped: CPU smoke"})
                    continue
                rows.append(_guarded(throughput, label, name, batch, device, train, compiled, smoke))
    print(markdown_table(rows))
    where = "CPU smoke run (small inputs)" if smoke else torch.cuda.get_device_name()
    print(f"\nMeasured now on {where}, torch {torch.__version__}; 'published V100' figures are QUOTED, not measured.")
    if any(str(r.get("result", "")).startswith("FAIL") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
