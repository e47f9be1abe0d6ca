"""Tests of the reference implementation: the plain context cluster (against a float64 numpy
oracle and hand-built cases) and the CoC image models (names, shapes, parameter counts)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from pointcoc import reference
from pointcoc.models.configs import VARIANTS, CocConfig
from pointcoc.reference import Cluster

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

PARAMS_1000 = {
    "coc_tiny": 5_570_584,
    "coc_tiny2": 5_570_584,
    "coc_tiny_plain": 5_570_584,
    "coc_small": 14_657_024,
    "coc_medium": 29_290_520,
}


# ----------------------------------------------------------------------------- oracle


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def cluster_oracle(layer: Cluster, x: np.ndarray) -> np.ndarray:
    """Context cluster of docs/design.md §5 with explicit loops, float64 numpy. ``x: [B, C, H, W]``."""
    sd = {k: v.detach().cpu().double().numpy() for k, v in layer.state_dict().items()}
    alpha, beta = sd["sim_alpha"][0], sd["sim_beta"][0]
    feat = np.einsum("oc,bchw->bohw", sd["f.weight"][:, :, 0, 0], x) + sd["f.bias"][None, :, None, None]
    val = np.einsum("oc,bchw->bohw", sd["v.weight"][:, :, 0, 0], x) + sd["v.bias"][None, :, None, None]
    batch, _, height, width = x.shape
    th, tw = height // layer.regions_h, width // layer.regions_w
    ph, pw = layer.centres_h, layer.centres_w
    mixed = np.zeros_like(feat)
    for b in range(batch):
        for e in range(layer.heads):
            chs = slice(e * layer.head_dim, (e + 1) * layer.head_dim)
            for r in range(layer.regions_h):
                for q in range(layer.regions_w):
                    rows, cols = slice(r * th, (r + 1) * th), slice(q * tw, (q + 1) * tw)
                    tile_f, tile_v = feat[b, chs, rows, cols], val[b, chs, rows, cols]
                    centres, vcentres = [], []
                    for i in range(ph):  # adaptive pooling bins: [floor(t*L/n), ceil((t+1)*L/n))
                        r0, r1 = (i * th) // ph, -((-(i + 1) * th) // ph)
                        for j in range(pw):
                            c0, c1 = (j * tw) // pw, -((-(j + 1) * tw) // pw)
                            centres.append(tile_f[:, r0:r1, c0:c1].mean(axis=(1, 2)))
                            vcentres.append(tile_v[:, r0:r1, c0:c1].mean(axis=(1, 2)))
                    pts_f = tile_f.reshape(layer.head_dim, -1).T  # row-major points
                    pts_v = tile_v.reshape(layer.head_dim, -1).T
                    assign, weight = [], []
                    for p in pts_f:
                        sims = [
                            _sigmoid(
                                beta + alpha * (c @ p) / (max(np.linalg.norm(c), 1e-12) * max(np.linalg.norm(p), 1e-12))
                            )
                            for c in centres
                        ]
                        assign.append(int(np.argmax(sims)))  # first maximum
                        weight.append(sims[assign[-1]])
                    g = []
                    for m in range(len(centres)):
                        members = [n for n, a in enumerate(assign) if a == m]
                        num = vcentres[m] + sum((weight[n] * pts_v[n] for n in members), np.zeros(layer.head_dim))
                        den = 1.0 + (
                            sum(weight[n] for n in members) if layer.normalize == "similarity" else len(members)
                        )
                        g.append(num / den)
                    out = np.stack([weight[n] * g[assign[n]] for n in range(len(assign))])  # [N, c]
                    mixed[b, chs, rows, cols] = out.T.reshape(layer.head_dim, th, tw)
    return np.einsum("oc,bchw->bohw", sd["proj.weight"][:, :, 0, 0], mixed) + sd["proj.bias"][None, :, None, None]


def _randomised(layer: Cluster, seed: int) -> Cluster:
    """Give every parameter (biases and alpha/beta too) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
        layer.sim_alpha.fill_(1.7)
        layer.sim_beta.fill_(-0.3)
    return layer


# ----------------------------------------------------------------------------- Cluster


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", ["similarity", "count"])
@pytest.mark.parametrize(
    "size, prop_hw, regions_hw, heads",
    [
        ((4, 6), (2, 3), (1, 1), 1),
        ((6, 4), (3, 2), (2, 1), 2),  # rows vs columns kept apart
        ((4, 6), (3, 2), (2, 3), 2),  # 2x2 tiles, 3 overlapping bins over 2 rows
        ((5, 7), (4, 3), (1, 1), 3),  # overlapping bins on odd sizes
        ((8, 8), (2, 2), (4, 4), 2),  # 2x2 tiles, one point per bin
    ],
)
def test_cluster_matches_numpy_oracle(device, normalize, size, prop_hw, regions_hw, heads):
    torch.manual_seed(0)
    layer = Cluster(
        5,
        4,
        centres_w=prop_hw[1],
        centres_h=prop_hw[0],
        regions_w=regions_hw[1],
        regions_h=regions_hw[0],
        heads=heads,
        head_dim=3,
        normalize=normalize,
    ).double()
    _randomised(layer, seed=sum(size) + heads)
    x = torch.randn(2, 5, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = cluster_oracle(layer, x.numpy())
    out = layer.to(device)(x.to(device))
    assert out.shape == (2, 4, *size)
    np.testing.assert_allclose(out.cpu().detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_cluster_hand_computed_single_centre():
    # 1 head, 2x2 image, 1 centre; f = v = proj = identity, alpha = 2, beta = -0.5
    layer = Cluster(2, 2, centres_w=1, centres_h=1, regions_w=1, regions_h=1, heads=1, head_dim=2).double()
    with torch.no_grad():
        for conv in (layer.f, layer.v, layer.proj):
            conv.weight.copy_(torch.eye(2, dtype=torch.float64)[:, :, None, None])
            conv.bias.zero_()
        layer.sim_alpha.fill_(2.0)
        layer.sim_beta.fill_(-0.5)
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])  # pixels (0,0), (0,1), (1,0), (1,1)
    x = torch.tensor(pts.T.reshape(1, 2, 2, 2))
    centre = np.array([1.25, 0.5])
    cos = pts @ centre / (np.linalg.norm(pts, axis=1) * np.linalg.norm(centre))
    s = 1.0 / (1.0 + np.exp(-(-0.5 + 2.0 * cos)))
    g_similarity = (centre + (s[:, None] * pts).sum(0)) / (1.0 + s.sum())
    g_count = (centre + (s[:, None] * pts).sum(0)) / (1.0 + 4.0)
    for normalize, g in (("similarity", g_similarity), ("count", g_count)):
        layer.normalize = normalize
        out = layer(x)[0].reshape(2, 4).T.detach().numpy()  # [point, channel]
        np.testing.assert_allclose(out, s[:, None] * g[None, :], rtol=1e-13, atol=0)
    assert not np.allclose(g_similarity, g_count)


def test_cluster_ties_go_to_lowest_centre():
    # Two centres (1 row x 2 columns of bins) with identical similarity features, different value centres.
    layer = Cluster(
        3, 2, centres_w=2, centres_h=1, regions_w=1, regions_h=1, heads=1, head_dim=2, normalize="count"
    ).double()
    with torch.no_grad():
        layer.f.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)[:, :, None, None])
        layer.v.weight.copy_(torch.tensor([[0, 0, 1.0], [1.0, 0, 0]], dtype=torch.float64)[:, :, None, None])
        layer.proj.weight.copy_(torch.eye(2, dtype=torch.float64)[:, :, None, None])
        for conv in (layer.f, layer.v, layer.proj):
            conv.bias.zero_()
    ch0 = [[1.0, 2.0], [2.0, 1.0]]
    ch1 = [[3.0, 1.0], [1.0, 3.0]]  # column 0 and column 1 hold the same points -> equal centres
    ch2 = [[1.0, 5.0], [2.0, 7.0]]
    x = torch.tensor([[ch0, ch1, ch2]], dtype=torch.float64)
    feats = np.array([[1.0, 3.0], [2.0, 1.0], [2.0, 1.0], [1.0, 3.0]])  # row-major points (f space)
    values = np.array([[1.0, 1.0], [5.0, 2.0], [2.0, 2.0], [7.0, 1.0]])  # (ch2, ch0)
    centre = np.array([1.5, 2.0])
    s = 1.0 / (1.0 + np.exp(-(feats @ centre / (np.linalg.norm(feats, axis=1) * np.linalg.norm(centre)))))
    vc0, vc1 = np.array([1.5, 1.5]), np.array([6.0, 1.5])
    total = (s[:, None] * values).sum(0)
    expected = s[:, None] * ((vc0 + total) / 5.0)  # every point -> centre 0
    other = s[:, None] * ((vc1 + total) / 5.0)  # what "ties -> highest" would give
    out = layer(x)[0].reshape(2, 4).T.detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=0)
    assert not np.allclose(out, other)


def test_cluster_normalize_modes_differ():
    torch.manual_seed(3)
    layer = _randomised(Cluster(4, 4, heads=2, head_dim=3).double(), seed=3)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    similarity = layer(x)
    layer.normalize = "count"
    count = layer(x)
    assert not torch.allclose(similarity, count)


@pytest.mark.parametrize("device", DEVICES)
def test_cluster_gradcheck(device):
    torch.manual_seed(0)
    layer = _randomised(Cluster(3, 2, centres_w=2, centres_h=2, regions_w=1, regions_h=1, heads=2, head_dim=3), 5)
    layer = layer.double().to(device)
    # the input and the similarity path (f, alpha, beta), whose gradient passes the argmax mask
    names = ["f.weight", "f.bias", "sim_alpha", "sim_beta"]
    params = tuple(layer.get_parameter(n).detach().clone().requires_grad_(True) for n in names)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,), strict=False)

    assert torch.autograd.gradcheck(fn, (x,) + params, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_cluster_divisibility_and_input_errors():
    layer = Cluster(4, 4, regions_w=3, regions_h=2, heads=1, head_dim=2)
    with pytest.raises(ValueError, match=r"4x4.*regions_h=2 x regions_w=3"):
        layer(torch.randn(1, 4, 4, 4))
    assert layer(torch.randn(1, 4, 4, 6)).shape == (1, 4, 4, 6)
    with pytest.raises(ValueError, match="x must have 4 channels"):
        layer(torch.randn(1, 3, 4, 6))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        layer(torch.randn(4, 4, 6))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        layer(torch.ones(1, 4, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="normalize"):
        Cluster(4, 4, normalize="mean")
    with pytest.raises(ValueError, match="regions_w"):
        Cluster(4, 4, regions_w=0)
    with pytest.raises(TypeError, match="heads"):
        Cluster(4, 4, heads=2.0)


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", list(PARAMS_1000))
def test_parameter_counts(name):
    with torch.device("meta"):
        model = reference.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS_1000[name]


def test_list_models_and_variants():
    assert reference.list_models() == ["coc_tiny", "coc_tiny2", "coc_tiny_plain", "coc_small", "coc_medium", "coc_mini"]
    cfg = VARIANTS["coc_tiny2"]
    assert isinstance(cfg, CocConfig)
    assert (cfg.centres, cfg.regions, cfg.head_dim) == ((4, 2, 7, 4), (7, 7, 1, 1), 24)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.head_dim = 3
    with pytest.raises(ValueError, match="coc_huge"):
        reference.create_model("coc_huge")


def test_state_dict_names_and_init():
    torch.manual_seed(0)
    model = reference.create_model("coc_tiny")
    sd = model.state_dict()
    shapes = {
        "patch_embed.proj.weight": (32, 5, 4, 4),
        "network.0.0.token_mixer.f.weight": (96, 32, 1, 1),
        "network.0.0.token_mixer.v.weight": (96, 32, 1, 1),
        "network.0.0.token_mixer.proj.weight": (32, 96, 1, 1),
        "network.0.0.token_mixer.sim_alpha": (1,),
        "network.0.0.token_mixer.sim_beta": (1,),
        "network.0.0.mlp.fc1.weight": (256, 32),
        "network.0.0.mlp.fc2.weight": (32, 256),
        "network.0.0.norm1.weight": (32,),
        "network.0.0.norm2.bias": (32,),
        "network.0.0.layer_scale_1": (32,),
        "network.1.proj.weight": (64, 32, 3, 3),
        "network.4.4.mlp.fc1.weight": (784, 196),
        "network.5.proj.weight": (320, 196, 3, 3),
        "network.6.1.token_mixer.f.weight": (192, 320, 1, 1),
        "norm.weight": (320,),
        "head.weight": (1000, 320),
        "head.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "network.6.2.norm1.weight" not in sd and "network.7.proj.weight" not in sd
    assert len(sd) == 2 + 14 * 18 + 3 * 2 + 4  # stem, 14 blocks of 18 tensors, 3 reducers, norm + head
    for key, value in sd.items():
        if key.endswith("layer_scale_1") or key.endswith("layer_scale_2"):
            assert torch.equal(value, torch.full_like(value, 1e-5))
        elif key.endswith("sim_alpha"):
            assert torch.equal(value, torch.ones(1))
        elif key.endswith("sim_beta") or key.endswith(".bias"):
            assert torch.equal(value, torch.zeros_like(value)), key
        elif "norm" in key:
            assert torch.equal(value, torch.ones_like(value)), key
        else:  # linear / conv weights: truncated normal, std 0.02, cut at +-2
            assert value.abs().max() <= 2.0 and 0.015 < value.std() < 0.025, key


@pytest.mark.parametrize("device", DEVICES)
def test_forward_224(device):
    torch.manual_seed(0)
    model = reference.create_model("coc_tiny").to(device).eval()
    x = torch.randn(1, 3, 224, 224, device=device)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (1, 320, 7, 7)
    assert logits.shape == (1, 1000) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize(
    "name, size, in_chans, feat_hw",
    [
        ("coc_tiny", (32, 64), 3, (1, 2)),
        ("coc_tiny2", (56, 56), 3, (2, 2)),  # 4x4 centres on a 2x2 map: overlapping bins
        ("coc_tiny_plain", (36, 44), 1, (2, 2)),  # odd sizes, stride-2 reducers round up
    ],
)
def test_forward_small_sizes(name, size, in_chans, feat_hw):
    torch.manual_seed(0)
    model = reference.create_model(name, num_classes=7, in_chans=in_chans).eval()
    x = torch.randn(2, in_chans, *size)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 320, *feat_hw)
        logits = model(x)
    assert logits.shape == (2, 7) and bool(torch.isfinite(logits).all())
    # samples are independent: the batch gives what each sample gives alone
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:]), logits[1:], rtol=1e-5, atol=1e-6)


def test_model_input_errors():
    model = reference.create_model("coc_tiny", num_classes=3)
    with pytest.raises(ValueError, match=r"12x12.*regions_h=8 x regions_w=8"):
        model(torch.randn(1, 3, 48, 48))  # stage 0 map 12x12 is not divisible by 8 regions per side
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="at least 4x4"):
        model(torch.randn(1, 3, 2, 32))
    with pytest.raises(TypeError, match="config"):
        reference.ContextClusterNet("coc_tiny")


def test_position_channels():
    x = torch.zeros(2, 1, 3, 5, dtype=torch.float64)
    out = reference.add_position_channels(x)
    assert out.shape == (2, 3, 3, 5)
    rows = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64)
    cols = torch.tensor([-0.5, -0.25, 0.0, 0.25, 0.5], dtype=torch.float64)
    assert torch.equal(out[:, 1], rows[:, None].expand(3, 5).expand(2, 3, 5))
    assert torch.equal(out[:, 2], cols[None, :].expand(3, 5).expand(2, 3, 5))
    assert torch.equal(out[:, :1], x)


def test_drop_path():
    model = reference.create_model("coc_tiny", drop_path_rate=0.13)
    rates = [block.drop_path.drop_prob for stage in model.network[0::2] for block in stage]
    assert len(rates) == 14
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.13, 14), rtol=1e-6, atol=1e-8)
    layer = reference.DropPath(0.5)
    x = torch.ones(2000, 3)
    layer.train()
    y = layer(x)
    per_sample = y[:, 0]
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(y, per_sample[:, None].expand(2000, 3))  # whole samples dropped
    assert 800 < int((per_sample == 0).sum()) < 1200
    layer.eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="drop_prob"):
        reference.DropPath(1.0)


def test_mlp_is_per_pixel_linear():
    torch.manual_seed(0)
    mlp = reference.Mlp(4, 8).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    hidden = torch.nn.functional.gelu(torch.einsum("oc,bchw->bohw", mlp.fc1.weight, x) + mlp.fc1.bias[:, None, None])
    expected = torch.einsum("oc,bchw->bohw", mlp.fc2.weight, hidden) + mlp.fc2.bias[:, None, None]
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_block_residual_structure():
    torch.manual_seed(0)
    block = reference.ClusterBlock(
        8, 2, heads=2, head_dim=4, centres=2, regions=1, layer_scale_init_value=0.25
    ).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    y = x + 0.25 * block.token_mixer(block.norm1(x))
    y = y + 0.25 * block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x), y, rtol=1e-12, atol=1e-12)
    assert math.isclose(block.layer_scale_2[0].item(), 0.25)


# ----------------------------------------------------------------------------- PointMLP, released layout


def test_fps_from_first_hand_built():
    """Points on a line at 0, 1, 2, 10 and a copy of 10: start at index 0, then the farthest
    (10: the lower index of the tie), then the point farthest from both (2, at distance 4 from 0)."""
    from pointcoc.reference.pointmlp import fps_from_first

    xs = torch.tensor([0.0, 1.0, 2.0, 10.0, 10.0])
    xyz = torch.stack([xs, torch.zeros(5), torch.zeros(5)], -1)[None]
    assert fps_from_first(xyz, 3).tolist() == [[0, 3, 2]]
    assert fps_from_first(torch.cat([xyz, xyz.flip(1)]), 2).tolist() == [[0, 3], [0, 4]]


@pytest.mark.parametrize(
    "name,params",
    [("pointmlp", 13_232_079), ("pointmlp_elite", 709_807), ("pointmlp_coc", 15_326_815)],
)
def test_reference_pointmlp_parameter_counts_and_shapes(name, params):
    model = reference.ReferencePointMLP(name, num_classes=15, points=64, k=4).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 64)).shape == (2, 15)
    with pytest.raises(ValueError, match="name must be one of"):
        reference.ReferencePointMLP("pointnet")
