"""Images as point sets: one CoC network on full, discrete, masked and irregular digits.

    python examples/images.py             # four formats, three ways each, seeds 0-2: the README table
    python examples/images.py --seeds 0   # one seed (a third of the time)
    python examples/images.py --quick     # a short point-mode run on the full grid only (the test uses it)

Data: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797
gray 8x8 images, 10 classes, no download), values ``/16`` into [0, 1], a stratified
75 / 25 train / test split (1,347 / 450 images), resized to 16x16 by bilinear
interpolation (``--size``; ``--size 8`` keeps the native 8x8). The resized pixels are
interpolated from the 64 real ones: at 8x8, half of the pixels of a digit leave too
little to read (an RBF SVM reaches 79% on format (b) at 8x8, 90% at 16x16).

Formats (each image becomes a point set ``x`` = gray value, ``pos`` = its pixel's position
on the full grid, docs/design.md §3.1):

(a) ``grid``: every pixel is a point;
(b) ``discrete``: a different random 50% of the pixels of each image, drawn anew every
    training step and fixed (seeded) for the test set;
(c) ``masked``: a random rectangle of about 25% of the image (aspect ratio between 1:2 and
    2:1, random place, redrawn every step) is hidden: those pixels are absent, not zero;
(d) ``disc``: only the pixels inside the disc inscribed in the image (the same for every image).

Each format is trained and tested three ways (``--feeds``), the same network ``coc_mini``
(3x3 stride-2 stem: the 16x16 digits give 8x8 points in stage 0) each time:

* ``point``: ``pc.create_model("coc_mini", num_classes=10, in_chans=1, mode="point")``, the
  path for any point set: reducers with one anchor per occupied lattice cell and the
  convolution kernel as rigid kernel points (a partial convolution: divided by the share of
  the kernel the present points cover), FPS cluster centres inside each region;
* ``lattice``: ``mode="lattice"``, the pixel-grid fast path: reducers as sparse partial
  convolutions on the pixel lattice, clusters with the grid-bin proposal over the points present;
* ``zeros``: the ConvNet way, lattice mode on the full grid with the missing pixels set to
  zero (the test masks are the same). For (a) it is the ``lattice`` run.

In ``point`` and ``lattice`` nothing is zero-filled: absent pixels take no part in the
normalisation, the clustering or the pooling.

Training: AdamW (lr 3e-3, weight decay 0.05), one warm-up epoch then a cosine schedule,
label smoothing 0.1, batch 64, 20 epochs, one CPU thread, seeded (the run is deterministic
on one machine). A seed fixes the train / test split, the initial weights, the batch order and
the masks. Each cell is the mean over the seeds (0, 1 and 2 by default: one test image is
0.22% of a seed's 450, so one seed cannot rank close columns), with their range. The 33 runs
take about 50 CPU minutes (measured: 2,912 s), spread over ``--jobs`` worker processes (default:
one per core).
Prints a table and writes ``results.json`` (every seed's accuracy too) to ``--output``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch
from tqdm.auto import tqdm

import pointcoc as pc
from pointcoc._files import atomic_write
from pointcoc.models.configs import VARIANTS

__all__ = ["FORMATS", "FEEDS", "load_digit_split", "format_mask", "to_points", "train_and_test", "build_parser", "main"]

FORMATS = ("grid", "discrete", "masked", "disc")
FEEDS = ("point", "lattice", "zeros")
KEEP_RATIO = 0.5  # discrete pixels kept
HIDDEN_AREA = 0.25  # masked: share of the image under the rectangle
MODEL = "coc_mini"


def load_digit_split(size: int = 16, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as ``[N, 1, size, size]`` float images in [0, 1] with labels, split 75 / 25 (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != images.size(-1):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train, test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.25, random_state=seed, stratify=labels.numpy()
    )
    return images[train], labels[train], images[test], labels[test]


def format_mask(fmt: str, count: int, size: int, generator: torch.Generator) -> Optional[Tensor]:
    """Pixels that exist in format ``fmt``: ``[count, size, size]`` bool (``None`` for the full grid)."""
    if fmt == "grid":
        return None
    if fmt == "discrete":  # exactly ceil(50%) of the pixels of every image, uniformly at random
        keep = math.ceil(KEEP_RATIO * size * size)
        rank = torch.rand(count, size * size, generator=generator).argsort(1).argsort(1)
        return (rank < keep).view(count, size, size)
    if fmt == "masked":  # a rectangle of ~25% of the area, aspect ratio between 1:2 and 2:1, random place
        area = HIDDEN_AREA * size * size
        low, high = max(1, math.ceil(math.sqrt(area / 2))), min(size, math.floor(math.sqrt(2 * area)))
        h = torch.randint(low, high + 1, (count,), generator=generator)
        w = (area / h).round().long().clamp(1, size)
        top = (torch.rand(count, generator=generator) * (size - h + 1)).long()
        left = (torch.rand(count, generator=generator) * (size - w + 1)).long()
        idx = torch.arange(size)
        rows = (idx >= top[:, None]) & (idx < (top + h)[:, None])
        cols = (idx >= left[:, None]) & (idx < (left + w)[:, None])
        return ~(rows[:, :, None] & cols[:, None, :])
    if fmt == "disc":  # inscribed disc around the image centre
        centre = (size - 1) / 2.0
        idx = torch.arange(size, dtype=torch.float32) - centre
        inside = idx[:, None] ** 2 + idx[None, :] ** 2 <= (size / 2.0) ** 2
        return inside.expand(count, size, size)
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def to_points(images: Tensor, mask: Optional[Tensor], feed: str) -> Batch:
    """A batch as the network's input: the kept pixels as points (``feed`` ``"point"`` or
    ``"lattice"``), or the full grid with the missing pixels set to zero (``feed="zeros"``).
    ``images: [B, 1, S, S]``, ``mask: [B, S, S]`` bool (``None``: every pixel)."""
    if mask is None:
        return pc.image_to_points(images)
    if feed != "zeros":
        return pc.image_to_points(images, mask=mask)
    return pc.image_to_points(images * mask.unsqueeze(1).to(images.dtype))


def _evaluate(
    model: torch.nn.Module, images: Tensor, labels: Tensor, masks: Optional[Tensor], feed: str, batch_size: int
) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(labels), batch_size):
            mask = None if masks is None else masks[s : s + batch_size]
            logits = model(to_points(images[s : s + batch_size], mask, feed))
            correct += int((logits.argmax(1) == labels[s : s + batch_size]).sum())
    return correct / len(labels)


def train_and_test(
    fmt: str,
    feed: str,
    data: Tuple[Tensor, Tensor, Tensor, Tensor],
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> Dict[str, float]:
    """Train a fresh ``coc_mini`` on format ``fmt`` fed as ``feed``; returns test accuracy and seconds."""
    train_x, train_y, test_x, test_y = data
    size = train_x.size(-1)
    torch.manual_seed(seed)
    model = pc.create_model(MODEL, num_classes=10, in_chans=1, mode="point" if feed == "point" else "lattice")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_y) / batch_size)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch

    def lr_factor(step: int) -> float:  # linear warm-up over the first epoch, then cosine to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order_gen = torch.Generator().manual_seed(seed + 1)
    mask_gen = torch.Generator().manual_seed(seed + 2)
    test_masks = format_mask(fmt, len(test_y), size, torch.Generator().manual_seed(seed + 3))
    start, cpu = time.perf_counter(), time.process_time()
    bar = tqdm(range(epochs), desc=f"{fmt:>8} {feed:>6}", leave=False, disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(train_y), generator=order_gen)
        running = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            points = to_points(train_x[idx], format_mask(fmt, len(idx), size, mask_gen), feed)
            loss = F.cross_entropy(model(points), train_y[idx], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item() * len(idx)
        bar.set_postfix(loss=f"{running / len(order):.3f}")
    accuracy = _evaluate(model, test_x, test_y, test_masks, feed, 2 * batch_size)
    return dict(accuracy=accuracy, seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)


def _at_least(low: int):
    """An argparse type: an integer >= ``low`` (argparse prints the one-line error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="short run (3 epochs, full grid in point mode unless --formats / --feeds)"
    )
    parser.add_argument("--formats", nargs="+", choices=FORMATS, help="formats to run (default: all; --quick: grid)")
    parser.add_argument("--feeds", nargs="+", choices=FEEDS, help="ways to feed them (default: all; --quick: point)")
    parser.add_argument("--epochs", type=_at_least(1), help="training epochs per run (default 20; --quick 3)")
    parser.add_argument("--batch-size", type=_at_least(2), default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument(
        "--size",
        type=_at_least(8),
        default=16,
        help="resize the 8x8 digits to size x size, bilinear (default 16; 8 = no resizing)",
    )
    parser.add_argument(
        "--seeds", type=_at_least(0), nargs="+", help="seeds to run; cells show their mean (default: 0 1 2; --quick: 0)"
    )
    parser.add_argument(
        "--threads",
        type=_at_least(1),
        default=1,
        help="torch CPU threads (default 1: these tensors are small, threads mostly add overhead)",
    )
    parser.add_argument(
        "--jobs",
        type=_at_least(1),
        help="runs trained at once in worker processes, one thread each (each seeded: the same results as one "
        "by one; default: one per core, 1 with --quick)",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/images"), help="folder for results.json")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    return parser


def _cell(run: Dict[str, object]) -> str:
    """``98.0%``, or with several seeds their mean and range: ``97.6% (97.1-98.0)``."""
    values = [100 * a for a in run.get("accuracies", [run["accuracy"]])]
    mean = f"{100 * run['accuracy']:.1f}%"
    return mean if len(values) == 1 else f"{mean} ({min(values):.1f}-{max(values):.1f})"


def _table(results: Dict[str, Dict[str, Dict[str, object]]]) -> str:
    names = {"point": "point mode (FPS centres)", "lattice": "lattice mode", "zeros": "zero-filled grid"}
    feeds = [f for f in FEEDS if any(f in runs or (f == "zeros" and "lattice" in runs) for runs in results.values())]
    lines = ["| format | " + " | ".join(names[f] for f in feeds) + " |", "|---" * (len(feeds) + 1) + "|"]
    for fmt, runs in results.items():
        cells = []
        for feed in feeds:
            run = runs.get(feed, runs.get("lattice") if (feed, fmt) == ("zeros", "grid") else None)
            same = " (lattice run)" if (feed, fmt) == ("zeros", "grid") else ""
            cells.append("-" if run is None else _cell(run) + same)
        lines.append(f"| {fmt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _train_run(run: Tuple[int, str, str], splits, epochs: int, args: argparse.Namespace) -> Dict[str, float]:
    torch.set_num_threads(args.threads)
    seed, fmt, feed = run
    return train_and_test(
        fmt,
        feed,
        splits[seed],
        epochs,
        args.batch_size,
        args.lr,
        args.weight_decay,
        args.label_smoothing,
        seed=seed,
        progress=not args.no_progress and args.jobs == 1 and sys.stderr.isatty(),
    )


def _report(run: Tuple[int, str, str], result: Dict[str, float]) -> Dict[str, float]:
    seed, fmt, feed = run
    print(
        f"{fmt:>8} {feed:>7} seed {seed}: test accuracy {100 * result['accuracy']:.1f}% "
        f"({result['seconds']:.0f} s, CPU {result['cpu_seconds']:.0f} s)",
        flush=True,
    )
    return result


def _train_all(runs: List[Tuple[int, str, str]], train, jobs: int) -> List[Dict[str, float]]:
    """Every run's result, in order: one by one, or in ``jobs`` forked workers (one thread each, seeded alike)."""
    if jobs == 1:
        return [_report(run, train(run)) for run in runs]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return [_report(run, result) for run, result in zip(runs, pool.map(train, runs))]


def _over_seeds(results: List[Dict[str, float]]) -> Dict[str, object]:
    """One cell: the mean accuracy over seeds, every seed's accuracy, and the summed times."""
    accuracies = [r["accuracy"] for r in results]
    return dict(
        accuracy=sum(accuracies) / len(accuracies),
        accuracies=accuracies,
        seconds=sum(r["seconds"] for r in results),
        cpu_seconds=sum(r["cpu_seconds"] for r in results),
    )


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Run the comparison; returns ``{"results": {format: {feed: {accuracy, accuracies, ...}}}, "seconds": ...}``."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    formats = args.formats or (["grid"] if args.quick else list(FORMATS))
    feeds = args.feeds or (["point"] if args.quick else list(FEEDS))
    epochs = args.epochs or (3 if args.quick else 20)
    seeds = list(dict.fromkeys(args.seeds or ([0] if args.quick else [0, 1, 2])))
    start, cpu = time.perf_counter(), time.process_time()
    splits = {seed: load_digit_split(args.size, seed) for seed in seeds}
    resized = "" if args.size == 8 else f", resized to {args.size}x{args.size} (bilinear)"
    print(
        f"digits: {len(splits[seeds[0]][1])} train / {len(splits[seeds[0]][3])} test images of 8x8{resized}; "
        f"{MODEL} with stem {VARIANTS[MODEL].stem}, {epochs} epochs per run, seeds {seeds}"
    )
    pairs = [(fmt, feed) for fmt in formats for feed in feeds if not (fmt == "grid" and feed == "zeros")]
    runs = [(seed, fmt, feed) for fmt, feed in pairs for seed in seeds]
    if args.jobs is None:
        args.jobs = 1 if args.quick else max(1, min(os.cpu_count() or 1, len(runs)))
    done = _train_all(runs, functools.partial(_train_run, splits=splits, epochs=epochs, args=args), args.jobs)
    results: Dict[str, Dict[str, Dict[str, object]]] = {fmt: {} for fmt in formats}
    for fmt, feed in pairs:
        results[fmt][feed] = _over_seeds([r for (_, f, d), r in zip(runs, done) if (f, d) == (fmt, feed)])
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu + (sum(r["cpu_seconds"] for r in done) if args.jobs > 1 else 0.0)
    print("\n" + _table(results) + f"\n\ntotal time {seconds:.0f} s (CPU time {cpu_seconds:.0f} s)")
    summary = dict(
        results=results,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        epochs=epochs,
        size=args.size,
        seeds=seeds,
        model=MODEL,
        stem=VARIANTS[MODEL].stem,
    )
    atomic_write(args.output / "results.json", json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
