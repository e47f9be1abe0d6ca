"""PointGroupNorm, segment_mean and per-sample DropPath: exact hand-computed values (docs/design.md §8)."""

import pytest
import torch

from pointcoc.nn.layers import DropPath
from pointcoc.nn.norm import PointGroupNorm, segment_mean
from tests.helpers import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_segment_mean_by_hand(device):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]], dtype=torch.float64, device=device)
    batch = torch.tensor([0, 0, 2], device=device)
    expected = torch.tensor([[2.0, 3.0], [0.0, 0.0], [10.0, 20.0]], dtype=torch.float64, device=device)
    torch.testing.assert_close(segment_mean(x, batch, 3), expected, rtol=0, atol=0)  # sample 1 is empty: 0
    torch.testing.assert_close(segment_mean(x[:, 0], batch, 3), expected[:, 0], rtol=0, atol=0)
    counts = torch.tensor([2, 0, 1], device=device)
    torch.testing.assert_close(segment_mean(x, batch, 3, counts), expected, rtol=0, atol=0)


def _norm(device, eps=0.0):
    norm = PointGroupNorm(2, eps=eps).double().to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 3.0]))
        norm.bias.copy_(torch.tensor([0.5, -1.0]))
    return norm


@pytest.mark.parametrize("device", DEVICES)
def test_point_group_norm_ragged_by_hand(device):
    # sample 0: values 1, 5, 5, 1 -> mean 3, biased variance 4; sample 1: 2, 8 -> mean 5, variance 9
    x = torch.tensor([[1.0, 5.0], [5.0, 1.0], [2.0, 8.0]], dtype=torch.float64, device=device)
    batch = torch.tensor([0, 0, 1], device=device)
    # normalised [[-1, 1], [1, -1]] and [[-1, 1]], then * (2, 3) + (0.5, -1)
    expected = torch.tensor([[-1.5, 2.0], [2.5, -4.0], [-1.5, 2.0]], dtype=torch.float64, device=device)
    torch.testing.assert_close(_norm(device)(x, batch, 2), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_point_group_norm_uniform_path_by_hand(device):
    x = torch.tensor([[1.0, 5.0], [5.0, 1.0], [2.0, 8.0], [8.0, 2.0]], dtype=torch.float64, device=device)
    batch = torch.tensor([0, 0, 1, 1], device=device)
    expected = torch.tensor([[-1.5, 2.0], [2.5, -4.0], [-1.5, 2.0], [2.5, -4.0]], dtype=torch.float64, device=device)
    norm = _norm(device)
    torch.testing.assert_close(norm(x, batch, 2, uniform=2), expected, rtol=0, atol=0)
    torch.testing.assert_close(norm(x, batch, 2), expected, rtol=0, atol=0)


def test_point_group_norm_equals_group_norm_per_sample():
    torch.manual_seed(0)
    norm = PointGroupNorm(3).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    sizes = (4, 1, 6)
    x = torch.randn(sum(sizes), 3, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    dense = torch.nn.GroupNorm(1, 3, eps=norm.eps).double()
    dense.load_state_dict(norm.state_dict())
    expected = torch.cat([dense(part.t()[None])[0].t() for part in x.split(sizes)])
    torch.testing.assert_close(norm(x, batch, 3), expected, rtol=1e-12, atol=1e-12)


def test_drop_path_drops_whole_samples():
    torch.manual_seed(0)
    layer = DropPath(drop_prob=0.5)
    x = torch.ones(6, 4, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    assert torch.equal(layer.eval()(x, batch, 3), x)
    layer.train()
    seen = set()
    for _ in range(20):
        y = layer(x, batch, 3)
        for sample in range(3):
            rows = y[batch == sample]
            assert rows.unique().numel() == 1 and float(rows[0, 0]) in (0.0, 2.0)  # kept rows scaled by 1/(1-p)
            seen.add(float(rows[0, 0]))
    assert seen == {0.0, 2.0}
    assert torch.equal(DropPath().train()(x, batch, 3), x)
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
    with pytest.raises(TypeError, match="drop_prob"):
        DropPath("0.1")
