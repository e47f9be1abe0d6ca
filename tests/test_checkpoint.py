"""Tests of convert_official_state_dict: every released form (old/new naming, module. prefixes,
checkpoint wrappers) converts to the same points-mode state dict; idempotence; errors."""

import re

import pytest
import torch

from pointcoc import reference
from pointcoc.checkpoint import convert_official_state_dict

_MATRIX = re.compile(r"(token_mixer\.(f|v|proj)|mlp\.(fc1|fc2))\.weight$")
_OLD = {"f": "fc1", "proj": "fc2", "v": "fc_v"}


@pytest.fixture(scope="module")
def coc_tiny_sd():
    torch.manual_seed(0)
    return reference.create_model("coc_tiny", num_classes=10).state_dict()


def _expected_coc(sd):
    return {k: (v.reshape(v.shape[0], v.shape[1]) if _MATRIX.search(k) else v) for k, v in sd.items()}


def _old_naming(sd):
    """The older reference: token_mixer.fc1/fc2/fc_v and 1x1-conv MLP weights [out, in, 1, 1]."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"token_mixer\.(f|v|proj)\.", lambda m: f"token_mixer.{_OLD[m.group(1)]}.", key)
        if re.search(r"mlp\.fc[12]\.weight$", key):
            value = value[:, :, None, None]
        out[key] = value
    return out


def _assert_same(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def test_coc_all_released_forms_convert_alike(coc_tiny_sd):
    expected = _expected_coc(coc_tiny_sd)
    old = _old_naming(coc_tiny_sd)
    assert "network.0.0.token_mixer.fc_v.weight" in old and old["network.0.0.mlp.fc1.weight"].dim() == 4
    forms = {
        "new": coc_tiny_sd,
        "old": old,
        "new, module.": {f"module.{k}": v for k, v in coc_tiny_sd.items()},
        "old, module.": {f"module.{k}": v for k, v in old.items()},
        "state_dict": {"state_dict": coc_tiny_sd, "epoch": 300, "arch": "coc_tiny"},
        "model": {"model": {f"module.{k}": v for k, v in old.items()}, "optimizer": {"state": {}}},
        "net": {"net": coc_tiny_sd, "best_acc": 73.2},
    }
    for label, form in forms.items():
        converted = convert_official_state_dict("coc_tiny", form)
        _assert_same(converted, expected)
    # the target contract, spelled out
    assert converted["network.0.0.token_mixer.f.weight"].shape == (96, 32)
    assert converted["network.0.0.token_mixer.proj.weight"].shape == (32, 96)
    assert converted["network.0.0.mlp.fc1.weight"].shape == (256, 32)
    assert converted["network.0.0.token_mixer.sim_alpha"].shape == (1,)
    assert converted["patch_embed.proj.weight"].shape == (32, 5, 4, 4)
    assert converted["network.1.proj.weight"].shape == (64, 32, 3, 3)
    assert converted["head.weight"].shape == (10, 320)


def test_coc_conversion_is_idempotent_and_leaves_input_alone(coc_tiny_sd):
    old = _old_naming(coc_tiny_sd)
    shapes = {k: v.shape for k, v in old.items()}
    once = convert_official_state_dict("coc_tiny", {"state_dict": old})
    assert {k: v.shape for k, v in old.items()} == shapes and list(old) == list(shapes)
    _assert_same(convert_official_state_dict("coc_tiny", once), once)


def test_coc_old_names_only_under_token_mixer():
    sd = {
        "network.0.0.token_mixer.fc1.bias": torch.zeros(4),
        "network.0.0.token_mixer.fc2.weight": torch.zeros(2, 4, 1, 1),
        "network.0.0.mlp.fc1.weight": torch.zeros(8, 2, 1, 1),
        "network.0.0.mlp.fc2.bias": torch.zeros(2),
    }
    out = convert_official_state_dict("coc_small", sd)
    assert list(out) == [
        "network.0.0.token_mixer.f.bias",
        "network.0.0.token_mixer.proj.weight",
        "network.0.0.mlp.fc1.weight",
        "network.0.0.mlp.fc2.bias",
    ]
    assert out["network.0.0.token_mixer.proj.weight"].shape == (2, 4)
    assert out["network.0.0.mlp.fc1.weight"].shape == (8, 2)


def _pointmlp_released(cluster_kernel):
    """A few keys of a released PointMLP-CoC checkpoint: {'net': {'module.' + name: tensor}, ...}."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd = {
        "embedding.net.0.weight": r(64, 3, 1),
        "embedding.net.1.weight": r(64),
        "embedding.net.1.running_mean": r(64),
        "embedding.net.1.num_batches_tracked": torch.tensor(7),
        "local_grouper_list.0.affine_alpha": r(1, 1, 1, 64),
        "local_grouper_list.0.affine_beta": r(1, 1, 1, 64),
        "pre_blocks_list.0.transfer.net.0.weight": r(128, 128, 1),
        "pre_blocks_list.0.operation.0.sim_alpha": r(1),
        "pre_blocks_list.0.operation.0.sim_beta": r(1),
        "pre_blocks_list.0.operation.0.fc1.weight": r(32, 128, *cluster_kernel),
        "pre_blocks_list.0.operation.0.fc1.bias": r(32),
        "pre_blocks_list.0.operation.0.fc_v.weight": r(32, 128, *cluster_kernel),
        "pre_blocks_list.0.operation.0.fc2.weight": r(128, 32, *cluster_kernel),
        "pre_blocks_list.0.operation.1.net1.0.weight": r(128, 128, 1),
        "pre_blocks_list.0.operation.1.net2.1.running_var": r(128),
        "pos_blocks_list.3.operation.1.net1.0.weight": r(1024, 1024, 1),
        "classifier.0.weight": r(512, 1024),
        "classifier.8.bias": r(15),
    }
    return sd, {"net": {f"module.{k}": v for k, v in sd.items()}, "epoch": 249, "best_test_acc": 86.2}


@pytest.mark.parametrize("cluster_kernel", [(1,), (1, 1)])
def test_pointmlp_released_form(cluster_kernel):
    raw, released = _pointmlp_released(cluster_kernel)
    out = convert_official_state_dict("pointmlp_coc", released)
    expected_names = {
        "pre_blocks_list.0.operation.0.fc1.weight": "pre_blocks_list.0.operation.0.f.weight",
        "pre_blocks_list.0.operation.0.fc1.bias": "pre_blocks_list.0.operation.0.f.bias",
        "pre_blocks_list.0.operation.0.fc_v.weight": "pre_blocks_list.0.operation.0.v.weight",
        "pre_blocks_list.0.operation.0.fc2.weight": "pre_blocks_list.0.operation.0.proj.weight",
    }
    assert list(out) == [expected_names.get(k, k) for k in raw]
    for key, value in raw.items():
        new = out[expected_names.get(key, key)]
        squeeze = key.endswith(".weight") and value.dim() > 2
        assert new.shape == (value.shape[:2] if squeeze else value.shape), key
        assert torch.equal(new.reshape(value.shape), value), key
    assert out["local_grouper_list.0.affine_alpha"].shape == (1, 1, 1, 64)
    assert out["embedding.net.0.weight"].shape == (64, 3)
    assert out["embedding.net.1.num_batches_tracked"].dim() == 0
    # idempotent, and the other accepted forms agree
    _assert_same(convert_official_state_dict("pointmlp_coc", out), out)
    _assert_same(convert_official_state_dict("pointmlp_coc", raw), out)
    _assert_same(convert_official_state_dict("pointmlp_coc", {"state_dict": raw}), out)


def test_pointmlp_plain_keys():
    sd = {
        "module.pre_blocks_list.1.operation.0.net1.0.weight": torch.zeros(8, 16, 1),
        "module.pos_blocks_list.1.operation.0.net2.1.bias": torch.zeros(8),
        "module.classifier.4.weight": torch.zeros(256, 512),
    }
    out = convert_official_state_dict("pointmlp_elite", sd)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "pre_blocks_list.1.operation.0.net1.0.weight": (8, 16),
        "pos_blocks_list.1.operation.0.net2.1.bias": (8,),
        "classifier.4.weight": (256, 512),
    }


def test_errors(coc_tiny_sd):
    with pytest.raises(ValueError, match="name.*'resnet50'"):
        convert_official_state_dict("resnet50", coc_tiny_sd)
    with pytest.raises(TypeError, match="state_dict"):
        convert_official_state_dict("coc_tiny", [("head.bias", torch.zeros(3))])
    with pytest.raises(TypeError, match="state_dict"):
        convert_official_state_dict("coc_tiny", torch.zeros(3))
    with pytest.raises(TypeError, match="state_dict.*'epoch'"):
        convert_official_state_dict("coc_tiny", {"epoch": 3, "head.bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="state_dict"):
        convert_official_state_dict("coc_tiny", {"net": [1, 2]})
    with pytest.raises(ValueError, match="token_mixer.f.weight"):
        convert_official_state_dict("coc_tiny", {"network.0.0.token_mixer.f.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(ValueError, match="head.bias"):
        convert_official_state_dict("coc_tiny", {"head.bias": torch.zeros(3), "module.head.bias": torch.zeros(3)})
