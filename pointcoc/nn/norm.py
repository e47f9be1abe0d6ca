"""GroupNorm with one group on ragged point batches."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PointGroupNorm", "segment_mean"]


def segment_mean(x: Tensor, batch: Tensor, num_samples: int, counts: Optional[Tensor] = None) -> Tensor:
    """Mean of each sample's rows. ``x: [N, ...]`` -> ``[B, ...]``."""
    if counts is None:
        counts = torch.bincount(batch, minlength=num_samples)
    sums = x.new_zeros((num_samples,) + tuple(x.shape[1:])).index_add_(0, batch, x)
    return sums / counts.clamp(min=1).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


class PointGroupNorm(nn.Module):
    """``nn.GroupNorm(1, C)`` for point sets: statistics per sample over all its points and channels.

    ``forward(x [N, C], batch [N], num_samples, uniform)``: when every sample has the
    same number of points (``uniform`` = that number) the batch is normalised as a dense
    ``[B, n*C]`` block, otherwise with segment reductions. Parameters ``weight``/``bias``
    are per channel, as in GroupNorm.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"

    def forward(self, x: Tensor, batch: Tensor, num_samples: int, uniform: Optional[int] = None) -> Tensor:
        N, C = x.shape
        if uniform is not None:
            y = F.layer_norm(x.reshape(num_samples, uniform * C), (uniform * C,), eps=self.eps).view(N, C)
        else:
            counts = torch.bincount(batch, minlength=num_samples)
            mean = segment_mean(x.mean(1, keepdim=True), batch, num_samples, counts)[batch]
            xc = x - mean
            var = segment_mean(xc.pow(2).mean(1, keepdim=True), batch, num_samples, counts)[batch]
            y = xc * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias, y, self.weight)
