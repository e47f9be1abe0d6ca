"""Random centre sampling on ragged batches (no Python loop over samples)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_batch, check_generator, check_k, check_ratio, check_tensor
from .batch import batch_counts, batch_ptr

__all__ = ["per_sample_count", "random_sample"]


def per_sample_count(counts: Tensor, ratio: object, num_points: Optional[int], name: str = "num_points") -> Tensor:
    """How many points to pick in each sample: ``ceil(ratio * n_b)`` or a fixed count.

    ``counts: [B]`` points per sample -> ``[B]`` picks per sample (0 for empty samples).
    ``ratio`` is a float (product in float64) or a floating tensor (0-d, or ``[B]``: one ratio
    per sample; product in the tensor's dtype, as torch-cluster).
    A fixed ``num_points`` larger than a non-empty sample raises ``ValueError``.
    """
    if num_points is not None:
        num_points = check_k(num_points, name)
        nonempty = counts > 0
        if bool((counts[nonempty] < num_points).any()):
            small = int(counts[nonempty].min())
            raise ValueError(f"{name}={num_points} is larger than a sample's point count ({small})")
        return torch.where(nonempty, torch.full_like(counts, num_points), torch.zeros_like(counts))
    ratio = _ratio_per_sample(ratio, counts)
    if isinstance(ratio, Tensor):  # in the tensor's dtype, as torch-cluster does
        picks = torch.ceil(counts.to(ratio.dtype) * ratio).long()
    else:  # ceil(ratio * n) in float64, guarded against 0.5 * 4 -> 2.0000001
        picks = torch.ceil(counts.double() * ratio - 1e-9).long()
    return torch.where(counts > 0, picks.clamp(min=1), picks)


def _ratio_per_sample(ratio: object, counts: Tensor) -> object:
    """A float in (0, 1], or a ``[B]`` tensor of such ratios (from a 0-d or ``[B]`` float tensor)."""
    if not isinstance(ratio, Tensor):
        return check_ratio(ratio)
    if not ratio.is_floating_point():
        raise TypeError(f"ratio must be a float or a floating-point tensor, got dtype {ratio.dtype}")
    if ratio.dim() > 1 or (ratio.dim() == 1 and ratio.numel() != counts.numel()):
        raise ValueError(
            f"ratio must be a number, a 0-d tensor or one value per sample ([{counts.numel()}]), "
            f"got shape {tuple(ratio.shape)}"
        )
    ratio = ratio.to(counts.device).expand(counts.shape)
    if not bool(((ratio > 0) & (ratio <= 1)).all()):
        raise ValueError("ratio must be in (0, 1] for every sample")
    return ratio


def random_sample(
    batch: Tensor,
    ratio: Optional[float] = 0.5,
    num_points: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    sort: bool = False,
) -> Tensor:
    """Pick a uniformly random subset of points in every sample, without replacement.

    Args:
        batch: ``[N]`` sorted sample ids of the points.
        ratio: fraction of each sample to keep, ``ceil(ratio * n_b)`` points
            (ignored when ``num_points`` is given).
        num_points: keep exactly this many points per sample.
        generator: ``torch.Generator`` for reproducible draws (on the batch's device).
        sort: return each sample's picks in ascending index order instead of draw order.

    Returns:
        ``[M]`` LongTensor of global point indices, grouped by sample in sample order.
    """
    batch = check_tensor(batch, "batch", ndim=1)
    batch, num_samples = check_batch(batch, batch.numel(), batch.device)
    check_generator(generator, batch.device)
    counts = batch_counts(batch, num_samples)
    picks = per_sample_count(counts, ratio, num_points)
    keys = torch.rand(batch.numel(), generator=generator, device=batch.device, dtype=torch.float64)
    # sort by (sample, random key): sample ids are integers, keys in [0, 1)
    order = torch.argsort(batch.double() + keys)
    ptr = batch_ptr(counts)
    rank = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    chosen = order[rank < picks[batch]]
    if sort:
        chosen = torch.sort(chosen).values
    return chosen
