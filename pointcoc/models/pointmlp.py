"""PointMLP, PointMLP-elite and their context-cluster variants (docs/design.md §9).

Everything runs channel-last: a 1x1 convolution of the reference is an
``nn.Linear`` on ``[rows, C]`` and its BatchNorm a ``BatchNorm1d`` over the
channel of ``[rows, C]`` (the same statistics as over ``[B, C, S, k]``).
The grouped tensor ``[B, S, k, 2C]`` (normalised neighbours next to a repeated
anchor) is never built: :class:`GroupedPoints` applies the transfer layer to it
implicitly, projecting the ``n`` point features once and gathering the result.

Parameter names follow the released checkpoints (``embedding.net.0.weight``,
``local_grouper_list.{s}.affine_alpha``, ``pre_blocks_list.{s}.transfer.net.*``,
``pre_blocks_list.{s}.operation.{j}.net1.*``, ``pos_blocks_list...``,
``classifier.{0,1,4,5,8}.*``); 1x1 weights are 2-D ``[out, in]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from .._checks import check_batch_norm_batch, check_float, check_model_kwargs, check_module_input, check_tensor
from .._compile import eager_under_compile
from ..nn.cluster_plan import ClusterPlan
from ..nn.context_cluster import ContextCluster
from ..ops.fps import fps
from ..ops.knn import knn_dense
from .registry import register_model

__all__ = [
    "RECOMPUTE_MODES",
    "DEFAULT_RECOMPUTE",
    "COC_RECOMPUTE",
    "LinearBNReLU",
    "ResidualBlock",
    "GroupedPoints",
    "LocalGrouper",
    "PreExtraction",
    "PosExtraction",
    "PointMLP",
    "POINTMLP_VARIANTS",
]

_STD_EPS = 1e-5


def _linear_bn(in_channels: int, out_channels: int, relu: bool) -> nn.Sequential:
    """``[Linear(in, out, bias=False), BatchNorm1d(out)]`` (+ ``ReLU``): a reference 1x1 conv-BN(-ReLU)."""
    layers = [nn.Linear(in_channels, out_channels, bias=False), nn.BatchNorm1d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _batch_norm(bn: nn.BatchNorm1d, x: Tensor, track_stats: bool) -> Tensor:
    """``bn(x)``; in training with ``track_stats=False``: the same output, running statistics not updated."""
    if track_stats or not bn.training:
        return bn(x)
    # momentum 0 keeps the running statistics (and saves the same tensors for backward as bn(x))
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.0, bn.eps)


class LinearBNReLU(nn.Module):
    """``net = [Linear(in, out, bias=False), BatchNorm1d(out), ReLU]`` on ``x: [M, in] -> [M, out]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = _linear_bn(in_channels, out_channels, relu=True)

    def forward(self, x: Tensor) -> Tensor:
        """``x: [M, in] -> [M, out]``."""
        return self.net(x)


class ResidualBlock(nn.Module):
    """``relu(BN(W2 relu(BN(W1 x))) + x)`` on ``x: [M, C]``; hidden width ``int(C * res_expansion)``."""

    def __init__(self, channels: int, res_expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(channels * res_expansion)
        self.net1 = _linear_bn(channels, hidden, relu=True)
        self.net2 = _linear_bn(hidden, channels, relu=False)

    def zero_init_last(self) -> None:
        """Zero the scale of the last BatchNorm: the block starts as ``relu(x)`` (the identity on its ReLU input)."""
        nn.init.zeros_(self.net2[1].weight)

    def forward(self, x: Tensor, track_stats: bool = True) -> Tensor:
        """``x: [M, C] -> [M, C]``; ``track_stats=False`` leaves the BN running statistics untouched."""
        return torch.relu_(self.residual_sum(x, track_stats))

    def residual_sum(self, x: Tensor, track_stats: bool = True) -> Tensor:
        """``BN(W2 relu(BN(W1 x))) + x``: the block's output before its final ReLU."""
        linear1, bn1, relu = self.net1
        linear2, bn2 = self.net2
        out = _batch_norm(bn2, linear2(relu(_batch_norm(bn1, linear1(x), track_stats))), track_stats)
        return out.add_(x)


@dataclass
class GroupedPoints:
    """The kNN groups of one stage, kept implicit.

    Stands for the tensor ``[B, S, k, 2C]`` whose entry ``(b, s, j)`` is
    ``[alpha * (x_nb - x_anchor) / (std_b + 1e-5) + beta, x_anchor]`` (docs/design.md §9).

    ``std_b`` is one unbiased standard deviation per sample over all its groups,
    neighbours and channels of ``x_nb - x_anchor``. Everything differentiable is
    computed by the methods, so a caller that recomputes them in the backward pass
    (activation checkpointing) keeps nothing of size ``B * S * k``.

    Attributes:
        features: ``[B * n, C]`` point features (flattened dense batch).
        anchors: ``[B * S]`` global row of each anchor in ``features``.
        neighbours: ``[B * S * k]`` global rows of each anchor's k neighbours.
        alpha: ``[C]`` affine scale.  beta: ``[C]`` affine shift.
        anchor_xyz: ``[B, S, 3]`` anchor positions (the next stage's points).
        k: neighbours per group.
    """

    features: Tensor
    anchors: Tensor
    neighbours: Tensor
    alpha: Tensor
    beta: Tensor
    anchor_xyz: Tensor
    k: int

    @property
    def num_samples(self) -> int:
        """``B``."""
        return self.anchor_xyz.size(0)

    @property
    def num_groups(self) -> int:
        """``B * S``."""
        return self.anchors.numel()

    def inv_scale(self) -> Tensor:
        """``[B]``: ``1 / (std_b + 1e-5)``."""
        C = self.features.size(1)
        diff = self.features.index_select(0, self.neighbours).view(self.num_groups, self.k, C)
        diff = diff - self.features.index_select(0, self.anchors).unsqueeze(1)
        return 1.0 / (diff.view(self.num_samples, -1).std(dim=1) + _STD_EPS)

    def linear(self, weight: Tensor) -> Tensor:
        """The grouped tensor times ``weight^T`` without building it.

        ``weight: [O, 2C]`` -> ``[B * S * k, O]``. With ``weight = [W_nb | W_anchor]``:
        ``W_nb (alpha (x_j - a) s + beta) + W_anchor a = y_j - y_a + W_nb beta + W_anchor a``
        where ``y = s * (x @ (W_nb * alpha)^T)`` is computed once per point.
        """
        B, C = self.num_samples, self.features.size(1)
        w_nb, w_anchor = weight[:, :C], weight[:, C:]
        y = torch.mm(self.features, (w_nb * self.alpha).t())
        y = (y.view(B, -1, y.size(1)) * self.inv_scale().view(B, 1, 1)).view(-1, y.size(1))
        anchor_term = torch.addmm(torch.mv(w_nb, self.beta), self.features.index_select(0, self.anchors), w_anchor.t())
        anchor_term = anchor_term - y.index_select(0, self.anchors)
        # out of place: an in-place add on this view would make autograd clone and zero-fill
        # a [B * S * k, O] gradient in the backward pass (CopySlices)
        out = y.index_select(0, self.neighbours).view(self.num_groups, self.k, -1) + anchor_term.unsqueeze(1)
        return out.view(-1, out.size(-1))

    def dense(self) -> Tensor:
        """The explicit ``[B, S, k, 2C]`` tensor (for inspection and tests; the model never builds it)."""
        B, C = self.num_samples, self.features.size(1)
        anchor = self.features.index_select(0, self.anchors).view(B, -1, 1, C)
        nb = self.features.index_select(0, self.neighbours).view(B, -1, self.k, C)
        normed = self.alpha * (nb - anchor) * self.inv_scale().view(B, 1, 1, 1) + self.beta
        return torch.cat([normed, anchor.expand_as(nb)], dim=-1)


@eager_under_compile
def _group_indices(xyz: Tensor, groups: int, k: int, random_start: bool) -> Tuple[Tensor, Tensor]:
    """FPS anchors ``[B * S]`` of ``xyz: [B, n, 3]`` and their kNN ``[B * S * k]``, as rows of ``[B * n]``.

    Runs eagerly under ``torch.compile``: farthest point sampling is a data-dependent loop
    of ``S`` steps and the kNN chunking reads sizes on the host, which dynamo would unroll or
    break the graph on; both only produce integer indices (nothing to differentiate or fuse).
    """
    B, n, _ = xyz.shape
    pos = xyz.reshape(B * n, 3)
    batch = torch.arange(B, device=xyz.device).repeat_interleave(n)
    anchors = fps(pos, batch, random_start=random_start, num_points=groups)  # [B * S], grouped by sample
    offsets = torch.arange(0, B * n, n, device=xyz.device).view(B, 1, 1)
    neighbours = knn_dense(xyz, pos.index_select(0, anchors).view(B, groups, 3), k) + offsets
    return anchors, neighbours.view(-1)


class LocalGrouper(nn.Module):
    """FPS anchors, kNN groups and "anchor" normalisation of one stage.

    Args:
        channels: feature channels ``C``.
        groups: anchors ``S`` picked per sample by farthest point sampling.
        k: neighbours per anchor (squared Euclidean distance on xyz).
    """

    def __init__(self, channels: int, groups: int, k: int) -> None:
        super().__init__()
        self.groups = groups
        self.k = k
        self.affine_alpha = nn.Parameter(torch.ones(1, 1, 1, channels))
        self.affine_beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, xyz: Tensor, x: Tensor, random_start: bool = False) -> GroupedPoints:
        """Group ``x: [B, n, C]`` around FPS anchors of ``xyz: [B, n, 3]``.

        ``random_start`` picks each sample's first FPS point at random instead of index 0.
        """
        B, n, C = x.shape
        anchors, neighbours = _group_indices(xyz, self.groups, self.k, random_start)
        return GroupedPoints(
            features=x.reshape(B * n, C),
            anchors=anchors,
            neighbours=neighbours,
            alpha=self.affine_alpha.view(C),
            beta=self.affine_beta.view(C),
            anchor_xyz=xyz.reshape(B * n, 3).index_select(0, anchors).view(B, self.groups, 3),
            k=self.k,
        )


def _group_plan(num_groups: int, k: int, device: torch.device) -> ClusterPlan:
    """One centre per kNN group: ``num_groups`` consecutive segments of ``k`` points.

    Built directly (what ``make_plan(batch=..., proposal="mean")`` returns for these
    segments) because the layout is known: no validation of a batch vector we made,
    hence no host sync.
    """
    group = torch.arange(num_groups, device=device).repeat_interleave(k, output_size=num_groups * k)
    return ClusterPlan(
        group=group,
        num_groups=num_groups,
        num_centres=1,
        member_centre=group,
        member_point=None,
        centre_count=torch.full((num_groups,), k, dtype=torch.long, device=device),
        centre_valid=None,
        dense_index=None,
        max_group_size=k,
    )


#: what a stage stores for its backward pass (see :class:`PreExtraction`)
RECOMPUTE_MODES = ("none", "matmuls", "all")
#: recompute=True: the first two stages (a fifth of the matrix-product work for half the
#: activations) recompute everything, the last two store everything (recomputing their
#: elementwise ops saved little memory for about 6% more time per step)
DEFAULT_RECOMPUTE = ("all", "all", "none", "none")
#: pointmlp_coc's registered default: the first stage only. Measured at batch 4, 1024 points, one
#: thread: 2.2-2.4 GB peak (0.58x the reference's) for a step about 10% shorter than with
#: DEFAULT_RECOMPUTE (1.9-2.0 GB); stage 2 holds as many activations as stage 1 for twice its
#: matrix-product work. pointmlp needs both stages to stay within 0.7x of its reference.
COC_RECOMPUTE = ("all", "none", "none", "none")
# selective activation checkpointing ("matmuls"): these outputs are stored, everything else is recomputed
_STORED_OPS = [torch.ops.aten.mm.default, torch.ops.aten.addmm.default]


class PreExtraction(nn.Module):
    """Per-group extraction: transfer ``2C -> out``, blocks on every neighbour, max over the k neighbours.

    With ``context_cluster=True`` a one-centre context cluster (docs/design.md §9) with its own
    residual runs before every residual block; ``operation`` then alternates
    ``ContextCluster`` (even index) and ``ResidualBlock`` (odd index).

    ``recompute`` says what the stage keeps for the backward pass (training with
    gradients only): ``"none"`` everything autograd saves; ``"matmuls"`` only the
    outputs of its matrix products (``[B*S*k, out]`` each), the gathers,
    normalisation, BN, ReLU, residual additions and context-cluster aggregation being
    recomputed in the backward pass (selective activation checkpointing); ``"all"``
    nothing of size ``B*S*k``, the whole stage being recomputed. Values, gradients and
    BN running statistics (updated once) are the same in every mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        blocks: int,
        res_expansion: float = 1.0,
        context_cluster: bool = False,
        recompute: str = "matmuls",
    ) -> None:
        super().__init__()
        if recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
        self.recompute = recompute
        self.transfer = LinearBNReLU(2 * in_channels, out_channels)
        ops = []
        for _ in range(blocks):
            if context_cluster:
                head_dim = max(out_channels // 4, 32)
                ops.append(ContextCluster(out_channels, out_channels, heads=1, head_dim=head_dim, proposal="mean"))
            ops.append(ResidualBlock(out_channels, res_expansion))
        self.operation = nn.ModuleList(ops)

    def forward(self, groups: GroupedPoints) -> Tensor:
        """``groups`` of ``B * S`` anchors -> ``[B * S, out]`` (max over each group)."""
        has_cluster = any(isinstance(op, ContextCluster) for op in self.operation)
        # one segment per group, shared by the stage's context clusters
        plan = _group_plan(groups.num_groups, groups.k, groups.features.device) if has_cluster else None
        if self.recompute == "none" or not (self.training and torch.is_grad_enabled()):
            return self._extract(groups, plan, True)
        runs = iter([True])  # the first run updates BN statistics, the backward recomputation does not
        selective = self.recompute == "matmuls"
        policy = {"context_fn": partial(create_selective_checkpoint_contexts, _STORED_OPS)} if selective else {}
        return checkpoint(lambda: self._extract(groups, plan, next(runs, False)), use_reentrant=False, **policy)

    def _extract(self, groups: GroupedPoints, plan: Optional[ClusterPlan], track_stats: bool) -> Tensor:
        linear, bn, relu = self.transfer.net
        h = relu(_batch_norm(bn, groups.linear(linear.weight), track_stats))  # [B * S * k, out]
        if not self.operation:
            return h.view(groups.num_groups, groups.k, -1).max(dim=1).values
        *ops, last = self.operation  # the last is a ResidualBlock
        for op in ops:
            h = h + op(h, plan=plan) if isinstance(op, ContextCluster) else op(h, track_stats)
        # max_j relu(z_j) = relu(max_j z_j) (ReLU is monotone), with the same arg max wherever the
        # gradient is not zero: the last block's ReLU runs on [B * S, out] instead of [B * S * k, out]
        h = last.residual_sum(h, track_stats)
        return torch.relu(h.view(groups.num_groups, groups.k, -1).max(dim=1).values)


class PosExtraction(nn.Module):
    """``blocks`` residual blocks over the anchors: ``x: [M, C] -> [M, C]``."""

    def __init__(self, channels: int, blocks: int, res_expansion: float = 1.0) -> None:
        super().__init__()
        self.operation = nn.Sequential(*(ResidualBlock(channels, res_expansion) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        """``x: [M, C] -> [M, C]``."""
        return self.operation(x)


def _four(value: Union[int, float, str, Sequence], name: str) -> list:
    """One value per stage: a scalar is repeated, a sequence must have 4 entries."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 4
    if len(values) != 4:
        raise ValueError(f"{name} must hold one value per stage (4), got {len(values)}")
    return values


def _classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The head MLP ``channels -> 512 -> 256 -> num_classes`` (BN, ReLU and dropout between)."""
    return nn.Sequential(
        nn.Linear(channels, 512),
        nn.BatchNorm1d(512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(512, 256),
        nn.BatchNorm1d(256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, num_classes),
    )


def _stage_anchors(points: int, stage: int, level_points: int, reducer: int, k: int) -> int:
    """The anchors stage ``stage`` keeps of its ``level_points`` points; ``ValueError`` when too few for ``k``."""
    anchors = level_points // reducer
    if anchors < 1 or k > level_points:
        raise ValueError(
            f"points={points} is too few for stage {stage}: {level_points} points there, "
            f"{anchors} anchors and k_neighbors={k} need at least 1 anchor and k <= points"
        )
    return anchors


class PointMLP(nn.Module):
    """PointMLP classifier on xyz point clouds (docs/design.md §9).

    Args:
        num_classes: classifier outputs.
        points: points per cloud the model is built for; stage ``i`` keeps
            ``points // prod(reducers[:i+1])`` FPS anchors.
        embed_dim: channels after the embedding.
        res_expansion: hidden width factor of the residual blocks.
        dim_expansion: channel factor of each stage.
        pre_blocks / pos_blocks: residual blocks per stage before / after the max over neighbours.
        k_neighbors: neighbours per group (int or one per stage).
        reducers: anchor reduction factor of each stage.
        context_cluster: insert a one-centre context cluster before every pre-extraction block.
        recompute: what each stage keeps of its per-neighbour features for the backward
            pass: one of :data:`RECOMPUTE_MODES` per stage (see :class:`PreExtraction`);
            ``True`` = :data:`DEFAULT_RECOMPUTE`, ``False`` = store everything.
        fps_random_start: start FPS at a random point (training) instead of index 0
            (the reference CUDA kernel; evaluation parity). Read at every forward.
        channels_last_input: the input is ``[B, n, 3]`` instead of ``[B, 3, n]``.
        dropout: dropout rate of the head.
        zero_init_last: start every residual block with the scale of its last BatchNorm at 0
            (timm's ``zero_init_last``), so the network starts shallow; the reference starts it at 1.
            Trains much faster in the first epochs (docs/design.md §9).
    """

    def __init__(
        self,
        num_classes: int = 15,
        points: int = 1024,
        embed_dim: int = 64,
        res_expansion: float = 1.0,
        dim_expansion: Sequence[int] = (2, 2, 2, 2),
        pre_blocks: Sequence[int] = (2, 2, 2, 2),
        pos_blocks: Sequence[int] = (2, 2, 2, 2),
        k_neighbors: Union[int, Sequence[int]] = 24,
        reducers: Sequence[int] = (2, 2, 2, 2),
        context_cluster: bool = False,
        recompute: Union[bool, Sequence[str]] = True,
        fps_random_start: bool = False,
        channels_last_input: bool = False,
        dropout: float = 0.5,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        dim_expansion = _four(dim_expansion, "dim_expansion")
        pre_blocks = _four(pre_blocks, "pre_blocks")
        pos_blocks = _four(pos_blocks, "pos_blocks")
        k_neighbors = _four(k_neighbors, "k_neighbors")
        reducers = _four(reducers, "reducers")
        check_model_kwargs(
            dict(
                num_classes=num_classes,
                points=points,
                embed_dim=embed_dim,
                dropout=dropout,
                reducers=reducers,
                k_neighbors=k_neighbors,
            )
        )
        if isinstance(recompute, bool):
            recompute = DEFAULT_RECOMPUTE if recompute else "none"
        recompute = _four(recompute, "recompute")
        self.points = points
        self.fps_random_start = fps_random_start
        self.channels_last_input = channels_last_input
        self.embedding = LinearBNReLU(3, embed_dim)
        self.local_grouper_list = nn.ModuleList()
        self.pre_blocks_list = nn.ModuleList()
        self.pos_blocks_list = nn.ModuleList()
        channels, level_points = embed_dim, points
        for s in range(4):
            anchors = _stage_anchors(points, s, level_points, reducers[s], k_neighbors[s])
            out = channels * dim_expansion[s]
            self.local_grouper_list.append(LocalGrouper(channels, anchors, k_neighbors[s]))
            self.pre_blocks_list.append(
                PreExtraction(channels, out, pre_blocks[s], res_expansion, context_cluster, recompute[s])
            )
            self.pos_blocks_list.append(PosExtraction(out, pos_blocks[s], res_expansion))
            channels, level_points = out, anchors
        self.classifier = _classifier(channels, num_classes, dropout)
        if zero_init_last:
            self.zero_init_last()

    def zero_init_last(self) -> None:
        """Start every residual block as ``relu(x)``: the scale of its last BatchNorm set to 0."""
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                module.zero_init_last()

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, 3, n]`` xyz (``[B, n, 3]`` with ``channels_last_input``) -> last-stage anchor
        features ``[B, S, C]`` (before the max over anchors)."""
        check_tensor(x, "x", ndim=3)
        check_float(x, "x")
        check_module_input(self, x, "x")
        check_batch_norm_batch(self, x.size(0), "x")
        xyz = x if self.channels_last_input else x.transpose(1, 2)
        if xyz.size(2) != 3:
            layout = "[B, n, 3]" if self.channels_last_input else "[B, 3, n]"
            raise ValueError(f"x must be {layout} xyz coordinates, got shape {tuple(x.shape)}")
        first = self.local_grouper_list[0]
        if xyz.size(1) < max(first.groups, first.k):
            raise ValueError(
                f"x has {xyz.size(1)} points per cloud; this model needs at least {max(first.groups, first.k)} "
                f"(built for points={self.points})"
            )
        xyz = xyz.contiguous()
        B, n, _ = xyz.shape
        feats = self.embedding(xyz.view(B * n, 3)).view(B, n, -1)
        for grouper, pre, pos in zip(self.local_grouper_list, self.pre_blocks_list, self.pos_blocks_list):
            groups = grouper(xyz, feats, random_start=self.fps_random_start)
            feats = pos(pre(groups)).view(B, grouper.groups, -1)
            xyz = groups.anchor_xyz
        return feats

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The max over each cloud's anchors and (unless ``pre_logits``) the classifier MLP.

        ``features``: :meth:`forward_features`'s ``[B, S, C]``. Returns ``[B, C]`` pooled features
        with ``pre_logits``, else logits ``[B, num_classes]``.
        """
        pooled = features.max(dim=1).values
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, 3, n]`` xyz (``[B, n, 3]`` with ``channels_last_input``) -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))


_ELITE = dict(embed_dim=32, res_expansion=0.25, dim_expansion=(2, 2, 2, 1), pre_blocks=(1, 1, 2, 1),
              pos_blocks=(1, 1, 2, 1))  # fmt: skip

#: name -> (arguments of :class:`PointMLP`, description) of the released variants (docs/design.md §9)
POINTMLP_VARIANTS: Dict[str, Tuple[Dict[str, Any], str]] = {
    "pointmlp": ({}, "PointMLP: embed 64, 4 stages x (2 pre + 2 pos blocks), 13,232,079 parameters (15 classes)."),
    "pointmlp_elite": (_ELITE, "PointMLP-elite: embed 32, res_expansion 0.25, 709,807 parameters (15 classes)."),
    "pointmlp_coc": (
        {"context_cluster": True, "recompute": COC_RECOMPUTE},
        "PointMLP-CoC: PointMLP with a context cluster before every pre-extraction block, 15,326,815 parameters.",
    ),
    "pointmlp_elite_coc": (
        {**_ELITE, "context_cluster": True},
        "PointMLP-elite with context clusters, 877,177 parameters (15 classes).",
    ),
}


def _register_variant(name: str, arguments: Dict[str, Any], description: str) -> None:
    """Register ``name``: a :class:`PointMLP` with ``arguments``, which keyword arguments override."""

    def build(**kwargs: Any) -> PointMLP:
        return PointMLP(**{**arguments, **kwargs})

    build.__name__ = name
    build.__doc__ = description
    register_model(build)


for _name, (_arguments, _description) in POINTMLP_VARIANTS.items():
    _register_variant(_name, _arguments, _description)
