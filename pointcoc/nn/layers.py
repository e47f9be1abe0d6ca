"""Small building blocks of the MetaFormer block: MLP and per-sample stochastic depth."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_drop_prob

__all__ = ["Mlp", "DropPath"]


class _GeluLinear(torch.autograd.Function):
    """``F.linear(F.gelu(h), weight, bias)`` on ``h: [M, K]`` that keeps ``h`` but not ``gelu(h)``.

    The backward pass recomputes ``gelu(h)`` (one cheap elementwise op) and applies the
    same products as autograd's ``addmm`` / ``gelu`` backward, so gradients are bit-identical
    while a hidden-width activation per row is not stored.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight)
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        h, weight = ctx.saved_tensors
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t().mm(F.gelu(h))
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad.mm(weight), h)
        return grad_h, grad_weight, grad_bias


class Mlp(nn.Module):
    """``Linear(dim, hidden) -> GELU -> Linear(hidden, dim)`` on ``x: [N, dim]``.

    Without dropout, the GELU output is recomputed in the backward pass instead of stored;
    without gradients, GELU runs in place on the hidden activation.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop.p == 0.0 and not torch.is_grad_enabled():
            return self.fc2(torch.ops.aten.gelu_(self.fc1(x)))  # nothing to keep: GELU in place
        if self.drop.p == 0.0 and x.dim() == 2:
            return _GeluLinear.apply(self.fc1(x), self.fc2.weight, self.fc2.bias)
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
