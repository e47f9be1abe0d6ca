"""Small building blocks of the MetaFormer block: MLP and per-sample stochastic depth."""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_drop_prob

__all__ = ["Mlp", "DropPath", "checkpoint_contexts", "checkpoint_recomputation"]


_recompute = threading.local()


@contextmanager
def checkpoint_recomputation() -> Iterator[None]:
    """Marks the recomputation pass of activation checkpointing (``torch.utils.checkpoint``'s
    ``context_fn``): inside it, :class:`Mlp` only regenerates what its backward pass keeps."""
    previous = getattr(_recompute, "active", False)
    _recompute.active = True
    try:
        yield
    finally:
        _recompute.active = previous


def checkpoint_contexts() -> Tuple[nullcontext, ContextManager[None]]:
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint`` (non-reentrant) of a block with an :class:`Mlp`.

    Only for blocks in which no op keeps the MLP's output for its backward pass (in a CoC
    block it feeds stochastic depth and the residual addition): the recomputation pass leaves
    that output unfilled.
    """
    return nullcontext(), checkpoint_recomputation()


class _GeluLinear(torch.autograd.Function):
    """``scale * F.linear(F.gelu(h), weight, bias)`` on ``h: [M, K]`` keeping ``h``, not ``gelu(h)`` or the output.

    The backward pass recomputes ``gelu(h)`` (one cheap elementwise op). Without ``scale`` it
    applies autograd's products, so the gradients are bit-identical. With ``scale`` the output is
    not kept for ``scale``'s gradient: with ``P = grad^T gelu(h)``, ``d scale = rowsum(P * weight) +
    bias * colsum(grad)``, ``d weight = scale * P``, ``d bias = scale * colsum(grad)``; ``h``'s
    gradient is autograd's. As it then keeps nothing computed after ``h``, the recomputation
    pass of a checkpointed block stops at it (PyTorch's checkpoint early stop): inside
    :func:`checkpoint_recomputation` it returns its output unfilled, as nothing reads it.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, scale: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(h, weight, bias, scale)
        if getattr(_recompute, "active", False):
            return h.new_empty(h.size(0), weight.size(0))
        out = F.linear(F.gelu(h), weight, bias)
        return out if scale is None else out.mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        h, weight, bias, scale = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_h = grad_weight = grad_bias = grad_scale = None
        if needs[0]:
            scaled = grad if scale is None else grad * scale
            grad_h = torch.ops.aten.gelu_backward(scaled.mm(weight), h)
        if scale is None:
            grad_weight = grad.t().mm(F.gelu(h)) if needs[1] else None
            return grad_h, grad_weight, (grad.sum(0) if needs[2] else None), None
        if needs[1] or needs[3]:
            products = grad.t().mm(F.gelu(h))  # [O, K]
            grad_weight = products * scale.unsqueeze(1) if needs[1] else None
        column_sums = grad.sum(0)
        if needs[3]:
            grad_scale = (products * weight).sum(1) + bias * column_sums
        if needs[2]:
            grad_bias = column_sums * scale
        return grad_h, grad_weight, grad_bias, grad_scale


class Mlp(nn.Module):
    """``Linear(dim, hidden) -> GELU -> Linear(hidden, dim)`` on ``x: [N, dim]``, times ``scale``.

    Without dropout, the GELU output is recomputed in the backward pass instead of stored
    (:class:`_GeluLinear`); without gradients, GELU runs in place on the hidden activation.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """``scale * fc2(gelu(fc1(x)))``; ``scale`` (``[dim]``, e.g. a layer scale) defaults to 1."""
        if self.drop.p == 0.0 and not torch.is_grad_enabled():
            out = self.fc2(torch.ops.aten.gelu_(self.fc1(x)))  # nothing to keep: GELU in place
            return out if scale is None else out.mul_(scale)
        if self.drop.p == 0.0 and x.dim() == 2:
            return _GeluLinear.apply(self.fc1(x), self.fc2.weight, self.fc2.bias, scale)
        out = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return out if scale is None else scale * out


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
