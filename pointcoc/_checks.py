"""Input validation shared by every public entry point.

Each check raises ``TypeError`` (wrong kind of object / dtype) or ``ValueError``
(wrong shape or content) with a message that names the offending argument and
says what was expected.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "check_tensor",
    "check_float",
    "check_finite",
    "check_positions",
    "check_batch",
    "check_k",
    "check_ratio",
    "check_drop_prob",
    "limit",
    "check_generator",
    "check_module_input",
    "check_batch_norm_batch",
    "check_model_kwargs",
    "check_positive_ints",
    "check_padded_width",
]

#: Memory limits a user can raise with the environment variable of the same name.
LIMITS: Dict[str, int] = {
    "POINTCOC_MAX_EMPTY_SAMPLES": 1 << 16,  # sample ids without points (gaps in ``batch``)
    "POINTCOC_MAX_IMAGE_PIXELS": 1 << 24,  # pixels of one decoded image file (16.7 million)
    "POINTCOC_MAX_PADDED_ENTRIES": 1 << 26,  # entries of a neighbour table padded beyond every sample's size
}


def limit(name: str) -> int:
    """The current value of memory limit ``name``: the environment variable if set, else :data:`LIMITS`."""
    raw = os.environ.get(name)
    if raw is None:
        return LIMITS[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, got {raw!r}")
    return value


def check_tensor(t: object, name: str, ndim: Optional[int] = None) -> Tensor:
    """Require a ``torch.Tensor`` (of rank ``ndim`` when given)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_meta:
        raise ValueError(f"{name} is on the meta device (a shape without data); give a tensor on cpu or cuda")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_float(t: Tensor, name: str) -> Tensor:
    """Require a floating-point tensor."""
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_finite(t: Tensor, name: str) -> Tensor:
    """Require every value to be finite (no NaN, no inf)."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=-1).sum()) if t.dim() > 1 else int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains NaN or inf values ({bad} rows affected); all values must be finite")
    return t


def check_positions(pos: object, name: str = "pos") -> Tensor:
    """Validate a point-position tensor ``pos: [N, P]`` (float, finite, N > 0)."""
    pos = check_tensor(pos, name, ndim=2)
    check_float(pos, name)
    if pos.size(0) == 0:
        raise ValueError(f"{name} is empty: a point set needs at least one point")
    if pos.size(1) == 0:
        raise ValueError(f"{name} must have at least one coordinate per point, got shape {tuple(pos.shape)}")
    return check_finite(pos, name)


def check_batch(batch: object, num_points: int, device: torch.device, name: str = "batch") -> Tuple[Tensor, int]:
    """Validate a sample-assignment vector and return ``(batch, num_samples)``.

    ``batch: [N]`` must be an integer tensor of length ``num_points``, non-negative
    and sorted (non-decreasing), as in PyG. ``None`` means one sample.
    Samples with no points (gaps in the ids) are allowed; ``num_samples`` is
    ``batch.max() + 1``. Per-sample memory follows ``num_samples``, so more than
    ``POINTCOC_MAX_EMPTY_SAMPLES`` (environment variable, default 65536) empty
    samples are refused before anything is allocated for them.
    """
    if batch is None:
        return torch.zeros(num_points, dtype=torch.long, device=device), 1
    batch = check_tensor(batch, name, ndim=1)
    if batch.is_floating_point() or batch.dtype == torch.bool or batch.is_complex():
        raise TypeError(f"{name} must be an integer tensor of sample ids, got dtype {batch.dtype}")
    if batch.numel() != num_points:
        raise ValueError(f"{name} must have one entry per point ({num_points}), got {batch.numel()}")
    if batch.device != device:
        raise ValueError(f"{name} is on {batch.device} but the points are on {device}")
    if num_points == 0:
        raise ValueError(f"{name} is empty: a point set needs at least one point")
    batch = batch.long()
    descents = (batch[1:] < batch[:-1]).sum() if num_points > 1 else batch.new_zeros(())
    low, descents, last = torch.stack([batch.min(), descents, batch[-1]]).tolist()  # one host sync
    if low < 0:
        raise ValueError(f"{name} must hold non-negative sample ids")
    if descents:
        raise ValueError(f"{name} must be sorted in non-decreasing order (points grouped by sample)")
    num_samples = last + 1
    allowed = limit("POINTCOC_MAX_EMPTY_SAMPLES")
    if num_samples - num_points > allowed:
        raise ValueError(
            f"{name} ids run up to {num_samples - 1} for only {num_points} points: more than {allowed} samples "
            f"would be empty, and per-sample memory follows the largest id; renumber the samples consecutively "
            f"(e.g. torch.unique_consecutive(batch, return_inverse=True)[1]) or raise the limit with the "
            f"environment variable POINTCOC_MAX_EMPTY_SAMPLES"
        )
    return batch, num_samples


def check_k(k: object, name: str = "k") -> int:
    """Require a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return k


def check_drop_prob(drop_prob: object, name: str = "drop_prob") -> float:
    """Require a probability in [0, 1) (stochastic depth)."""
    if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(drop_prob).__name__}")
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"{name} (stochastic depth) must be in [0, 1), got {drop_prob}")
    return float(drop_prob)


def check_ratio(ratio: object, name: str = "ratio") -> float:
    """Require a float in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(ratio).__name__}")
    ratio = float(ratio)
    if not (0.0 < ratio <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {ratio}")
    return ratio


def check_generator(generator: object, device: torch.device, name: str = "generator") -> Optional[torch.Generator]:
    """Require ``None`` or a ``torch.Generator`` on ``device``'s type."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != torch.device(device).type:
        raise ValueError(f"{name} is on {generator.device} but the points are on {device}")
    return generator


def _first_float_parameter(module: nn.Module) -> Optional[Tensor]:
    return next((p for p in module.parameters() if p.is_floating_point()), None)


def check_module_input(module: nn.Module, t: object, name: str) -> Tensor:
    """Require a tensor ``t`` a model can take: real data (not meta), on the model's device, in its float dtype.

    Under ``torch.autocast`` any float dtype is accepted (autocast casts it).
    """
    t = check_tensor(t, name)
    weight = _first_float_parameter(module)
    if weight is None:
        return t
    if t.device != weight.device:
        raise ValueError(f"{name} is on {t.device} but the model is on {weight.device}; move one to the other")
    autocast = torch.is_autocast_enabled(t.device.type) if t.device.type in ("cpu", "cuda") else False
    if t.dtype != weight.dtype and not (autocast and t.is_floating_point()):
        raise TypeError(
            f"{name} has dtype {t.dtype} but the model's weights are {weight.dtype}; cast the input "
            f"(e.g. {name}.to({weight.dtype})) or the model (model.to({t.dtype}))"
        )
    return t


def check_batch_norm_batch(module: nn.Module, num_samples: int, name: str = "batch") -> None:
    """In training mode, BatchNorm needs at least two samples to estimate a variance."""
    if (
        module.training
        and num_samples < 2
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    ):
        raise ValueError(
            f"{name} holds {num_samples} sample(s), but the model has BatchNorm layers, which need at least 2 "
            f"samples per batch in training mode; use a larger batch or call model.eval()"
        )


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_rate(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


_INT_KWARGS = {"num_classes": 0, "in_chans": 1, "pos_dim": 1, "points": 1, "embed_dim": 1}
_RATE_KWARGS = ("drop_path_rate", "drop_rate", "dropout")
_PER_STAGE_KWARGS = ("reducers", "k_neighbors")


def check_model_kwargs(kwargs: Dict[str, Any]) -> None:
    """Check the settings most models share (whichever of them are present in ``kwargs``).

    ``num_classes`` an int >= 0; ``in_chans``, ``pos_dim``, ``points``, ``embed_dim``
    ints >= 1; ``drop_path_rate``, ``drop_rate``, ``dropout`` floats in [0, 1);
    ``reducers``, ``k_neighbors`` sequences of ints >= 1 (one per stage).
    """
    for key, minimum in _INT_KWARGS.items():
        if key in kwargs:
            _check_int(kwargs[key], key, minimum)
    for key in _RATE_KWARGS:
        if key in kwargs:
            _check_rate(kwargs[key], key)
    for key in _PER_STAGE_KWARGS:
        if key in kwargs and isinstance(kwargs[key], (list, tuple)):
            check_positive_ints(kwargs[key], key)


def check_positive_ints(values: Iterable[object], name: str) -> list:
    """Require every entry of ``values`` to be an int >= 1 (e.g. per-stage reduction factors)."""
    values = list(values)
    for i, value in enumerate(values):
        _check_int(value, f"{name}[{i}]", 1)
    return values


def check_padded_width(k: int, num_queries: int, counts: Tensor, name: str = "k") -> int:
    """Refuse a padded ``[num_queries, k]`` neighbour table wider than every sample when it is also huge.

    ``counts: [B]`` points per sample. ``k`` above the largest sample only adds padding;
    beyond ``POINTCOC_MAX_PADDED_ENTRIES`` (environment variable, default 2**26) entries
    that padding is refused before it is allocated.
    """
    largest = int(counts.max()) if counts.numel() else 0
    allowed = limit("POINTCOC_MAX_PADDED_ENTRIES")
    if k > largest and num_queries * k > allowed:
        raise ValueError(
            f"{name}={k} exceeds every sample's size (the largest has {largest} points), and the padded "
            f"[{num_queries}, {k}] neighbour table would exceed {allowed} entries; lower {name} or raise the limit "
            f"with the environment variable POINTCOC_MAX_PADDED_ENTRIES"
        )
    return k


def check_ptr(ptr: object, num_points: int, device: torch.device, name: str = "ptr") -> Tensor:
    """Validate CSR sample offsets ``ptr: [B + 1]`` and return the matching sorted ``batch: [N]``.

    ``ptr`` must be a 1-D integer tensor on ``device``, start at 0, never decrease, and end at
    ``num_points`` (sample ``b`` holds points ``ptr[b]`` to ``ptr[b + 1] - 1``), as in PyG.
    """
    ptr = check_tensor(ptr, name, ndim=1)
    if ptr.is_floating_point() or ptr.dtype == torch.bool or ptr.is_complex():
        raise TypeError(f"{name} must be an integer tensor of sample offsets, got dtype {ptr.dtype}")
    if ptr.device != device:
        raise ValueError(f"{name} is on {ptr.device} but the points are on {device}")
    if ptr.numel() < 2:
        raise ValueError(f"{name} must hold at least 2 offsets ([B + 1] for B samples), got {ptr.numel()}")
    ptr = ptr.long()
    if int(ptr[0]) != 0 or int(ptr[-1]) != num_points:
        raise ValueError(f"{name} must start at 0 and end at the number of points ({num_points})")
    if bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing")
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=device), ptr[1:] - ptr[:-1])


def batch_or_ptr(
    batch: object, ptr: object, num_points: int, device: torch.device, batch_name: str, ptr_name: str
) -> object:
    """The ``batch`` argument, or the batch vector described by ``ptr`` (at most one may be given)."""
    if ptr is None:
        return batch
    if batch is not None:
        raise ValueError(f"give {batch_name} or {ptr_name}, not both")
    return check_ptr(ptr, num_points, device, ptr_name)


def check_bool(value: object, name: str) -> bool:
    """Require a Python bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value
