"""PointMLP, PointMLP-elite and their context-cluster variants (docs/design.md §9).

The oracle is :class:`pointcoc.reference.pointmlp.ReferencePointMLP`, written plainly in the
released layout: Conv1d layers on ``[B*S, C, k]`` groups, an explicit ``[B, S, k, 2C]``
concatenation with the repeated anchor, ``torch.cdist`` + ``topk`` neighbours and
a plain farthest point sampling loop from index 0. It loads a released-format
state dict (``{'net': {'module.' + name: tensor}}``, 1x1 weights ``[out, in, 1]``,
``fc1``/``fc_v``/``fc2`` in the context clusters), and pointcoc's model loads the
same checkpoint through ``pc.convert_official_state_dict``.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pointcoc as pc
from pointcoc.models.pointmlp import LocalGrouper
from pointcoc.reference.pointmlp import ReferencePointMLP, fps_from_first
from tests.helpers import DEVICES

NAMES = ["pointmlp", "pointmlp_elite", "pointmlp_coc", "pointmlp_elite_coc"]

# pointmlp_elite_coc = pointmlp_elite + one context cluster per pre-extraction block, each with
# f, v: Linear(O, h) and proj: Linear(h, O) (biases), sim_alpha, sim_beta; h = max(O // 4, 32):
# O=64 (1 block): 2*(64*32+32) + 32*64+64 + 2 = 6,274;  O=128 (1): 12,482;  O=256 (2 + 1): 3 * 49,538
PARAMS = {
    "pointmlp": 13_232_079,
    "pointmlp_elite": 709_807,
    "pointmlp_coc": 15_326_815,
    "pointmlp_elite_coc": 709_807 + 6_274 + 12_482 + 3 * 49_538,
}


def to_released(model: nn.Module) -> dict:
    """A pointcoc state dict in the released checkpoint format."""
    names = {"f": "fc1", "v": "fc_v", "proj": "fc2"}
    net = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"(operation\.\d+)\.(f|v|proj)\.", lambda m: f"{m.group(1)}.{names[m.group(2)]}.", key)
        if value.dim() == 2 and not key.startswith("classifier."):
            value = value.unsqueeze(-1)
        net["module." + key] = value.clone()
    return {"net": net, "epoch": 100, "best_test_acc": 0.0}


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Make every parameter and BN statistic matter (non-trivial affine, stats, similarity scalars)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("affine_alpha", "sim_alpha")) or (p.dim() == 1 and "weight" in name):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 or name.endswith(("affine_beta", "sim_beta")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def _pair(name: str, points: int, k: int):
    torch.manual_seed(0)
    model = pc.create_model(name, points=points, k_neighbors=k).double()
    _randomise(model)
    released = to_released(model)
    ref = ReferencePointMLP(name, points=points, k=k).double()
    ref.load_state_dict({key[len("module.") :]: v for key, v in released["net"].items()})
    with torch.no_grad():  # forget everything, then load the released checkpoint
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    model.load_state_dict(pc.convert_official_state_dict(name, released))
    return model, ref


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name):
    model = pc.create_model(name, num_classes=15)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert name in pc.list_models()


def test_released_parameter_names():
    sd = pc.create_model("pointmlp_coc").state_dict()
    assert sd["embedding.net.0.weight"].shape == (64, 3)
    assert {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"} == {
        k.rsplit(".", 1)[1] for k in sd if k.startswith("embedding.net.1.")
    }
    assert sd["local_grouper_list.3.affine_alpha"].shape == (1, 1, 1, 512)
    assert sd["pre_blocks_list.0.transfer.net.0.weight"].shape == (128, 128)
    assert sd["pre_blocks_list.3.operation.0.f.weight"].shape == (256, 1024)
    assert sd["pre_blocks_list.3.operation.2.proj.weight"].shape == (1024, 256)
    assert sd["pre_blocks_list.3.operation.3.net2.1.running_var"].shape == (1024,)
    assert sd["pos_blocks_list.1.operation.1.net1.0.weight"].shape == (256, 256)
    assert {k.split(".")[1] for k in sd if k.startswith("classifier.")} == {"0", "1", "4", "5", "8"}
    cluster = {k.split(".", 4)[4] for k in sd if re.match(r"pre_blocks_list\.\d+\.operation\.[02]\.", k)}
    assert cluster == {"f.weight", "f.bias", "v.weight", "v.bias", "proj.weight", "proj.bias", "sim_alpha", "sim_beta"}
    assert not any(re.match(r"pre_blocks_list\.\d+\.operation\.[13]\.(f|v|proj|sim)", k) for k in sd)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name, device):
    torch.manual_seed(0)
    model = pc.create_model(name, num_classes=7, points=128, k_neighbors=8).to(device).eval()
    xyz = torch.randn(3, 3, 128, device=device)
    with torch.no_grad():
        out = model(xyz)
        model.channels_last_input = True
        out_last = model(xyz.transpose(1, 2).contiguous())
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    torch.testing.assert_close(out_last, out, rtol=0, atol=0)


def test_forward_features_and_head():
    """The timm split: forward = forward_head(forward_features); pre_logits = the max over the anchors."""
    torch.manual_seed(0)
    model = pc.create_model("pointmlp_elite", num_classes=5, points=128, k_neighbors=8).double().eval()
    _randomise(model)
    xyz = torch.randn(2, 3, 128, dtype=torch.float64)
    with torch.no_grad():
        features = model.forward_features(xyz)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(xyz)
    assert features.shape == (2, 8, 256) and pooled.shape == (2, 256)
    torch.testing.assert_close(pooled, features.max(dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(model.forward_head(features), logits, rtol=0, atol=0)
    torch.testing.assert_close(model.classifier(pooled), logits, rtol=0, atol=0)


def test_zero_init_last():
    """zero_init_last zeroes exactly the last BN scale of every residual block (pre and pos), which then
    starts as relu(x); the default keeps the reference's scale 1."""
    from pointcoc.models.pointmlp import ResidualBlock

    torch.manual_seed(0)
    zeroed = pc.create_model("pointmlp_elite_coc", points=128, k_neighbors=8, zero_init_last=True)
    torch.manual_seed(0)
    plain = pc.create_model("pointmlp_elite_coc", points=128, k_neighbors=8)
    blocks = [m for m in zeroed.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 10  # elite: pre 1+1+2+1, pos 1+1+2+1
    changed = {k for k, v in zeroed.state_dict().items() if not torch.equal(v, plain.state_dict()[k])}
    expected = {f"{name}.net2.1.weight" for name, m in zeroed.named_modules() if isinstance(m, ResidualBlock)}
    assert changed == expected
    assert all(torch.equal(plain.state_dict()[k], torch.ones_like(plain.state_dict()[k])) for k in expected)
    x = torch.randn(50, blocks[0].net1[0].in_features)
    torch.testing.assert_close(blocks[0].train()(x), torch.relu(x), rtol=0, atol=0)


def test_registered_variants_take_their_arguments():
    """Each registered name builds PointMLP with its variant's arguments; keyword arguments override them."""

    def clusters(model):
        return any(isinstance(m, pc.nn.ContextCluster) for m in model.modules())

    for name, (arguments, _) in pc.models.pointmlp.POINTMLP_VARIANTS.items():
        model = pc.create_model(name, points=256)
        assert model.embedding.net[0].out_features == arguments.get("embed_dim", 64)
        assert clusters(model) == arguments.get("context_cluster", False)
        assert model.classifier[-1].out_features == 15
        expected = pc.models.pointmlp.COC_RECOMPUTE if name == "pointmlp_coc" else pc.models.pointmlp.DEFAULT_RECOMPUTE
        assert tuple(p.recompute for p in model.pre_blocks_list) == expected
    assert not clusters(pc.create_model("pointmlp_elite_coc", points=256, context_cluster=False))


def test_samples_are_independent_in_eval():
    """docs/design.md §13 batching: in evaluation every cloud gives, inside a batch, what it gives alone."""
    torch.manual_seed(0)
    model = pc.create_model("pointmlp_elite_coc", points=128, k_neighbors=8).double()
    _randomise(model)
    model.eval()
    xyz = torch.randn(3, 3, 128, dtype=torch.float64)
    with torch.no_grad():
        together = model(xyz)
        alone = torch.cat([model(xyz[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)


def test_output_shape_default_k():
    model = pc.create_model("pointmlp_elite", points=256, channels_last_input=True).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 256, 3)).shape == (2, 15)
    assert [g.groups for g in model.local_grouper_list] == [128, 64, 32, 16]
    assert [g.k for g in model.local_grouper_list] == [24] * 4


@pytest.mark.parametrize("name,points,k", [(n, 128, 8) for n in NAMES] + [("pointmlp_elite_coc", 256, 24)])
def test_matches_naive_reference_eval(name, points, k):
    model, ref = _pair(name, points, k)
    model.eval()
    ref.eval()
    xyz = torch.randn(2, 3, points, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(xyz), ref(xyz), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["pointmlp_elite", "pointmlp_elite_coc"])
def test_matches_naive_reference_training(name):
    """Training mode: batch statistics, dropout (same RNG stream), gradients of every parameter, running stats."""
    model, ref = _pair(name, 128, 8)
    model.train()
    ref.train()
    xyz = torch.randn(4, 3, 128, dtype=torch.float64)
    target = torch.tensor([0, 3, 5, 14])
    torch.manual_seed(1)
    out = model(xyz)
    torch.manual_seed(1)
    expected = ref(xyz)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    F.cross_entropy(out, target).backward()
    F.cross_entropy(expected, target).backward()
    ours = dict(model.named_parameters())
    theirs = pc.convert_official_state_dict(name, {k: p.grad for k, p in ref.named_parameters()})
    assert ours.keys() == theirs.keys()
    for key, p in ours.items():
        torch.testing.assert_close(p.grad, theirs[key], rtol=1e-9, atol=1e-10, msg=key)
    running = pc.convert_official_state_dict(name, dict(ref.named_buffers()))
    for key, b in model.named_buffers():
        torch.testing.assert_close(b, running[key], rtol=1e-10, atol=1e-10, msg=key)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recompute", [True, ("matmuls", "all", "none", "matmuls")])
def test_recompute_changes_nothing(device, recompute):
    """Recomputation in the backward pass: same logits, gradients and BN statistics as storing everything."""
    torch.manual_seed(0)
    kept = pc.create_model("pointmlp_elite_coc", points=128, k_neighbors=8, recompute=False).double().to(device)
    _randomise(kept)
    recomputed = pc.create_model("pointmlp_elite_coc", points=128, k_neighbors=8, recompute=recompute)
    recomputed = recomputed.double().to(device)
    assert [p.recompute for p in kept.pre_blocks_list] == ["none"] * 4
    assert [p.recompute for p in recomputed.pre_blocks_list] == list(
        pc.models.pointmlp.DEFAULT_RECOMPUTE if recompute is True else recompute
    )
    recomputed.load_state_dict(kept.state_dict())
    xyz = torch.randn(4, 3, 128, dtype=torch.float64, device=device)
    target = torch.tensor([1, 0, 7, 3], device=device)
    outs = []
    for model in (kept, recomputed):
        torch.manual_seed(2)  # same dropout masks
        outs.append(model(xyz))
        F.cross_entropy(outs[-1], target).backward()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for (key, p), q in zip(kept.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12, msg=key)
    for (key, b), c in zip(kept.named_buffers(), recomputed.buffers()):
        torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-12, msg=key)


def test_group_plan_matches_make_plan():
    """The directly built one-centre-per-group plan is the one make_plan builds for those segments."""
    from pointcoc.models.pointmlp import _group_plan
    from pointcoc.nn.cluster_plan import make_plan

    ours = _group_plan(5, 3, torch.device("cpu"))
    theirs = make_plan(batch=torch.arange(5).repeat_interleave(3), proposal="mean")
    for field in dataclasses.fields(theirs):
        a, b = getattr(ours, field.name), getattr(theirs, field.name)
        assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b, field.name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", ["similarity", "count"])
def test_equal_segments_fast_path(device, normalize):
    """Equal consecutive segments (reshape path): the values of a per-segment loop, and the
    generic scatter path's values and gradients (forced by an explicit identity dense_index)."""
    from pointcoc.nn.cluster_plan import make_plan
    from pointcoc.nn.context_cluster import context_cluster

    g = torch.Generator().manual_seed(0)
    G, L, H, d = 4, 5, 2, 3
    f = torch.randn(G * L, H, d, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    v = torch.randn(G * L, H, d, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    alpha = torch.tensor([1.7], dtype=torch.float64, device=device)
    beta = torch.tensor([-0.3], dtype=torch.float64, device=device)
    batch = torch.arange(G, device=device).repeat_interleave(L)
    fast = make_plan(batch=batch, proposal="mean")
    assert fast.dense_index is None
    weights = torch.randn(G * L, H, d, dtype=torch.float64, generator=g).to(device)
    out, centre = context_cluster(f, v, fast, alpha, beta, normalize)
    assert torch.equal(centre, batch.view(-1, 1).expand(-1, H))
    grads = torch.autograd.grad((out * weights).sum(), (f, v))
    for s in range(G):
        rows = slice(s * L, (s + 1) * L)
        fs, vs = f[rows].detach(), v[rows].detach()
        sim = torch.sigmoid(beta + alpha * F.cosine_similarity(fs, fs.mean(0, keepdim=True), dim=-1))
        den = 1 + (sim.sum(0) if normalize == "similarity" else torch.full_like(sim[0], L))
        agg = (vs.mean(0) + (sim.unsqueeze(-1) * vs).sum(0)) / den.unsqueeze(-1)
        torch.testing.assert_close(out[rows], sim.unsqueeze(-1) * agg, rtol=1e-12, atol=1e-12)
    slow = dataclasses.replace(fast, dense_index=torch.arange(G * L, device=device))  # forces the scatter path
    out_slow, _ = context_cluster(f, v, slow, alpha, beta, normalize)
    torch.testing.assert_close(out_slow, out, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad((out_slow * weights).sum(), (f, v)), grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grouper_matches_spec():
    """The implicit grouped tensor equals the explicit one, and its linear map equals concat @ W^T."""
    torch.manual_seed(0)
    B, n, C, S, k = 2, 40, 5, 10, 6
    grouper = LocalGrouper(C, S, k).double()
    with torch.no_grad():
        grouper.affine_alpha.copy_(torch.randn(1, 1, 1, C))
        grouper.affine_beta.copy_(torch.randn(1, 1, 1, C))
    xyz = torch.randn(B, n, 3, dtype=torch.float64)
    x = torch.randn(B, n, C, dtype=torch.float64)
    groups = grouper(xyz, x)
    rows = torch.arange(B)[:, None]
    anchor_idx = fps_from_first(xyz, S)
    assert torch.equal(groups.anchors.view(B, S) - n * torch.arange(B)[:, None], anchor_idx)
    torch.testing.assert_close(groups.anchor_xyz, xyz[rows, anchor_idx], rtol=0, atol=0)
    dist = ((xyz[rows, anchor_idx][:, :, None, :] - xyz[:, None, :, :]) ** 2).sum(-1)
    nbr = dist.argsort(dim=-1, stable=True)[..., :k]
    diff = x[rows[:, :, None], nbr] - x[rows, anchor_idx][:, :, None, :]
    std = diff.reshape(B, -1).std(dim=-1, unbiased=True).view(B, 1, 1, 1)
    normed = grouper.affine_alpha * diff / (std + 1e-5) + grouper.affine_beta
    expected = torch.cat([normed, x[rows, anchor_idx][:, :, None, :].expand(-1, -1, k, -1)], dim=-1)
    torch.testing.assert_close(groups.dense(), expected, rtol=1e-12, atol=1e-12)
    weight = torch.randn(7, 2 * C, dtype=torch.float64)
    torch.testing.assert_close(groups.linear(weight), (expected @ weight.t()).reshape(-1, 7), rtol=1e-12, atol=1e-12)


def test_random_fps_start():
    torch.manual_seed(0)
    grouper = LocalGrouper(4, 8, 4)
    xyz, x = torch.randn(3, 32, 3), torch.randn(3, 32, 4)
    offsets = 32 * torch.arange(3)
    assert torch.equal(grouper(xyz, x).anchors.view(3, 8)[:, 0], offsets)
    starts = torch.stack([grouper(xyz, x, random_start=True).anchors.view(3, 8)[:, 0] - offsets for _ in range(10)])
    assert starts.unique().numel() > 1 and 0 <= int(starts.min()) and int(starts.max()) < 32

    model = pc.create_model("pointmlp_elite_coc", num_classes=3, points=128, k_neighbors=8).eval()
    xyz = torch.randn(2, 3, 128)
    with torch.no_grad():
        assert torch.equal(model(xyz), model(xyz))  # start 0: deterministic
        model.fps_random_start = True
        outs = torch.stack([model(xyz) for _ in range(4)])
    assert not all(torch.equal(outs[0], o) for o in outs[1:])

    model.train()  # training with random starts: finite loss, every parameter gets a gradient
    loss = F.cross_entropy(model(xyz), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key


def _two_shapes(num: int, n: int, generator: torch.Generator):
    """Class 0: points on a sphere; class 1: points on a flat square. ``[num, 3, n]`` and labels."""
    labels = torch.arange(num) % 2
    sphere = F.normalize(torch.randn(num, n, 3, generator=generator), dim=-1)
    square = torch.rand(num, n, 3, generator=generator) * 2 - 1
    square[..., 2] = 0.02 * torch.randn(num, n, generator=generator)
    xyz = torch.where(labels[:, None, None] == 0, sphere, square)
    return xyz.transpose(1, 2).contiguous(), labels


def test_training_learns_two_shapes():
    """A few Adam steps with random FPS starts separate spheres from flat squares."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = pc.create_model(
        "pointmlp_elite", num_classes=2, points=64, k_neighbors=8, dropout=0.0, fps_random_start=True
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xyz, labels = _two_shapes(16, 64, g)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(xyz), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.25 * sum(losses[:3])
    model.fps_random_start = False
    with torch.no_grad():  # precise BN: running statistics of the training set, then evaluation mode
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.reset_running_stats()
                m.momentum = None
        model(xyz)
        model.eval()
        fresh, fresh_labels = _two_shapes(32, 64, g)
        assert torch.equal(model(xyz).argmax(1), labels)
        assert torch.equal(model(fresh).argmax(1), fresh_labels)


def test_bad_input():
    model = pc.create_model("pointmlp_elite", points=128, k_neighbors=8).eval()
    with pytest.raises(TypeError, match="x"):
        model([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="x"):
        model(torch.randn(3, 128))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, n\]"):
        model(torch.randn(2, 128, 3))
    with pytest.raises(TypeError, match="x"):
        model(torch.zeros(2, 3, 128, dtype=torch.long))
    with pytest.raises(ValueError, match="x has 32 points"):
        model(torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match="points=64"):
        pc.create_model("pointmlp", points=64)
    with pytest.raises(ValueError, match="k_neighbors"):
        pc.create_model("pointmlp", k_neighbors=(24, 24))
    with pytest.raises(ValueError, match="recompute must be one of"):
        pc.create_model("pointmlp_elite", recompute="some")
    with torch.no_grad():  # more points than the model was built for: fine (anchors stay points // 2)
        assert math.isfinite(float(model(torch.randn(2, 3, 200)).sum()))
