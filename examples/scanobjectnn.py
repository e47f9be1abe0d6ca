"""Train and evaluate PointMLP / PointMLP-CoC, or a CoC backbone in point mode, on ScanObjectNN.

On real data the default is the reference recipe (docs/design.md §11): PointMLP-CoC,
the PB_T50_RS variant, the first 1024 points, scale/shift/shuffle augmentation,
SGD (momentum 0.9, lr 0.01, weight decay 1e-4), cosine schedule to lr/100,
batch 32 (last batch dropped), 250 epochs, label smoothing 0.2.

Without the real files (``datasets/scanobjectnn/h5_files/...``, see
``datasets/README.md``) it says so and runs a demo: a procedurally generated
stand-in set in the same HDF5 format (written once under
``datasets/scanobjectnn_demo/``) with a lighter setting that finishes in about
4 minutes on one core of a 2-core CPU (the banner states it; the epoch lines show the time left).

    python examples/scanobjectnn.py                         # demo, or real data if present
    python examples/scanobjectnn.py --data-dir /data/scanobjectnn --variant OBJ_BG
    python examples/scanobjectnn.py --model coc_mini --num-points 256   # a CoC backbone on the clouds
    python examples/scanobjectnn.py --resume                # continue the run in --output
    python examples/scanobjectnn.py --eval-only --checkpoint runs/scanobjectnn_demo/best.pt
    torchrun --nproc_per_node 4 examples/scanobjectnn.py --data-dir /data/scanobjectnn

Outputs (rank 0): ``metrics.csv``, ``metrics.json``, ``last.pt``, ``best.pt`` in
``--output``; ``--eval-only`` writes ``eval.json`` there. Bad data files or
checkpoints end the run with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

# On a busy CPU, OpenMP threads that spin while they wait make training several times slower;
# let them sleep instead. Takes effect only when set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import pointcoc.models.pointmlp  # noqa: F401  (registers the PointMLP family)
from pointcoc._files import WriteError, atomic_write
from pointcoc.data import CLASS_NAMES, VARIANTS, ScanObjectNN, dataset_file, ensure_demo_dataset
from pointcoc.data.scanobjectnn import DEFAULT_MAX_BYTES
from pointcoc.models import create_model, list_models
from pointcoc.training import (
    BatchAdapter,
    DistributedContext,
    Trainer,
    channels_first,
    cleanup_distributed,
    load_checkpoint,
    point_batch,
    repair_best_checkpoint,
    seed_everything,
    setup_distributed,
    summary_lines,
)

REPO = Path(__file__).resolve().parent.parent
REAL_ROOT = REPO / "datasets" / "scanobjectnn"
DEMO_ROOT = REPO / "datasets" / "scanobjectnn_demo"

RECIPE: Dict[str, Any] = dict(
    model="pointmlp_coc",
    num_points=1024,
    epochs=250,
    optimizer="sgd",
    batch_size=32,
    lr=0.01,
    weight_decay=1e-4,
    model_kwargs={},
)
"""The reference setting, the default on real data."""

DEMO: Dict[str, Any] = dict(
    model="pointmlp_elite_coc",
    num_points=128,
    epochs=10,
    optimizer="adamw",
    batch_size=16,
    lr=0.002,
    weight_decay=1e-4,
    model_kwargs={"k_neighbors": 8, "recompute": False, "zero_init_last": True},
)
"""The lighter demo setting: about :data:`DEMO_MINUTES` minutes on one core of a 2-core CPU. 128 points leave 16
per cloud in the third stage; 8 neighbours (24 in the paper) cost half of 16 and learned better in 12 epochs;
AdamW reaches in ~900 steps what SGD needs thousands for; residual blocks start as identities
(``zero_init_last``: with the reference's initialisation the first epochs learn almost nothing, 66-74% test OA
after 12 epochs instead of 89-90%); no activation recomputation (memory is no concern at this size)."""
DEMO_TRAIN_PER_CLASS = 100
DEMO_TEST_PER_CLASS = 20
DEMO_DATA_SEED = 0

RUN_KEYS = (
    "model",
    "variant",
    "epochs",
    "optimizer",
    "batch_size",
    "lr",
    "weight_decay",
    "num_points",
    "seed",
    "amp",
    "demo",
    "model_kwargs",
)
"""Settings that define a run: taken from the checkpoint on ``--resume`` and ``--eval-only``."""


DEMO_MINUTES = 4
"""Measured wall time of the whole default demo run, data generation included, on the 2-core CPU this
project is developed on with one other process running: ``python examples/scanobjectnn.py`` took 3 min 51 s
(215 s CPU); beside two other processes, 5 min 7 s."""


class RunError(Exception):
    """A problem to report in one line (bad data, bad checkpoint, bad setting); exit code 2."""


def _fps_random_start(value: bool) -> Callable[[torch.nn.Module], None]:
    """Hook: PointMLP starts FPS at a random point while training, at index 0 (the reference kernel) in evaluation."""

    def hook(model: torch.nn.Module) -> None:
        model.fps_random_start = value

    return hook


POINTMLP_ADAPTER = BatchAdapter(channels_first, on_train=_fps_random_start(True), on_eval=_fps_random_start(False))
"""How the PointMLP family sees a batch: ``[B, 3, n]`` clouds, random FPS start while training."""

COC_ADAPTER = BatchAdapter(point_batch)
"""How a CoC backbone sees a batch: a point set with xyz as positions and as features (``pos_dim=3``, point
mode); its FPS centres start at a random point in training mode by themselves."""


def _is_pointmlp(name: str) -> bool:
    return name.startswith("pointmlp")


def _model_kwargs(name: str, base: Dict[str, Any]) -> Dict[str, Any]:
    """The setting's extra model arguments for ``name`` (the PointMLP ones do not apply to CoC backbones)."""
    return dict(base["model_kwargs"]) if _is_pointmlp(name) else {}


def build_model(settings: Dict[str, Any]) -> tuple:
    """The run's model and its :class:`BatchAdapter`: a PointMLP on ``[B, 3, n]``, or a CoC backbone in point mode."""
    name, classes = settings["model"], len(CLASS_NAMES)
    if _is_pointmlp(name):
        return create_model(
            name, num_classes=classes, points=settings["num_points"], **settings["model_kwargs"]
        ), POINTMLP_ADAPTER
    return create_model(
        name, num_classes=classes, in_chans=3, pos_dim=3, mode="point", **settings["model_kwargs"]
    ), COC_ADAPTER


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (defaults of None are resolved to the recipe or the demo setting)."""
    models = list_models("pointmlp*") + list_models("coc*")
    p = argparse.ArgumentParser(
        description="Train PointMLP / PointMLP-CoC, or a CoC backbone in point mode (--model coc_*), on "
        "ScanObjectNN (or on a generated demo set when the real "
        "files are absent). Real-data defaults follow the reference recipe: "
        + _setting_text(RECIPE)
        + "; demo defaults: "
        + _setting_text(DEMO)
        + ".",
    )
    p.add_argument(
        "--model",
        choices=models,
        default=None,
        help=f"network (real data: {RECIPE['model']}; demo: {DEMO['model']}); a coc_* variant is a "
        "context-cluster backbone in point mode (xyz as positions and features)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"folder holding h5_files/ of ScanObjectNN (default {_rel(REAL_ROOT)}; when it is absent the "
        "demo set is used)",
    )
    p.add_argument(
        "--variant",
        choices=list(VARIANTS),
        default=None,
        help="ScanObjectNN variant: PB_T50_RS (hardest, default), OBJ_BG or OBJ_ONLY",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"training epochs; the cosine schedule spans them (real data: {RECIPE['epochs']}; demo: {DEMO['epochs']})",
    )
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default=None,
        help="sgd (momentum 0.9, the reference) or adamw (real data: sgd; demo: adamw)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="global batch size, split over the processes; the last incomplete batch is dropped "
        f"(real data: {RECIPE['batch_size']}; demo: {DEMO['batch_size']})",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"initial learning rate, cosine-annealed to lr/100 (real data: {RECIPE['lr']}; demo: {DEMO['lr']})",
    )
    p.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=None,
        help=f"weight decay (default {RECIPE['weight_decay']}; some PointMLP versions used 2e-4)",
    )
    p.add_argument(
        "--num-points",
        type=_positive_int,
        default=None,
        help=f"points per object: the first N of each object's 2048 (real data: {RECIPE['num_points']}; "
        f"demo: {DEMO['num_points']})",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=None,
        help="seed of initialisation, data order and augmentation (default 0)",
    )
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="data-loading worker processes per GPU/process (default: min(4, CPUs) on real data, 0 for the demo)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads per process (default: 1 for the demo, whose small tensors gain little from more and "
        "lose much when the cores are shared; PyTorch's default on real data)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu; "
        "under torchrun each process uses GPU LOCAL_RANK)",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        default=None,
        help="mixed precision: float16 with loss scaling on CUDA, bfloat16 on CPU",
    )
    p.add_argument(
        "--output",
        default=None,
        help="folder for metrics.csv, metrics.json, last.pt and best.pt (default runs/scanobjectnn_demo "
        "for the demo (runs/scanobjectnn_demo_<model> for another model), "
        "runs/scanobjectnn_<variant>_<model> on real data)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --output from its last.pt (or from --checkpoint), with "
        "the settings stored in it",
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate a checkpoint (--checkpoint, default <output>/best.pt) on the test set, print its "
        "metrics next to the ones stored with it and write eval.json",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint for --eval-only (default <output>/best.pt) or --resume (default <output>/last.pt)",
    )
    p.add_argument(
        "--demo", action="store_true", default=None, help="use the generated demo set even when real files are present"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars, one line per epoch only (bars are shown only on a terminal anyway)",
    )
    p.add_argument(
        "--max-data-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BYTES,
        help=f"refuse data files whose points would take more memory than this (default "
        f"{DEFAULT_MAX_BYTES} = 1 GiB; the largest ScanObjectNN split needs 280 MB)",
    )
    return p


def _setting_text(s: Dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in s["model_kwargs"].items())
    model = f"{s['model']}({extra})" if extra else s["model"]
    return (
        f"{model}, {s['num_points']} points, {s['epochs']} epochs, {s['optimizer'].upper()} lr "
        f"{s['lr']}, batch {s['batch_size']}, weight decay {s['weight_decay']}"
    )


def _rel(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _resolve(args: argparse.Namespace, ckpt: Optional[Dict[str, Any]], say: Callable[[str], None]) -> Dict[str, Any]:
    """Settings of this run: the checkpoint's (resume / eval-only), else the command line over the defaults."""
    cli = {k: getattr(args, k) for k in RUN_KEYS if k != "model_kwargs"}
    if ckpt is not None:
        stored = ckpt["args"]
        missing = [k for k in RUN_KEYS if k not in stored]
        if missing:
            raise RunError(f"checkpoint lacks the run settings {', '.join(missing)}")
        settings = {k: stored[k] for k in RUN_KEYS}
        if args.eval_only and cli["batch_size"] is not None:
            settings["batch_size"] = cli["batch_size"]
        ignored = [f"--{k.replace('_', '-')} {v}" for k, v in cli.items() if v is not None and v != settings[k]]
        if ignored:
            say(f"note: ignoring {', '.join(ignored)}: the checkpoint's settings are used")
        settings["data_dir"] = args.data_dir if args.data_dir is not None else stored.get("data_dir")
        return settings
    demo = bool(cli["demo"])
    if not demo and args.data_dir is None:
        variant = cli["variant"] or "PB_T50_RS"
        if not any(dataset_file(REAL_ROOT, variant, s).exists() for s in ("train", "test")):
            say(
                f"ScanObjectNN not found: put its h5_files folder in {_rel(REAL_ROOT)} (see datasets/README.md); "
                f"training on the generated demo set instead"
            )
            demo = True
    base = DEMO if demo else RECIPE
    settings = {k: (cli.get(k) if cli.get(k) is not None else base.get(k)) for k in RUN_KEYS}
    settings.update(
        demo=demo,
        variant=cli["variant"] or "PB_T50_RS",
        seed=cli["seed"] or 0,
        amp=bool(cli["amp"]),
        model_kwargs=_model_kwargs(cli["model"] or base["model"], base),
    )
    settings["data_dir"] = args.data_dir
    return settings


def _load_data(
    settings: Dict[str, Any], ctx: DistributedContext, say: Callable[[str], None], max_bytes: int, bars: bool
):
    """Train and test sets (generating the demo set first when needed; ``bars``: show its progress bar)."""
    if settings["demo"]:
        root = DEMO_ROOT
        if ctx.local_rank == 0:  # one writer per node (atomic writes make a shared disk safe too)
            made = ensure_demo_dataset(
                root, DEMO_TRAIN_PER_CLASS, DEMO_TEST_PER_CLASS, seed=DEMO_DATA_SEED, progress=ctx.is_main and bars
            )
            say(f"demo set {'written to' if made else 'reused from'} {_rel(root)}")
        ctx.barrier()
    else:
        root = Path(settings["data_dir"]) if settings["data_dir"] else REAL_ROOT
    try:
        train = ScanObjectNN(
            root, "train", settings["variant"], settings["num_points"], seed=settings["seed"], max_bytes=max_bytes
        )
        test = ScanObjectNN(root, "test", settings["variant"], settings["num_points"], max_bytes=max_bytes)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return train, test


def _banner(
    settings: Dict[str, Any],
    train: ScanObjectNN,
    test: ScanObjectNN,
    model: torch.nn.Module,
    ctx: DistributedContext,
    workers: int,
    output: Path,
    say: Callable[[str], None],
) -> None:
    params = sum(p.numel() for p in model.parameters())
    say("=" * 100)
    if settings["demo"]:
        say(
            f"DEMO RUN on generated stand-in objects ({len(CLASS_NAMES)} classes; {len(train)} train / {len(test)} "
            f"test objects, {train.points.shape[1]} of 2048 points each) - not ScanObjectNN, numbers are not "
            f"comparable to the paper"
        )
        say(
            f"lighter demo setting: {_setting_text(settings)}; on real data the default is the paper's "
            f"setting: {_setting_text(RECIPE)}"
        )
    else:
        say(
            f"ScanObjectNN {settings['variant']} from {_rel(train.root)}: {len(train)} train / {len(test)} test "
            f"objects, first {settings['num_points']} points"
        )
        say(f"setting: {_setting_text(settings)}")
    say(
        f"model {settings['model']} ({params:,} parameters) | cosine schedule to lr/100, label smoothing 0.2, "
        f"scale/shift/shuffle augmentation, seed {settings['seed']}"
    )
    say(
        f"device {ctx.device} x {ctx.world_size} process(es), {torch.get_num_threads()} CPU thread(s), "
        f"AMP {'on' if settings['amp'] else 'off'}, "
        f"{workers} loader worker(s), output {_rel(output)}"
    )
    if settings["demo"]:
        default = all(settings[k] == DEMO[k] for k in DEMO) and torch.get_num_threads() == 1
        say(
            f"expected duration: about {DEMO_MINUTES} min on a 2-core CPU shared with another process (measured), "
            f"less on a faster machine; every epoch line shows the time left (eta)"
            if default
            else f"expected duration: not measured for this setting (the default demo takes about {DEMO_MINUTES} "
            f"min on a 2-core CPU); every epoch line shows the time left (eta)"
        )
    else:
        say(
            f"expected duration: {settings['epochs']} epochs of {len(train)} objects take hours on a GPU and far "
            f"longer on a CPU; every epoch line shows the time left (eta) measured on this machine"
        )
    say("=" * 100)


def _load_checkpoint_arg(args: argparse.Namespace, say: Callable[[str], None]) -> Optional[tuple]:
    """``(path, checkpoint)`` for --resume / --eval-only (best.pt repaired from last.pt first), else None."""
    if not (args.resume or args.eval_only):
        return None
    if args.resume and args.eval_only:
        raise RunError("use either --resume or --eval-only, not both")
    default_name = "best.pt" if args.eval_only else "last.pt"
    path = Path(args.checkpoint) if args.checkpoint else None
    if path is None:
        path = (Path(args.output) if args.output is not None else _default_output(args)) / default_name
    try:
        if path.name in ("best.pt", "last.pt"):  # every rank, so that an error stops all alike (no hang)
            note = repair_best_checkpoint(path.parent)  # a kill between last.pt and best.pt; same bytes on any rank
            if note:
                say(f"note: {note}")
        ckpt = load_checkpoint(path)
    except ValueError as exc:
        hint = "; nothing to resume (run without --resume to start)" if args.resume else ""
        raise RunError(f"{exc}{hint}") from None
    say(f"{'resuming from' if args.resume else 'evaluating'} {_rel(path)} (after epoch {ckpt['epoch']})")
    return path, ckpt


def _evaluate(
    trainer: Trainer, ckpt: Dict[str, Any], output: Path, ctx: DistributedContext, say: Callable[[str], None]
) -> int:
    metrics = trainer.evaluate()
    stored = ckpt.get("test_metrics", {})
    say(f"test (evaluated now): loss {metrics['loss']:.4f}  OA {metrics['oa']:.2f}%  mAcc {metrics['macc']:.2f}%")
    if stored:
        say(
            f"test (stored with the checkpoint, epoch {stored['epoch']}): loss {stored['test_loss']:.4f}  "
            f"OA {stored['test_oa']:.2f}%  mAcc {stored['test_macc']:.2f}%"
        )
    if ctx.is_main:
        result = {
            "checkpoint_epoch": ckpt["epoch"],
            "test_loss": metrics["loss"],
            "test_oa": metrics["oa"],
            "test_macc": metrics["macc"],
            "stored": stored,
        }
        atomic_write(output / "eval.json", json.dumps(result, indent=2) + "\n")
    return 0


def _run(
    args: argparse.Namespace, ctx: DistributedContext, say: Callable[[str], None], start: float, state: Dict[str, Any]
) -> int:
    loaded = _load_checkpoint_arg(args, say)
    path, ckpt = loaded if loaded is not None else (None, None)
    settings = _resolve(args, ckpt, say)
    if args.output is not None:
        output = Path(args.output)
    elif args.eval_only and args.checkpoint:
        output = Path(args.checkpoint).parent
    else:
        output = _default_output(args, settings)
    workers = args.workers if args.workers is not None else (0 if settings["demo"] else min(4, os.cpu_count() or 1))
    threads = args.threads if args.threads is not None else (1 if settings["demo"] else None)
    if threads is not None:
        torch.set_num_threads(threads)

    train, test = _load_data(settings, ctx, say, args.max_data_bytes, not args.no_progress and sys.stderr.isatty())
    seed_everything(settings["seed"] + ctx.rank)
    try:
        model, adapter = build_model(settings)
        trainer = Trainer(
            model,
            train,
            test,
            adapter=adapter,
            num_classes=len(CLASS_NAMES),
            epochs=settings["epochs"],
            optimizer=settings["optimizer"],
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            weight_decay=settings["weight_decay"],
            seed=settings["seed"],
            workers=workers,
            ctx=ctx,
            amp=settings["amp"],
            output_dir=output if not args.eval_only else None,
            run_args=settings,
            progress=False if args.no_progress else None,
        )
        state["trainer"] = trainer
        if ckpt is not None and args.resume:
            trainer.resume(path)
        elif ckpt is not None:
            model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:  # bad setting, or another architecture
        prefix = "checkpoint does not fit this run: " if ckpt is not None and "state_dict" in str(exc) else ""
        raise RunError(prefix + str(exc)) from None
    _banner(settings, train, test, model, ctx, workers, output, say)

    if args.eval_only:
        return _evaluate(trainer, ckpt, output, ctx, say)
    if not args.resume and ctx.is_main and (output / "last.pt").exists():
        say(f"note: {_rel(output)} holds an earlier run; starting afresh over it (use --resume to continue it)")
    if trainer.epoch >= trainer.epochs:
        say(f"the run in {_rel(output)} is already complete ({trainer.epoch} epochs)")
    result = trainer.fit() if trainer.epoch < trainer.epochs else {"last": trainer.history[-1], "best": trainer.best}
    elapsed = time.perf_counter() - start
    say("=" * 100)
    for line in summary_lines(result):
        say(line)
    say(f"time: {elapsed:.1f} s ({elapsed / 60:.1f} min) | metrics and checkpoints in {_rel(output)}")
    return 0


def _interrupted_message(trainer: Optional[Trainer]) -> str:
    """What an interrupted run left behind, truthfully."""
    if trainer is None or trainer.output_dir is None:
        return "interrupted before training started: nothing was saved"
    last = _rel(trainer.output_dir / "last.pt")
    if trainer.saved_epoch is None:
        return "interrupted before the first epoch of this run finished: this run saved no checkpoint"
    return (
        f"interrupted: {last} holds epoch {trainer.saved_epoch} of {trainer.epochs}; re-run with --resume to continue"
    )


def _default_output(args: argparse.Namespace, settings: Optional[Dict[str, Any]] = None) -> Path:
    if settings is None:  # before the settings are known: --resume / --eval-only with the command line's choices
        demo = bool(args.demo) or (
            args.data_dir is None
            and not any(dataset_file(REAL_ROOT, args.variant or "PB_T50_RS", s).exists() for s in ("train", "test"))
        )
        model, variant = args.model or (DEMO if demo else RECIPE)["model"], args.variant or "PB_T50_RS"
    else:
        demo, model, variant = settings["demo"], settings["model"], settings["variant"]
    if demo:  # the default demo model keeps the plain name; other models get their own folder
        return REPO / "runs" / ("scanobjectnn_demo" if model == DEMO["model"] else f"scanobjectnn_demo_{model}")
    return REPO / "runs" / f"scanobjectnn_{variant}_{model}"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the example; returns the exit code (0, 2 for bad data/settings, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        ctx = setup_distributed(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say: Callable[[str], None] = (lambda msg: print(msg, flush=True)) if ctx.is_main else (lambda msg: None)
    state: Dict[str, Any] = {}
    try:
        return _run(args, ctx, say, start, state)
    except (RunError, WriteError, FloatingPointError) as exc:
        if ctx.is_main:
            print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if ctx.is_main:
            print(_interrupted_message(state.get("trainer")), file=sys.stderr)
        return 130
    finally:
        # The trainer (and its DDP reducer) must go before the process group: a gloo group
        # destroyed by the reducer at interpreter exit can deadlock on the GIL with its worker thread.
        state.clear()
        gc.collect()
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
