"""A reusable classification training loop: metrics, atomic checkpoints, exact resume, DDP.

The pieces:

* :func:`smooth_cross_entropy`: cross entropy with label smoothing spread over
  the *other* classes (``1 - eps`` on the target, ``eps / (K - 1)`` elsewhere),
  as in the PointMLP reference.
* :func:`confusion_matrix`, :func:`overall_accuracy` (OA) and
  :func:`mean_class_accuracy` (mAcc: mean per-class recall over the classes
  present).
* :func:`atomic_save` / :func:`atomic_write_text` (temporary file + ``os.replace``)
  and :func:`load_checkpoint`.
* :func:`capture_rng_state` / :func:`restore_rng_state` for torch (CPU and CUDA),
  numpy and Python.
* :class:`DistributedContext`, :func:`setup_distributed`,
  :func:`cleanup_distributed`: ``torchrun`` support (DistributedDataParallel,
  gloo on CPU, NCCL on CUDA).
* :class:`Trainer`: SGD (or AdamW) + cosine schedule + label smoothing, per-epoch train and
  test metrics reduced across ranks, ``metrics.csv`` / ``metrics.json``, and
  ``last.pt`` / ``best.pt`` written by rank 0 only.

Determinism: the training order of epoch ``e`` is a permutation seeded with
``seed + e`` (``DistributedSampler``), the dataset's augmentation is seeded per
item and epoch (its ``set_epoch``), and every checkpoint holds the RNG states of
every rank, so training ``2k`` epochs straight or ``k`` epochs then resuming for
``k`` more gives the same weights (on the same hardware and settings).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRIC_FIELDS",
    "smooth_cross_entropy",
    "confusion_matrix",
    "overall_accuracy",
    "mean_class_accuracy",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "DistributedContext",
    "setup_distributed",
    "cleanup_distributed",
    "ShardSampler",
    "Trainer",
    "summary_lines",
]

CHECKPOINT_FORMAT = "pointcoc-classification-v1"
"""Value of the ``format`` key of every checkpoint this module writes."""

METRIC_FIELDS = (
    "epoch", "lr", "train_loss", "train_oa", "train_macc", "test_loss", "test_oa", "test_macc", "epoch_seconds",
)
"""Columns of ``metrics.csv`` (OA and mAcc in percent; ``lr`` is the rate the epoch trained with)."""


# ----------------------------------------------------------------------------- loss and metrics
def smooth_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.2) -> Tensor:
    """Mean label-smoothed cross entropy, the smoothing spread over the other classes.

    ``logits: [B, K]``, ``target: [B]`` (int64 class ids). The target
    distribution puts ``1 - smoothing`` on the true class and
    ``smoothing / (K - 1)`` on each other class (unlike
    ``F.cross_entropy(label_smoothing=...)``, which also spreads onto the target).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, K], got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must have shape [{logits.shape[0]}], got {tuple(target.shape)}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    k = logits.size(1)
    logp = F.log_softmax(logits.float(), dim=1)
    picked = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    if k == 1 or smoothing == 0.0:
        return -picked.mean()
    others = logp.sum(dim=1) - picked
    return -((1.0 - smoothing) * picked + smoothing / (k - 1) * others).mean()


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``[K, K]`` int64 counts: row = true class, column = predicted class. ``pred, target: [B]``."""
    if pred.shape != target.shape or pred.dim() != 1:
        raise ValueError(f"pred and target must be 1-D of the same length, got {tuple(pred.shape)} and {tuple(target.shape)}")
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def overall_accuracy(conf: Tensor) -> float:
    """Fraction of correct predictions in confusion matrix ``conf: [K, K]`` (NaN when empty)."""
    total = int(conf.sum())
    return float(conf.diagonal().sum()) / total if total else float("nan")


def mean_class_accuracy(conf: Tensor) -> float:
    """Mean per-class recall over the classes that occur (rows of ``conf: [K, K]`` with samples).

    Equals scikit-learn's ``balanced_accuracy_score``. NaN when ``conf`` is empty.
    """
    support = conf.sum(dim=1)
    present = support > 0
    if not bool(present.any()):
        return float("nan")
    recall = conf.diagonal()[present].double() / support[present].double()
    return float(recall.mean())


# ----------------------------------------------------------------------------- RNG and files
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> Dict[str, Any]:
    """The current RNG states of torch (CPU, every CUDA device), numpy and Python.

    Only plain containers and tensors, so the checkpoint loads with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``."""
    _atomic_replace(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: Union[str, Path]) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    _atomic_replace(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "history", "best", "rng", "args")


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :class:`Trainer`; ``ValueError`` naming the file if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"checkpoint {path}: cannot be loaded ({type(exc).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path}: not a {CHECKPOINT_FORMAT} checkpoint written by pointcoc.training")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path}: missing entries {', '.join(missing)}")
    return ckpt


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistributedContext:
    """Where this process runs: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """True when running under ``torchrun`` with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that prints and writes files (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op when not distributed)."""
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over processes in place and return it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every process."""
        if self.distributed:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every process's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def setup_distributed(device: Optional[str] = None) -> DistributedContext:
    """Read ``torchrun``'s environment and join the process group (if ``WORLD_SIZE > 1``).

    ``device``: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or None (CUDA when available).
    Under ``torchrun`` with CUDA each process takes GPU ``LOCAL_RANK`` and NCCL;
    on CPU the gloo backend is used. Raises ``ValueError`` for a device string
    torch does not understand or CUDA requested without CUDA.
    """
    name = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset: every item on exactly one rank, no padding.

    Used for evaluation, where ``DistributedSampler``'s padding would count some
    items twice.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


# ----------------------------------------------------------------------------- trainer
def _set_epoch(dataset: Dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _set_fps_random_start(model: nn.Module, value: bool) -> None:
    """Models with an ``fps_random_start`` switch (PointMLP family) start FPS at a random point
    while training and at index 0 (the reference kernel) while evaluating."""
    if hasattr(model, "fps_random_start"):
        model.fps_random_start = value


def _format_row(row: Dict[str, float]) -> str:
    return (f"epoch {row['epoch']:>3d} | train loss {row['train_loss']:.4f} OA {row['train_oa']:6.2f} "
            f"mAcc {row['train_macc']:6.2f} | test loss {row['test_loss']:.4f} OA {row['test_oa']:6.2f} "
            f"mAcc {row['test_macc']:6.2f} | lr {row['lr']:.2e} | {row['epoch_seconds']:.1f}s")


class Trainer:
    """Train and evaluate a point-cloud classifier (by default with the PointMLP ScanObjectNN recipe).

    Args:
        model: maps ``points: [B, 3, n]`` to ``logits: [B, num_classes]``.
        train_set, test_set: datasets of ``(points [n, 3], label)`` items;
            ``set_epoch(e)`` is called on them before each epoch when they have it.
        num_classes: number of classes ``K``.
        epochs: total epochs; the cosine schedule spans them.
        batch_size: global batch size (split evenly over the processes); the
            last incomplete training batch is dropped.
        optimizer: ``'sgd'`` (the reference: SGD with ``momentum``) or ``'adamw'``
            (converges in far fewer steps; used by short demo runs).
        lr, weight_decay, momentum: optimiser settings; the learning rate follows a
            cosine from ``lr`` to ``lr * min_lr_ratio``, stepped once per epoch.
        label_smoothing: see :func:`smooth_cross_entropy`.
        seed: seeds the per-epoch training order (``seed + epoch``).
        workers: ``DataLoader`` worker processes per rank.
        ctx: from :func:`setup_distributed`; the model is moved to ``ctx.device``
            and wrapped in ``DistributedDataParallel`` when distributed.
        amp: mixed precision (float16 with loss scaling on CUDA, bfloat16 on CPU).
        output_dir: where rank 0 writes ``metrics.csv``, ``metrics.json``,
            ``last.pt`` and ``best.pt``; None writes nothing.
        run_args: settings stored in checkpoints and ``metrics.json`` (plain values).
        progress: show tqdm bars and per-epoch lines (rank 0 only).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        test_set: Dataset,
        *,
        num_classes: int,
        epochs: int,
        batch_size: int = 32,
        optimizer: str = "sgd",
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.2,
        seed: int = 0,
        workers: int = 0,
        ctx: Optional[DistributedContext] = None,
        amp: bool = False,
        output_dir: Optional[Union[str, Path]] = None,
        run_args: Optional[Dict[str, Any]] = None,
        progress: bool = True,
    ) -> None:
        self.ctx = ctx if ctx is not None else DistributedContext()
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if batch_size < 1 or batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size must be a positive multiple of the {self.ctx.world_size} processes, got {batch_size}")
        self.num_classes, self.epochs, self.seed = num_classes, epochs, seed
        self.label_smoothing = label_smoothing
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.run_args = dict(run_args or {})
        self.progress = progress and self.ctx.is_main
        device = self.ctx.device

        self.model = model.to(device)
        self.net: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if self.ctx.distributed else self.model
        )
        if optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        elif optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs, eta_min=lr * min_lr_ratio)
        self.amp = amp
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

        per_rank = batch_size // self.ctx.world_size
        self.train_sampler = DistributedSampler(
            train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True, seed=seed, drop_last=True)
        self._loader_generator = torch.Generator()
        pin = device.type == "cuda"
        self.train_loader = DataLoader(train_set, batch_size=per_rank, sampler=self.train_sampler, drop_last=True,
                                       num_workers=workers, pin_memory=pin, generator=self._loader_generator)
        if len(self.train_loader) == 0:
            raise ValueError(f"the training set ({len(train_set)} items) is smaller than one batch of {batch_size}")
        self.test_loader = DataLoader(test_set, batch_size=per_rank, shuffle=False, num_workers=workers, pin_memory=pin,
                                      sampler=ShardSampler(len(test_set), self.ctx.rank, self.ctx.world_size))
        self.epoch = 0  # completed epochs
        self.history: List[Dict[str, float]] = []
        self.best: Dict[str, Any] = {}

    # -- one pass ------------------------------------------------------------------------------
    def _forward(self, net: nn.Module, points: Tensor) -> Tensor:
        points = points.to(self.ctx.device, non_blocking=True).transpose(1, 2).contiguous()  # [B, 3, n]
        with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return net(points)

    def _reduce(self, loss_sum: Tensor, count: Tensor, conf: Tensor) -> Dict[str, float]:
        self.ctx.all_reduce_sum(loss_sum)
        self.ctx.all_reduce_sum(count)
        self.ctx.all_reduce_sum(conf)
        conf = conf.cpu()
        return {
            "loss": float(loss_sum) / max(int(count), 1),
            "oa": 100.0 * overall_accuracy(conf),
            "macc": 100.0 * mean_class_accuracy(conf),
        }

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        """Train epoch ``epoch`` (0-based); returns loss, OA and mAcc (percent) over all ranks."""
        self.net.train()
        _set_fps_random_start(self.model, True)
        self.train_sampler.set_epoch(epoch)
        _set_epoch(self.train_loader.dataset, epoch)
        self._loader_generator.manual_seed(self.seed + epoch)
        device = self.ctx.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.int64, device=device)
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs} train", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        for step, (points, labels) in enumerate(bar):
            labels = labels.to(device, non_blocking=True)
            logits = self._forward(self.net, points)
            loss = smooth_cross_entropy(logits, labels, self.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += loss.detach().double() * labels.numel()
            count += labels.numel()
            conf += confusion_matrix(logits.detach().argmax(dim=1), labels, self.num_classes)
            if self.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / max(int(count), 1):.4f}")
        metrics = self._reduce(loss_sum, count, conf)
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"training loss is {metrics['loss']} in epoch {epoch + 1}; "
                                     "lower the learning rate or run without AMP")
        return metrics

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Loss, OA and mAcc (percent) on the whole test set, reduced across ranks.

        Every rank evaluates its shard with rank 0's weights and BatchNorm
        statistics (the ones checkpoints store), without the DDP wrapper.
        """
        self.ctx.broadcast_buffers(self.model)
        self.model.eval()
        _set_fps_random_start(self.model, False)
        device = self.ctx.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.int64, device=device)
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        for points, labels in tqdm(self.test_loader, desc="test", leave=False, disable=not self.progress,
                                   dynamic_ncols=True):
            labels = labels.to(device, non_blocking=True)
            logits = self._forward(self.model, points)
            loss_sum += smooth_cross_entropy(logits, labels, self.label_smoothing).double() * labels.numel()
            count += labels.numel()
            conf += confusion_matrix(logits.argmax(dim=1), labels, self.num_classes)
        return self._reduce(loss_sum, count, conf)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run exactly (collective: call on every rank)."""
        rng = self.ctx.all_gather_object(capture_rng_state())
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "history": [dict(r) for r in self.history],
            "best": dict(self.best),
            "test_metrics": dict(self.history[-1]) if self.history else {},
            "rng": rng,
            "args": dict(self.run_args),
        }

    def load_state_dict(self, ckpt: Dict[str, Any]) -> None:
        """Continue from a checkpoint of :meth:`state_dict` (same number of processes)."""
        if len(ckpt["rng"]) != self.ctx.world_size:
            raise ValueError(f"the checkpoint was written by {len(ckpt['rng'])} processes; resume it with as many "
                             f"(this run has {self.ctx.world_size})")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.history = [dict(r) for r in ckpt["history"]][: self.epoch]
        self.best = dict(ckpt["best"])
        restore_rng_state(ckpt["rng"][self.ctx.rank])

    def _write_metrics(self) -> None:
        assert self.output_dir is not None
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(buf.getvalue(), self.output_dir / "metrics.csv")
        summary = {"args": self.run_args, "epochs": self.history, "best": self.best,
                   "last": self.history[-1] if self.history else {}}
        atomic_write_text(json.dumps(summary, indent=2) + "\n", self.output_dir / "metrics.json")

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train from the current epoch to ``epochs``; returns ``{'last': row, 'best': row}``.

        After each epoch: metrics line, ``metrics.csv``/``metrics.json``,
        ``last.pt`` and (when the test OA improves) ``best.pt``.
        """
        for epoch in range(self.epoch, self.epochs):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train = self.train_one_epoch(epoch)
            self.scheduler.step()
            test = self.evaluate()
            row = {"epoch": epoch + 1, "lr": lr,
                   **{f"train_{k}": v for k, v in train.items()}, **{f"test_{k}": v for k, v in test.items()},
                   "epoch_seconds": time.perf_counter() - start}
            self.history.append(row)
            self.epoch = epoch + 1
            improved = not self.best or row["test_oa"] > self.best["test_oa"]
            if improved:
                self.best = dict(row)
            state = self.state_dict()  # collective (RNG states of every rank)
            if self.ctx.is_main:
                if self.progress:
                    tqdm.write(_format_row(row))
                if self.output_dir is not None:
                    self._write_metrics()
                    atomic_save(state, self.output_dir / "last.pt")
                    if improved:
                        atomic_save(state, self.output_dir / "best.pt")
        return {"last": self.history[-1], "best": self.best}


def summary_lines(result: Dict[str, Any]) -> Sequence[str]:
    """Human-readable last-epoch and best-epoch lines for :meth:`Trainer.fit`'s result."""
    last, best = result["last"], result["best"]
    return (
        f"last epoch ({last['epoch']}): test OA {last['test_oa']:.2f}%  mAcc {last['test_macc']:.2f}%",
        f"best epoch ({best['epoch']}, highest test OA): test OA {best['test_oa']:.2f}%  mAcc {best['test_macc']:.2f}%",
    )

