"""Small building blocks of the MetaFormer block: MLP and per-sample stochastic depth."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_drop_prob

__all__ = ["Mlp", "DropPath"]


class Mlp(nn.Module):
    """``Linear(dim, hidden) -> GELU -> Linear(hidden, dim)`` on ``x: [N, dim]``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth per sample: ``forward(x [N, C], batch [N], num_samples)``.

    In training each sample's whole residual branch is dropped with probability
    ``drop_prob`` (kept branches are scaled by ``1 / (1 - drop_prob)``); identity in eval.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = check_drop_prob(drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"

    def forward(self, x: Tensor, batch: Tensor, num_samples: int) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.empty(num_samples, 1, dtype=x.dtype, device=x.device).bernoulli_(keep) / keep
        return x * mask[batch]
