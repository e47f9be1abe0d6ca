"""The points-mode context-cluster operation against the grid reference and brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

import pointcoc as pc
from pointcoc.nn.context_cluster import ContextCluster
from pointcoc.reference.cluster import Cluster
from tests.helpers import DEVICES, grid_points


def _copy_grid_weights(grid: Cluster, layer: ContextCluster) -> None:
    with torch.no_grad():
        for name in ("f", "v", "proj"):
            getattr(layer, name).weight.copy_(getattr(grid, name).weight.flatten(1))
            getattr(layer, name).bias.copy_(getattr(grid, name).bias)
        layer.sim_alpha.copy_(grid.sim_alpha)
        layer.sim_beta.copy_(grid.sim_beta)


def _grid_vs_points(
    fold, centres, heads, size=(56, 56), batch=1, dim=4, head_dim=3, normalize="similarity", device="cpu", alpha=None
):
    torch.manual_seed(fold * 100 + centres * 10 + heads)
    H, W = size
    grid = Cluster(dim, dim + 1, centres, centres, fold, fold, heads, head_dim, normalize).double().to(device)
    layer = (
        ContextCluster(dim, dim + 1, heads, head_dim, "grid", (centres, centres), fold, normalize=normalize)
        .double()
        .to(device)
    )
    with torch.no_grad():  # non-trivial similarity parameters
        grid.sim_alpha.fill_(1.7 if alpha is None else alpha)
        grid.sim_beta.fill_(-0.3)
    _copy_grid_weights(grid, layer)
    img = torch.randn(batch, dim, H, W, dtype=torch.float64, device=device, requires_grad=True)
    pts = grid_points(img.detach())
    x = pts.x.clone().requires_grad_(True)
    ref = grid(img)
    out = layer(x, pts.pos, pts.batch, pixel=pts.pixel, grid_size=pts.grid_size)
    ref_pts = ref.permute(0, 2, 3, 1).reshape(-1, dim + 1)
    torch.testing.assert_close(out, ref_pts, rtol=0, atol=1e-10)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.view(batch, H, W, dim + 1).permute(0, 3, 1, 2))
    torch.testing.assert_close(x.grad, img.grad.permute(0, 2, 3, 1).reshape(-1, dim), rtol=0, atol=1e-10)
    for name in ("f", "v", "proj"):
        for p in ("weight", "bias"):
            gp = getattr(getattr(grid, name), p).grad
            torch.testing.assert_close(
                getattr(getattr(layer, name), p).grad,
                gp.reshape(gp.size(0), -1).squeeze(-1) if p == "weight" else gp,
                rtol=0,
                atol=1e-10,
            )
    for p in ("sim_alpha", "sim_beta"):
        torch.testing.assert_close(getattr(layer, p).grad, getattr(grid, p).grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("fold,centres", list(itertools.product([1, 2, 4, 7, 8], [1, 2, 3, 4, 5, 7])))
def test_grid_equivalence_float64(fold, centres, heads):
    _grid_vs_points(fold, centres, heads)


@pytest.mark.parametrize("device", DEVICES)
def test_grid_equivalence_count_normalisation_and_negative_alpha(device):
    _grid_vs_points(2, 3, 2, size=(12, 18), normalize="count", device=device)
    _grid_vs_points(2, 2, 2, size=(12, 12), alpha=-2.0, device=device)


def _brute_force(f, v, group, centre_members, alpha, beta):
    """Dense float64 oracle: points x centres similarity with a 0/1 mask, per group and head."""
    N, H, d = f.shape
    out = torch.zeros_like(v)
    for g in group.unique():
        pts = (group == g).nonzero().flatten()
        mem = centre_members[int(g)]
        for h in range(H):
            cf = torch.stack([f[m, h].mean(0) for m in mem])
            cv = torch.stack([v[m, h].mean(0) for m in mem])
            cos = torch.nn.functional.normalize(f[pts, h], dim=-1) @ torch.nn.functional.normalize(cf, dim=-1).T
            sim = torch.sigmoid(beta + alpha * cos)  # [n, c]
            mask = torch.zeros_like(sim).scatter_(1, sim.argmax(1, keepdim=True), 1.0)
            sim = sim * mask
            agg = (sim.T @ v[pts, h] + cv) / (sim.sum(0)[:, None] + 1)
            out[pts, h] = sim @ agg
    return out


def test_mean_proposal_matches_brute_force():
    torch.manual_seed(0)
    sizes = [5, 1, 8]
    group = torch.arange(3).repeat_interleave(torch.tensor(sizes))
    f = torch.randn(14, 2, 3, dtype=torch.float64)
    v = torch.randn(14, 2, 3, dtype=torch.float64)
    plan = pc.nn.make_plan(None, group, proposal="mean", regions=None)
    out, centre = pc.nn.context_cluster(
        f, v, plan, torch.tensor([1.3], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64)
    )
    members = {g: [(group == g).nonzero().flatten()] for g in range(3)}
    torch.testing.assert_close(out, _brute_force(f, v, group, members, 1.3, 0.2), rtol=0, atol=1e-12)
    assert torch.equal(centre, group[:, None].expand(14, 2))


def test_index_proposal_matches_brute_force():
    torch.manual_seed(1)
    pos = torch.rand(20, 2, dtype=torch.float64)
    batch = torch.tensor([0] * 12 + [1] * 8)
    f = torch.randn(20, 2, 4, dtype=torch.float64)
    v = torch.randn(20, 2, 4, dtype=torch.float64)
    index = torch.tensor([3, 0, 7, 15, 12])
    plan = pc.nn.make_plan(pos, batch, proposal="index", index=index, k=3, regions=None)
    assert plan.num_centres == 3 and plan.centre_valid is not None
    out, _ = pc.nn.context_cluster(
        f, v, plan, torch.tensor([2.0], dtype=torch.float64), torch.tensor([-0.5], dtype=torch.float64)
    )
    members = {}
    for g, props in ((0, [3, 0, 7]), (1, [15, 12])):
        pts = (batch == g).nonzero().flatten()
        members[g] = []
        for p in props:
            d = ((pos[pts] - pos[p]) ** 2).sum(1)
            members[g].append(pts[torch.argsort(d, stable=True)[:3]])
    torch.testing.assert_close(out, _brute_force(f, v, batch, members, 2.0, -0.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("proposal", ["grid", "fps"])
def test_block_checkpointing_keeps_values_and_gradients(device, proposal):
    """A CoC block with activation checkpointing (set for the first stages in training) equals the
    block without it bit for bit: output, input and parameter gradients, with stochastic depth."""
    from pointcoc.models.coc import CocBlock
    from pointcoc.nn.geometry import point_lattice

    torch.manual_seed(0)
    pts = pc.sample_pixels(
        pc.image_to_points(torch.rand(3, 1, 12, 10, dtype=torch.float64, device=device)),
        0.7,
        generator=torch.Generator(device=device).manual_seed(1),
    )
    geo = point_lattice(pc.models.coc.as_point_batch(pts)[1])
    block = CocBlock(6, 2.0, 2, 3, 2, 2, drop_path=0.5).double().to(device).train()
    with torch.no_grad():
        block.layer_scale_1.fill_(0.7), block.layer_scale_2.fill_(-0.4), block.token_mixer.sim_alpha.fill_(1.9)
    plan = block.token_mixer.make_plan(geo.pos, geo.batch, pixel=geo.pixel, grid_size=geo.grid_size, proposal=proposal)
    x = torch.randn(geo.pos.size(0), 6, dtype=torch.float64, device=device)
    results = []
    for checkpointing in (True, False):
        block.grad_checkpointing = checkpointing
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(5)  # the same stochastic-depth draws
        out = block(xi, geo, plan)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).view_as(out))
        results.append([out, xi.grad] + [p.grad for p in block.parameters()])
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_index_add_rows_equals_autograd_index_add(device):
    """The segment sum that does not save its source gives autograd's values and gradients."""
    from pointcoc.nn.context_cluster import _index_add_rows

    torch.manual_seed(0)
    base = torch.randn(4, 3, device=device, dtype=torch.float64, requires_grad=True)
    source = torch.randn(9, 3, device=device, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([3, 0, 0, 2, 3, 3, 1, 0, 2], device=device)
    grad = torch.randn(4, 3, device=device, dtype=torch.float64)
    got = _index_add_rows(base, index, source)
    expected = base.index_add(0, index, source)
    assert torch.equal(got, expected)
    got_grads = torch.autograd.grad(got, (base, source), grad)
    expected_grads = torch.autograd.grad(expected, (base, source), grad)
    for g, e in zip(got_grads, expected_grads):
        assert torch.equal(g, e)
    assert torch.equal(got_grads[1], grad[index])  # hand check: each source row gets its target's gradient


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads", [1, 3])
def test_weighted_sum_and_spread_equal_bmm_bit_for_bit(device, heads):
    """The per-group weighted sum and spread (broadcast products with one head) give the values and
    gradients of autograd's ``bmm`` / ``baddbmm`` bit for bit, in float32."""
    from pointcoc.nn.context_cluster import _Spread, _WeightedSum

    torch.manual_seed(heads)
    G, L, C = 6, 5, 7
    w = torch.rand(G, L, heads, device=device, requires_grad=True)
    x = torch.randn(G, L, C, device=device, requires_grad=True)
    p = torch.randn(G, heads, C, device=device, requires_grad=True)
    bias = torch.randn(C, device=device, requires_grad=True)
    pairs = [
        (_WeightedSum.apply(w, x), torch.bmm(w.transpose(1, 2), x), (w, x)),
        (_Spread.apply(bias, w, p), torch.baddbmm(bias.expand(G, L, C), w, p), (bias, w, p)),
    ]
    for got, expected, inputs in pairs:
        assert torch.equal(got, expected)
        grad = torch.randn_like(got)
        for g, e in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
            assert torch.equal(g, e)
    # hand check: one group, one head: w = [1, 2], x rows [1, 0], [0, 3] -> [1, 6]; spread of p = [4, 5] by w
    w1 = torch.tensor([[[1.0], [2.0]]], device=device)
    rows = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]], device=device)
    assert _WeightedSum.apply(w1, rows).tolist() == [[[1.0, 6.0]]]
    spread = _Spread.apply(torch.tensor([0.5, 0.0], device=device), w1, torch.tensor([[[4.0, 5.0]]], device=device))
    assert spread.tolist() == [[[4.5, 5.0], [8.5, 10.0]]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads,normalize", [(1, "similarity"), (3, "similarity"), (3, "count")])
def test_one_centre_segments_project_per_segment(device, heads, normalize):
    """Equal segments with one centre each (value and output projected once per segment): the values and
    gradients of the generic path, which projects every point (forced by an explicit identity dense_index)."""
    import dataclasses

    torch.manual_seed(heads)
    G, L, C = 5, 4, 6
    layer = ContextCluster(C, C + 2, heads, 3, "mean", normalize=normalize).double().to(device)
    with torch.no_grad():
        layer.sim_alpha.fill_(1.7)
        layer.sim_beta.fill_(-0.3)
    x = torch.randn(G * L, C, dtype=torch.float64, device=device, requires_grad=True)
    fast = pc.nn.make_plan(None, torch.arange(G, device=device).repeat_interleave(L), proposal="mean", regions=None)
    slow = dataclasses.replace(fast, dense_index=torch.arange(G * L, device=device))
    weights = torch.randn(G * L, C + 2, dtype=torch.float64, device=device)
    results = []
    for plan in (fast, slow):
        out, centre = layer(x, plan=plan, return_assignment=True)
        grads = torch.autograd.grad((out * weights).sum(), [x, *layer.parameters()])
        results.append((out, centre, grads))
    (out, centre, grads), (out_ref, centre_ref, grads_ref) = results
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(centre, centre_ref)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["in order", "permuted", "padded"])
def test_head_major_dense_layout_by_hand(device, layout):
    """The argmax's dense layout ``[G, H, L, d]``: slot (g, h, r) holds head h of group g's r-th point
    (in point order), padding slots are zero; built here point by point."""
    from types import SimpleNamespace

    from pointcoc.nn.cluster_plan import _dense_layout
    from pointcoc.nn.context_cluster import _head_major

    group = {"in order": [0, 0, 0, 1, 1, 1], "permuted": [1, 0, 1, 0, 0, 1], "padded": [1, 0, 1, 1, 2, 1]}[layout]
    group = torch.tensor(group, device=device)
    G = int(group.max()) + 1
    dense_index, L = _dense_layout(group, G)
    assert (dense_index is None) == (layout == "in order")
    plan = SimpleNamespace(num_groups=G, max_group_size=L, dense_index=dense_index)
    fn = torch.arange(6 * 2 * 3, dtype=torch.float64, device=device).view(6, 2, 3) + 1
    expected = torch.zeros(G, 2, L, 3, dtype=torch.float64, device=device)
    rank = [0] * G
    for i, g in enumerate(group.tolist()):
        expected[g, :, rank[g]] = fn[i]
        rank[g] += 1
    assert torch.equal(_head_major(fn, plan), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_context_cluster_without_gradients_equals_with_and_keeps_its_inputs(device):
    """Without gradients the products run in place on fresh gathers: the same bits as with
    gradients, and the caller's f, v and centre features are untouched."""
    from pointcoc.nn.context_cluster import context_cluster

    torch.manual_seed(0)
    pts = grid_points(torch.zeros(2, 1, 8, 8, device=device))
    layer = ContextCluster(1, 4, heads=2, head_dim=3, proposal="grid", centres=(2, 2), regions=2).to(device)
    plan = layer.make_plan(pts.pos, pts.batch, pixel=pts.pixel, grid_size=pts.grid_size)
    assert plan.dense_index is not None  # 2 x 2 regions of row-major pixels: the layout is a permutation
    f, v = torch.randn(2, 128, 2, 3, device=device).unbind(0)
    centres = tuple(torch.randn(2, plan.num_groups * plan.num_centres, 2, 3, device=device).unbind(0))
    alpha, beta = torch.tensor([1.5], device=device), torch.tensor([-0.2], device=device)
    before = [t.clone() for t in (f, v, *centres)]
    with torch.no_grad():
        got = context_cluster(f, v, plan, alpha, beta, centres=centres)
    expected = context_cluster(f.requires_grad_(True), v, plan, alpha, beta, centres=centres)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    for t, b in zip((f, v, *centres), before):
        assert torch.equal(t.detach(), b)
