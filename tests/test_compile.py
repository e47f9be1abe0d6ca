"""torch.compile of the models: the compiled forward (and backward) equals eager.

Small models keep the compilation short; the graphs are the ones the full-size models
produce (same modules, fewer blocks and channels). PointMLP goes through inductor (the
default backend, which used to fail), the rest through dynamo + AOT autograd. FPS / kNN index building and cluster
plans run eagerly inside the compiled models (``torch.compiler.disable`` or graph breaks:
they read sizes on the host), everything else is compiled.
"""

from __future__ import annotations

import copy

import pytest
import torch

import pointcoc as pc
from pointcoc.models.coc import ContextClusterNet
from pointcoc.models.configs import CocConfig

pytestmark = pytest.mark.slow

_SMALL_COC = CocConfig(
    layers=(1, 1, 1, 1), dims=(8, 8, 8, 8), mlp_ratios=(1, 1, 1, 1), heads=(2, 1, 1, 1), head_dim=4,
    centres=(2, 1, 1, 1), regions=(2, 1, 1, 1),
)  # fmt: skip


def _small_pointmlp() -> torch.nn.Module:
    """PointMLP-elite-CoC on 64 points: every PointMLP module and the one-centre context cluster."""
    return pc.create_model(
        "pointmlp_elite_coc", num_classes=3, points=64, k_neighbors=4, pre_blocks=1, pos_blocks=1, dropout=0.0
    )


def _compiled_matches_eager(model: torch.nn.Module, inp, backend: str, train: bool) -> None:
    """Logits (and in training the parameter gradients and BN statistics) of the compiled copy equal eager."""
    torch.manual_seed(0)
    model.train(train)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend=backend)
    with torch.set_grad_enabled(train):
        expected, got = model(inp), compiled(inp)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        if train:
            expected.square().sum().backward()
            got.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if train:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b), c in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-5, msg=name)


def test_pointmlp_inductor_matches_eager():
    torch.manual_seed(0)
    _compiled_matches_eager(_small_pointmlp(), torch.randn(2, 3, 64), "inductor", train=False)


def test_pointmlp_training_step_compiles():
    """Training (recomputation checkpoints, BN statistics, the fast segment path) through AOT autograd."""
    torch.manual_seed(0)
    _compiled_matches_eager(_small_pointmlp(), torch.randn(2, 3, 64), "aot_eager", train=True)


def test_coc_compiled_matches_eager():
    """CoC (lattice mode) through dynamo + AOT autograd: inductor's C++ build of every CoC kernel
    takes minutes on a 2-core CPU (``benchmarks/cuda_check.py`` runs inductor on a GPU)."""
    torch.manual_seed(0)
    model = ContextClusterNet(_SMALL_COC, num_classes=3, mode="lattice")
    points = pc.image_to_points(torch.rand(2, 3, 32, 32))
    _compiled_matches_eager(model, points, "aot_eager", train=False)


def test_coc_training_step_compiles():
    """A CoC training step (its first two stages checkpointed) through dynamo + AOT autograd: the
    compiled blocks take the plain checkpoint (``context_fn`` must be dispatch modes there)."""
    torch.manual_seed(0)
    model = ContextClusterNet(_SMALL_COC, num_classes=3, mode="lattice")
    assert model.network[0][0].grad_checkpointing
    _compiled_matches_eager(model, pc.image_to_points(torch.rand(2, 3, 32, 32)), "aot_eager", train=True)


def test_coc_point_mode_compiled_matches_eager():
    """Point mode (FPS centres, grid anchors) on half the pixels, through dynamo + AOT autograd.

    Cluster plans and reducer anchors run eagerly (``torch.compiler.disable``), so dynamo does
    not trace the FPS loops; graphs are specialised on each stage's point count (a batch of
    another size recompiles, see docs/design.md section 8)."""
    torch.manual_seed(0)
    model = ContextClusterNet(_SMALL_COC, num_classes=3, mode="point")
    points = pc.sample_pixels(
        pc.image_to_points(torch.rand(2, 3, 32, 32)), ratio=0.5, generator=torch.Generator().manual_seed(0)
    )
    _compiled_matches_eager(model, points, "aot_eager", train=False)
