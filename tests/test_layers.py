"""MetaFormer building blocks: the MLP's recomputed GELU keeps autograd's values and gradients,
its folded scale autograd's values and (to rounding) gradients."""

from __future__ import annotations

import pytest
import torch

import pointcoc as pc
from pointcoc.nn.geometry import point_lattice
from pointcoc.nn.layers import Mlp, checkpoint_recomputation
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


@pytest.mark.parametrize("device", DEVICES)
def test_mlp_scale_equals_autograd(device):
    """``Mlp(x, scale)``: the values of ``scale * mlp(x)`` bit for bit; the gradients, which come from
    ``P = grad^T gelu(h)`` instead of the unscaled output, equal autograd's to float64 rounding."""
    torch.manual_seed(0)
    mlp = Mlp(5, 12).to(device, torch.float64)
    with torch.no_grad():
        mlp.fc2.bias.uniform_(-1, 1)  # a nonzero bias: its term in the scale's gradient counts
    x = torch.randn(37, 5, device=device, dtype=torch.float64)
    scale = torch.randn(5, device=device, dtype=torch.float64)
    grad = torch.randn(37, 5, device=device, dtype=torch.float64)
    results = []
    for forward in (lambda t, s: mlp(t, scale=s), lambda t, s: s * mlp.fc2(mlp.act(mlp.fc1(t)))):
        mlp.zero_grad(set_to_none=True)
        xi, si = x.clone().requires_grad_(True), scale.clone().requires_grad_(True)
        out = forward(xi, si)
        out.backward(grad)
        results.append([out, xi.grad, si.grad] + [p.grad for p in mlp.parameters()])
    assert torch.equal(results[0][0], results[1][0])
    for got, expected in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        assert torch.equal(mlp(x, scale=scale), results[1][0])


def test_mlp_recomputation_pass_stops_at_the_hidden_activation():
    """In a checkpointed CoC block's backward pass the recomputation ends at the MLP's kept hidden
    activation: GELU runs once (for the gradients), not a second time for an output nobody reads."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pointcoc.models.coc import CocBlock

    class CountGelu(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountGelu.calls += func is torch.ops.aten.gelu.default
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    pts = pc.image_to_points(torch.rand(2, 1, 8, 8))
    geo = point_lattice(pc.models.coc.as_point_batch(pts)[1])
    block = CocBlock(4, 2.0, 2, 2, 2, 2).train()
    plan = block.token_mixer.make_plan(geo.pos, geo.batch, pixel=geo.pixel, grid_size=geo.grid_size)
    for checkpointing, expected in ((True, 1), (False, 1)):
        block.grad_checkpointing = checkpointing
        out = block(torch.randn(geo.pos.size(0), 4, requires_grad=True), geo, plan)
        CountGelu.calls = 0
        with CountGelu():
            out.sum().backward()
        assert CountGelu.calls == expected


def test_checkpoint_recomputation_flag_is_scoped():
    """The recomputation flag holds inside its context only (and nests)."""
    from pointcoc.nn import layers

    assert not getattr(layers._recompute, "active", False)
    with checkpoint_recomputation():
        with checkpoint_recomputation():
            assert layers._recompute.active
        assert layers._recompute.active
    assert not layers._recompute.active
