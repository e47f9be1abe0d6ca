"""MetaFormer building blocks: the MLP's recomputed GELU keeps autograd's values and gradients."""

from __future__ import annotations

import pytest
import torch

from pointcoc.nn.layers import Mlp
from tests.helpers import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_recomputed_gelu_equals_autograd_bit_for_bit(device, dtype):
    torch.manual_seed(0)
    mlp = Mlp(5, 12).to(device, dtype)
    x = torch.randn(37, 5, device=device, dtype=dtype)
    grad = torch.randn(37, 5, device=device, dtype=dtype)
    results = []
    for forward in (mlp, lambda t: mlp.fc2(mlp.act(mlp.fc1(t)))):  # the module, then plain autograd
        mlp.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out = forward(xi)
        out.backward(grad)
        results.append([out, xi.grad] + [p.grad for p in mlp.parameters()])
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


def test_mlp_stores_no_hidden_activation_after_gelu():
    """Only the GELU input is kept: the saved tensors of hidden width are one, not two."""
    mlp = Mlp(4, 16)
    hidden = []

    def pack(t):
        if t.dim() == 2 and t.size(1) == 16 and t.size(0) == 9:
            hidden.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(torch.randn(9, 4, requires_grad=True))
    assert len(hidden) == 1


def test_mlp_without_gradients_gives_the_same_values():
    """Inference runs GELU in place on the hidden activation: same values as the training path."""
    torch.manual_seed(0)
    mlp = Mlp(6, 10)
    x = torch.randn(11, 6)
    x_before = x.clone()
    with torch.no_grad():
        got = mlp(x)
    assert torch.equal(got, mlp.fc2(mlp.act(mlp.fc1(x))))
    assert torch.equal(x, x_before)  # the input is not overwritten
