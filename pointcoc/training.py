"""A reusable classification training loop: metrics, atomic checkpoints, exact resume, DDP.

The pieces:

* :func:`smooth_cross_entropy`: cross entropy with label smoothing spread over
  the *other* classes (``1 - eps`` on the target, ``eps / (K - 1)`` elsewhere),
  as in the PointMLP reference.
* :func:`confusion_matrix`, :func:`overall_accuracy` (OA) and
  :func:`mean_class_accuracy` (mAcc: mean per-class recall over the classes
  present).
* :func:`checkpoint_digest`, :func:`load_checkpoint` (refuses a file whose
  content does not match its digest) and :func:`repair_best_checkpoint`; files
  are written with :func:`pointcoc._files.atomic_write` (temporary file, fsync, rename).
* :class:`BatchAdapter` with :func:`channels_first` (``[B, 3, n]``) and
  :func:`point_batch` (PyG ``Batch``): how a model sees a batch of clouds.
* :func:`capture_rng_state` / :func:`restore_rng_state` for torch (CPU and CUDA),
  numpy and Python.
* :class:`DistributedContext`, :func:`setup_distributed`,
  :func:`cleanup_distributed`: ``torchrun`` support (DistributedDataParallel,
  gloo on CPU, NCCL on CUDA).
* :class:`Trainer`: any model plus a :class:`BatchAdapter`; SGD (or AdamW) +
  cosine schedule + label smoothing, per-epoch train and test metrics reduced
  across ranks, ``metrics.csv`` / ``metrics.json``, and ``last.pt`` / ``best.pt``
  written by rank 0 only, consistent with each other after a kill at any instant.

Determinism: the training order of epoch ``e`` is a permutation seeded with
``seed + e`` (``DistributedSampler``), the dataset's augmentation is seeded per
item and epoch (its ``set_epoch``), and every checkpoint holds the RNG states of
every rank, so training ``2k`` epochs straight or ``k`` epochs then resuming for
``k`` more gives the same weights (on the same hardware and settings).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from ._checks import check_batch_norm_batch
from ._files import atomic_write, check_writable_dir, remove_stray_temporaries

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
    "atomic_write",
    "checkpoint_digest",
    "serialize_checkpoint",
    "load_checkpoint",
    "repair_best_checkpoint",
    "BatchAdapter",
    "channels_first",
    "point_batch",
    "DistributedContext",
    "setup_distributed",
    "cleanup_distributed",
    "ShardSampler",
    "Trainer",
    "summary_lines",
]

CHECKPOINT_FORMAT = "pointcoc-classification-v2"
"""Value of the ``format`` key of every checkpoint this module writes."""

METRIC_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_oa",
    "train_macc",
    "test_loss",
    "test_oa",
    "test_macc",
    "epoch_seconds",
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
        raise ValueError(
            f"pred and target must be 1-D of the same length, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
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


_DIGEST_EXCLUDED = ("digest", "best_digest")
_MAX_DEPTH = 32


def _digest_update(h: "hashlib._Hash", obj: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            h.update(f"K{type(key).__name__}:{key!r}".encode())
            _digest_update(h, obj[key], depth + 1)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for item in obj:
            _digest_update(h, item, depth + 1)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}")


def checkpoint_digest(state: Dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's whole content (every tensor's bytes, every value), except its digests."""
    h = hashlib.sha256()
    _digest_update(h, {k: v for k, v in state.items() if k not in _DIGEST_EXCLUDED}, 0)
    return h.hexdigest()


def serialize_checkpoint(state: Dict[str, Any]) -> bytes:
    """``torch.save`` bytes of ``state`` (the same bytes whatever file they go to)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "history",
    "best",
    "rng",
    "args",
    "digest",
    "best_digest",
)


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :class:`Trainer` and verify its content digest.

    Loads with ``weights_only=True`` (no code from the file runs). Raises a one-line
    ``ValueError`` naming the file when it is missing, unreadable, of another kind,
    incomplete, or when its content does not match the digest stored in it
    (a flipped bit, a partial overwrite).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise ValueError(f"checkpoint {path}: cannot be loaded ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path}: not a {CHECKPOINT_FORMAT} checkpoint written by pointcoc.training")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path}: missing entries {', '.join(missing)}")
    try:
        digest = checkpoint_digest(ckpt)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path}: unexpected content ({_one_line(exc)})") from None
    if digest != ckpt["digest"]:
        raise ValueError(
            f"checkpoint {path}: content does not match its digest (the file is corrupted: "
            f"stored {str(ckpt['digest'])[:12]}..., computed {digest[:12]}...)"
        )
    return ckpt


def repair_best_checkpoint(folder: Union[str, Path]) -> Optional[str]:
    """Make ``best.pt`` in ``folder`` the best checkpoint that ``last.pt`` expects.

    A run writes ``last.pt`` and then, when the epoch improved, the same bytes to
    ``best.pt``; a kill in between leaves ``best.pt`` one best behind. Then the best
    *is* the last state, and ``last.pt`` is copied over ``best.pt``. Returns a note
    when a repair was made, None when the pair was consistent (or there is no
    ``last.pt``). Raises ``ValueError`` when ``best.pt`` is damaged in a way no kill
    produces (the expected best epoch is not the last one).
    """
    folder = Path(folder)
    last_path, best_path = folder / "last.pt", folder / "best.pt"
    if not last_path.is_file():
        return None
    last = load_checkpoint(last_path)
    try:
        best = load_checkpoint(best_path)
        if best["digest"] == last["best_digest"]:
            return None
        found = f"it holds epoch {best['epoch']}"
    except ValueError as exc:
        found = str(exc)
    if last["best_digest"] != last["digest"]:
        raise ValueError(
            f"checkpoint {best_path}: does not hold the best epoch ({last['best'].get('epoch')}) that "
            f"{last_path} expects ({found}) and cannot be rebuilt from {last_path}"
        )
    atomic_write(best_path, last_path.read_bytes())
    return f"repaired {best_path}: restored epoch {last['epoch']} from {last_path} ({found})"


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


# ----------------------------------------------------------------------------- batch adapters
def channels_first(points: Tensor) -> Tensor:
    """``[B, n, 3]`` clouds -> the ``[B, 3, n]`` tensor form (PointMLP-style models)."""
    return points.transpose(1, 2).contiguous()


def point_batch(points: Tensor) -> Batch:
    """``[B, n, 3]`` clouds -> a PyG ``Batch`` with ``pos = x = xyz`` (point-set models such as CoC, ``pos_dim=3``)."""
    b, n, dim = points.shape
    flat = points.reshape(b * n, dim)
    batch = torch.arange(b, device=points.device).repeat_interleave(n)
    return Batch(x=flat, pos=flat, batch=batch, ptr=torch.arange(0, (b + 1) * n, n, device=points.device))


def _no_hook(model: nn.Module) -> None:
    return None


@dataclass
class BatchAdapter:
    """How a model sees a batch, and what it needs switched between training and evaluation.

    Args:
        to_input: maps the loader's ``points: [B, n, 3]`` (on the device) to the model's
            input, e.g. :func:`channels_first` or :func:`point_batch`.
        on_train, on_eval: called with the model before every training epoch / evaluation
            (e.g. to start FPS at a random point while training only).
    """

    to_input: Callable[[Tensor], Any]
    on_train: Callable[[nn.Module], None] = _no_hook
    on_eval: Callable[[nn.Module], None] = _no_hook


# ----------------------------------------------------------------------------- trainer
def _set_epoch(dataset: Dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _format_row(row: Dict[str, float], eta: float) -> str:
    return (
        f"epoch {row['epoch']:>3d} | train loss {row['train_loss']:.4f} OA {row['train_oa']:6.2f} "
        f"mAcc {row['train_macc']:6.2f} | test loss {row['test_loss']:.4f} OA {row['test_oa']:6.2f} "
        f"mAcc {row['test_macc']:6.2f} | lr {row['lr']:.2e} | {row['epoch_seconds']:.1f}s | "
        f"eta {eta / 60:.1f} min"
    )


def _checkpoint_bytes_estimate(model: nn.Module, optimizer: str) -> int:
    """Rough size of one checkpoint: the weights and buffers plus the optimiser's per-weight state."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return weights * (2 if optimizer == "sgd" else 3) + buffers + (1 << 20)


def _make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with momentum (the reference recipe) or AdamW."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


class Trainer:
    """Train and evaluate a point-cloud classifier (by default with the reference ScanObjectNN recipe).

    Model-agnostic: ``adapter`` turns each batch of clouds into the model's input.

    Args:
        model: any classifier; ``model(adapter.to_input(points))`` gives ``logits: [B, num_classes]``.
        train_set, test_set: datasets of ``(points [n, 3], label)`` items;
            ``set_epoch(e)`` is called on them before each epoch when they have it.
        adapter: a :class:`BatchAdapter` (input form and train/eval hooks).
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
            ``last.pt`` and ``best.pt``; None writes nothing. It is checked up front
            (writable, room for the checkpoints); stray temporaries of killed writes
            are removed.
        run_args: settings stored in checkpoints and ``metrics.json`` (plain values).
        progress: tqdm bars (rank 0); None (default) shows them only when stderr is a
            terminal, so logs get one line per epoch and no bar residue.
        log: print one metrics line per epoch (rank 0).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        test_set: Dataset,
        *,
        adapter: BatchAdapter,
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
        progress: Optional[bool] = None,
        log: bool = True,
    ) -> None:
        self.ctx = ctx if ctx is not None else DistributedContext()
        self._check_settings(model, adapter, epochs, batch_size, optimizer)
        self.adapter = adapter
        self.num_classes, self.epochs, self.seed = num_classes, epochs, seed
        self.label_smoothing = label_smoothing
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.run_args = dict(run_args or {})
        self.progress = (progress if progress is not None else sys.stderr.isatty()) and self.ctx.is_main
        self.log = log and self.ctx.is_main
        if self.output_dir is not None and self.ctx.is_main:
            check_writable_dir(self.output_dir, 3 * _checkpoint_bytes_estimate(model, optimizer))
            remove_stray_temporaries(self.output_dir, ("last.pt", "best.pt", "metrics.csv", "metrics.json"))
        device = self.ctx.device

        self.model = model.to(device)
        self.net: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if self.ctx.distributed
            else self.model
        )
        self.optimizer = _make_optimizer(self.model, optimizer, lr, momentum, weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=epochs, eta_min=lr * min_lr_ratio
        )
        self.amp = amp
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

        self._make_loaders(train_set, test_set, batch_size, workers)
        self.epoch = 0  # completed epochs
        self.saved_epoch: Optional[int] = None  # epoch held by last.pt in output_dir (None: no last.pt of this run)
        self.history: List[Dict[str, float]] = []
        self.best: Dict[str, Any] = {}
        self.best_digest = ""

    def _check_settings(self, model: nn.Module, adapter: object, epochs: int, batch_size: int, optimizer: str) -> None:
        if not isinstance(adapter, BatchAdapter):
            raise TypeError(f"adapter must be a pointcoc.training.BatchAdapter, got {type(adapter).__name__}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if batch_size < 1 or batch_size % self.ctx.world_size:
            raise ValueError(
                f"batch_size must be a positive multiple of the {self.ctx.world_size} processes, got {batch_size}"
            )
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        check_batch_norm_batch(model, batch_size // self.ctx.world_size, "batch_size per process")

    def _make_loaders(self, train_set: Dataset, test_set: Dataset, batch_size: int, workers: int) -> None:
        per_rank = batch_size // self.ctx.world_size
        self.train_sampler = DistributedSampler(
            train_set,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        self._loader_generator = torch.Generator()
        pin = self.ctx.device.type == "cuda"
        self.train_loader = DataLoader(
            train_set,
            batch_size=per_rank,
            sampler=self.train_sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=pin,
            generator=self._loader_generator,
        )
        if len(self.train_loader) == 0:
            raise ValueError(f"the training set ({len(train_set)} items) is smaller than one batch of {batch_size}")
        self.test_loader = DataLoader(
            test_set,
            batch_size=per_rank,
            shuffle=False,
            num_workers=workers,
            pin_memory=pin,
            sampler=ShardSampler(len(test_set), self.ctx.rank, self.ctx.world_size),
        )

    # -- one pass ------------------------------------------------------------------------------
    def _forward(self, net: nn.Module, points: Tensor) -> Tensor:
        inputs = self.adapter.to_input(points.to(self.ctx.device, non_blocking=True))
        with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return net(inputs)

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
        self.adapter.on_train(self.model)
        self.train_sampler.set_epoch(epoch)
        _set_epoch(self.train_loader.dataset, epoch)
        self._loader_generator.manual_seed(self.seed + epoch)
        device = self.ctx.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.int64, device=device)
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.epochs} train",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )
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
            raise FloatingPointError(
                f"training loss is {metrics['loss']} in epoch {epoch + 1}; lower the learning rate or run without AMP"
            )
        return metrics

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Loss, OA and mAcc (percent) on the whole test set, reduced across ranks.

        Every rank evaluates its shard with rank 0's weights and BatchNorm
        statistics (the ones checkpoints store), without the DDP wrapper.
        """
        self.ctx.broadcast_buffers(self.model)
        self.model.eval()
        self.adapter.on_eval(self.model)
        device = self.ctx.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.int64, device=device)
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        for points, labels in tqdm(
            self.test_loader, desc="test", leave=False, disable=not self.progress, dynamic_ncols=True
        ):
            labels = labels.to(device, non_blocking=True)
            logits = self._forward(self.model, points)
            loss_sum += smooth_cross_entropy(logits, labels, self.label_smoothing).double() * labels.numel()
            count += labels.numel()
            conf += confusion_matrix(logits.argmax(dim=1), labels, self.num_classes)
        return self._reduce(loss_sum, count, conf)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run exactly, with its content digest (collective: call on every rank).

        ``best_digest`` is the digest of the ``best.pt`` this state expects (its own
        digest when this epoch is the best so far).
        """
        rng = self.ctx.all_gather_object(capture_rng_state())
        state = {
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
        state["digest"] = checkpoint_digest(state)
        is_best = bool(self.best) and self.best.get("epoch") == self.epoch
        state["best_digest"] = state["digest"] if is_best else self.best_digest
        return state

    def load_state_dict(self, ckpt: Dict[str, Any]) -> None:
        """Continue from a checkpoint of :meth:`state_dict` (same number of processes)."""
        if len(ckpt["rng"]) != self.ctx.world_size:
            raise ValueError(
                f"the checkpoint was written by {len(ckpt['rng'])} processes; resume it with as many "
                f"(this run has {self.ctx.world_size})"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.history = [dict(r) for r in ckpt["history"]][: self.epoch]
        self.best = dict(ckpt["best"])
        self.best_digest = str(ckpt["best_digest"])
        restore_rng_state(ckpt["rng"][self.ctx.rank])

    def resume(self, path: Optional[Union[str, Path]] = None) -> List[str]:
        """Continue the run from ``path`` (default ``output_dir/last.pt``); returns notes on repairs made.

        ``best.pt`` in the output folder is first made consistent with ``last.pt``
        (:func:`repair_best_checkpoint`), and rank 0 rewrites the metrics files from
        the checkpoint's history.
        """
        if path is None:
            if self.output_dir is None:
                raise ValueError("resume needs a checkpoint path or an output_dir holding last.pt")
            path = self.output_dir / "last.pt"
        notes: List[str] = []
        if self.output_dir is not None and Path(path).parent == self.output_dir:
            # on every rank, so that an error stops all of them alike; a repair writes the same bytes on any rank
            note = repair_best_checkpoint(self.output_dir)
            notes += [note] if note else []
        self.load_state_dict(load_checkpoint(path))
        if self.ctx.is_main and self.output_dir is not None:
            self._write_metrics()
            self.saved_epoch = self.epoch if Path(path).parent == self.output_dir else None
        return notes

    def _write_metrics(self) -> None:
        assert self.output_dir is not None
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write(self.output_dir / "metrics.csv", buf.getvalue())
        summary = {
            "args": self.run_args,
            "epochs": self.history,
            "best": self.best,
            "last": self.history[-1] if self.history else {},
        }
        atomic_write(self.output_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")

    def _save(self, state: Dict[str, Any]) -> None:
        """Write ``last.pt``, then (when this epoch is the best) the same bytes to ``best.pt``, then the metrics.

        Every state a kill can leave is consistent or repaired by :meth:`resume`:
        ``last.pt`` names the best it expects, and when ``best.pt`` lags behind,
        that best is ``last.pt`` itself.
        """
        assert self.output_dir is not None
        data = serialize_checkpoint(state)
        atomic_write(self.output_dir / "last.pt", data)
        self.saved_epoch = state["epoch"]
        if state["best_digest"] == state["digest"]:
            atomic_write(self.output_dir / "best.pt", data)
        self._write_metrics()

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train from the current epoch to ``epochs``; returns ``{'last': row, 'best': row}``.

        After each epoch: metrics line, ``last.pt``, ``best.pt`` (when the test OA
        improves) and ``metrics.csv``/``metrics.json``.
        """
        run_start, first_epoch = time.perf_counter(), self.epoch
        for epoch in range(self.epoch, self.epochs):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train = self.train_one_epoch(epoch)
            self.scheduler.step()
            test = self.evaluate()
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                **{f"train_{k}": v for k, v in train.items()},
                **{f"test_{k}": v for k, v in test.items()},
                "epoch_seconds": time.perf_counter() - start,
            }
            self.history.append(row)
            self.epoch = epoch + 1
            if not self.best or row["test_oa"] > self.best["test_oa"]:
                self.best = dict(row)
            state = self.state_dict()  # collective (RNG states of every rank)
            self.best_digest = state["best_digest"]
            if self.ctx.is_main:
                if self.log:
                    per_epoch = (time.perf_counter() - run_start) / (self.epoch - first_epoch)
                    tqdm.write(_format_row(row, per_epoch * (self.epochs - self.epoch)))
                if self.output_dir is not None:
                    self._save(state)
        return {"last": self.history[-1], "best": self.best}


def summary_lines(result: Dict[str, Any]) -> Sequence[str]:
    """Human-readable last-epoch and best-epoch lines for :meth:`Trainer.fit`'s result."""
    last, best = result["last"], result["best"]
    return (
        f"last epoch ({last['epoch']}): test OA {last['test_oa']:.2f}%  mAcc {last['test_macc']:.2f}%",
        f"best epoch ({best['epoch']}, highest test OA): test OA {best['test_oa']:.2f}%  mAcc {best['test_macc']:.2f}%",
    )
