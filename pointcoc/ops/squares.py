"""Squared Euclidean distances in the reference arithmetic, with as few passes as possible.

The reference distance is ``sum_p (x_p - y_p) ** 2``: a difference and a square per coordinate,
each rounded once, summed in coordinate order. These helpers compute exactly those values.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["squared_difference", "sum_of_rows"]


def squared_difference(a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``(a - b) ** 2`` elementwise (``a``, ``b`` and ``out`` of one shape) in one pass.

    The ATen ``mse_loss`` kernel without reduction: a difference then a product, each rounded
    once, so the values are those of ``(a - b) ** 2`` (no fused multiply-add is possible).
    """
    # the binding torch.nn.functional.mse_loss calls, which has no ``out=`` (a fresh tensor per
    # call cost the saving); torch.ops.aten.mse_loss.out adds ~10 us of dispatch per call
    if out is None:
        return torch._C._nn.mse_loss(a, b, 0)  # reduction 0: none
    return torch._C._nn.mse_loss(a, b, 0, out=out)


def sum_of_rows(rows: Sequence[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """``rows[0] + rows[1] + ...`` added in order (at least two rows), into ``out`` if given."""
    total = torch.add(rows[0], rows[1], out=out)
    for row in rows[2:]:
        total.add_(row)
    return total
