"""Context Cluster (CoC) classifiers on point sets (docs/design.md §8).

The network sees a point batch (``x [N, C]``, ``pos [N, P]``, ``batch [N]``) and runs in
one of two modes with the same weights:

* ``"point"`` (any point set: discrete or masked pixels, RGB-D points, point clouds):
  every sample lives on a lattice of its own pitch (:mod:`pointcoc.nn.geometry`); reducers
  take one anchor per occupied cell and apply their convolution weight as rigid kernel
  points with linear influence (:mod:`pointcoc.nn.reducer`); regions tile the lattice and
  centres come from FPS (or random points, or the grid bins). Points are first put in a
  canonical order (by position), so in eval mode the logits do not depend on the order
  of the points.
* ``"lattice"`` (image points): the same maths as integer window lookups on the pixel grid
  with the grid-bin centre proposal, the fast path; on full images it reproduces the grid
  reference (:mod:`pointcoc.reference`) number for number, and so does point mode with
  ``point_proposal="grid"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._checks import check_batch, check_model_kwargs, check_module_input, check_positions, check_tensor
from ..nn.anchors import ANCHORS
from ..nn.cluster_plan import ClusterPlan
from ..nn.context_cluster import ContextCluster
from ..nn.geometry import PointGeometry, canonical_order, point_lattice
from ..nn.layers import DropPath, Mlp, checkpoint_contexts
from ..nn.norm import PointGroupNorm, segment_mean
from ..nn.reducer import PointReducer
from .configs import VARIANTS, CocConfig
from .registry import register_model

__all__ = [
    "CocBlock",
    "ContextClusterNet",
    "MODES",
    "PointsInput",
    "StageIntermediates",
    "as_point_batch",
    "register_coc_variant",
]

MODES = ("auto", "lattice", "point")
POINT_PROPOSALS = ("fps", "random", "grid")

PointsInput = Any  # torch_geometric Data/Batch, or any object with x, pos, batch (pixel, grid_size optional)


def as_point_batch(points: PointsInput) -> Tuple[Tensor, PointGeometry]:
    """Features and geometry of a point batch (a PyG ``Data``/``Batch`` or look-alike).

    A ``[B, C, H, W]`` / ``[C, H, W]`` image tensor is converted as by ``pc.image_to_points``
    (without building a PyG ``Batch``).
    """
    if isinstance(points, Tensor):
        from ..points import image_point_attributes

        points = SimpleNamespace(**image_point_attributes(points))
    x = getattr(points, "x", None)
    pos = getattr(points, "pos", None)
    if x is None or pos is None:
        raise TypeError("points must carry x [N, C] and pos [N, P] (e.g. the output of pc.image_to_points)")
    x = check_tensor(x, "points.x", ndim=2)
    pos = check_positions(pos, "points.pos")
    if x.size(0) != pos.size(0):
        raise ValueError(f"points.x has {x.size(0)} rows but points.pos has {pos.size(0)}")
    batch, num_samples = check_batch(getattr(points, "batch", None), x.size(0), x.device, "points.batch")
    pixel = getattr(points, "pixel", None)
    grid_size = getattr(points, "grid_size", None)
    if grid_size is not None:
        grid_size = grid_size.view(-1, 2)
        if grid_size.size(0) != num_samples:
            pixel = grid_size = None  # sizes do not describe these samples: treat as a plain point set
    return x, PointGeometry(pos=pos, batch=batch, num_samples=num_samples, pixel=pixel, grid_size=grid_size)


class CocBlock(nn.Module):
    """MetaFormer block: ``x + ls1 * Cluster(GN(x))``, then ``x + ls2 * MLP(GN(x))`` on ``x: [N, dim]``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        heads: int,
        head_dim: int,
        centres: int,
        regions: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        normalize: str = "similarity",
    ) -> None:
        super().__init__()
        self.norm1 = PointGroupNorm(dim)
        self.token_mixer = ContextCluster(
            dim,
            dim,
            heads=heads,
            head_dim=head_dim,
            proposal="grid",
            centres=(centres, centres),
            regions=regions,
            normalize=normalize,
        )
        self.norm2 = PointGroupNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init_value))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init_value))
        self.drop_path = DropPath(drop_path)
        # Activation checkpointing (set by the network for its first stages): in training only the
        # block input is stored and the backward pass recomputes the block (its no-grad
        # assignment included, with the same stochastic depth draws). Values and gradients are
        # the same; a coc_tiny stage-1 block stores 0.13 KB per point instead of 4.7 KB, for one
        # more forward pass of the block.
        self.grad_checkpointing = False

    def forward(
        self, x: Tensor, geo: PointGeometry, plan: ClusterPlan, return_assignment: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """``x: [N, dim]`` -> ``[N, dim]``; with ``return_assignment`` also the ``[N, heads]`` centre ids."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            args = (self._forward, x, geo, plan, return_assignment)
            if torch.compiler.is_compiling():  # the compiler plans the recomputation (context_fn: dispatch modes only)
                return checkpoint(*args, use_reentrant=False)
            return checkpoint(*args, use_reentrant=False, context_fn=checkpoint_contexts)
        return self._forward(x, geo, plan, return_assignment)

    def _forward(
        self, x: Tensor, geo: PointGeometry, plan: ClusterPlan, return_assignment: bool
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        b, B, u = geo.batch, geo.num_samples, geo.uniform
        mixed, assignment = self.token_mixer(self.norm1(x, b, B, u), plan=plan, return_assignment=True)
        x = x + self.drop_path(self.layer_scale_1 * mixed, b, B)
        x = x + self.drop_path(self.mlp(self.norm2(x, b, B, u), scale=self.layer_scale_2), b, B)
        return (x, assignment) if return_assignment else x


@dataclass
class StageIntermediates:
    """One stage's output, from :meth:`ContextClusterNet.forward_intermediates`.

    Attributes:
        features: ``[M, dim]`` the stage's point features (after its last block).
        geometry: the stage's points (positions, samples, lattice).
        plan: the cluster plan shared by the stage's blocks.
        assignments: per block, ``[M, heads]`` global centre id (``group * plan.num_centres + j``)
            of every point.
    """

    features: Tensor
    geometry: PointGeometry
    plan: ClusterPlan
    assignments: List[Tensor]


def _check_options(mode: str, point_proposal: str, point_anchors: str, pos_dim: int) -> None:
    """Refuse unknown modes, proposals and anchors, and position sizes other than 2 and 3."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if point_proposal not in POINT_PROPOSALS:
        raise ValueError(f"point_proposal must be one of {POINT_PROPOSALS}, got {point_proposal!r}")
    if point_anchors not in ANCHORS:
        raise ValueError(f"point_anchors must be one of {ANCHORS}, got {point_anchors!r}")
    if pos_dim not in (2, 3):
        raise ValueError(f"pos_dim must be 2 (image coordinates) or 3 (xyz), got {pos_dim!r}")


class ContextClusterNet(nn.Module):
    """CoC classifier on point sets.

    Args:
        config: the variant's architecture (:data:`pointcoc.models.configs.VARIANTS`).
        num_classes: classifier outputs.
        in_chans: point feature channels (3 for RGB); the network input is ``[x, pos]``.
        pos_dim: position coordinates (2 for images, 3 for point clouds / back-projected RGB-D).
        drop_path_rate: stochastic depth, growing linearly over the blocks.
        layer_scale_init_value: initial layer scale.
        normalize: cluster aggregation normalisation (``"similarity"`` or ``"count"``).
        mode: ``"auto"`` (lattice mode on full image grids, point mode otherwise), ``"lattice"``
            or ``"point"``.
        point_proposal: centre proposal in point mode: ``"fps"``, ``"random"`` or ``"grid"``
            (adaptive-pooling bins of each region's lattice, as lattice mode).
        point_regions: use the variant's regions (tiles of each sample's lattice) in point mode;
            if False each sample is one region.
        point_anchors: reducer anchors in point mode: ``"grid"`` (grid subsampling), ``"fps"``
            or ``"random"`` (as many points as grid subsampling has cells).
        pitch: lattice spacing of point sets without a pixel grid (a number, in position units);
            ``None``: each sample's mean nearest-neighbour distance. A point batch carrying a
            ``pitch`` attribute (``[B]`` or a number) overrides it. Image points use their grid.
        checkpoint_stages: activation checkpointing in training for the blocks of this many
            first stages (the high-resolution ones, which hold most of the activation memory,
            e.g. 0.8 of coc_tiny's); 0 = none. See :meth:`set_grad_checkpointing`.

    ``forward(points) = forward_head(forward_features(points))`` -> logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        config: CocConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        pos_dim: int = 2,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        normalize: str = "similarity",
        mode: str = "auto",
        point_proposal: str = "fps",
        point_regions: bool = True,
        point_anchors: str = "grid",
        pitch: Optional[float] = None,
        checkpoint_stages: int = 2,
    ) -> None:
        super().__init__()
        check_model_kwargs(
            dict(num_classes=num_classes, in_chans=in_chans, pos_dim=pos_dim, drop_path_rate=drop_path_rate)
        )
        _check_options(mode, point_proposal, point_anchors, pos_dim)
        self.config, self.num_classes, self.in_chans, self.pos_dim = config, num_classes, in_chans, pos_dim
        self.mode, self.point_proposal, self.point_regions = mode, point_proposal, point_regions
        self.pitch = pitch
        dims = config.dims
        self.patch_embed = PointReducer(in_chans + pos_dim, dims[0], *config.stem, pos_dim, point_anchors)
        total = sum(config.layers)
        rates = torch.linspace(0, drop_path_rate, total).tolist() if total > 1 else [drop_path_rate] * total
        network: List[nn.Module] = []
        start = 0
        for s, depth in enumerate(config.layers):
            network.append(
                nn.ModuleList(
                    CocBlock(
                        dims[s],
                        config.mlp_ratios[s],
                        config.heads[s],
                        config.head_dim,
                        config.centres[s],
                        config.regions[s],
                        rates[start + j],
                        layer_scale_init_value,
                        normalize,
                    )
                    for j in range(depth)
                )
            )
            start += depth
            if s + 1 < len(config.layers):
                network.append(PointReducer(dims[s], dims[s + 1], *config.downsample, pos_dim, point_anchors))
        self.network = nn.ModuleList(network)
        self.norm = PointGroupNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.set_grad_checkpointing(checkpoint_stages)

    def set_grad_checkpointing(self, enable: Union[bool, int] = True) -> None:
        """Activation checkpointing in training: ``True`` every block, ``False`` none, an int
        ``n`` the blocks of the first ``n`` stages (timm's method, with the stage count)."""
        stages = [layer for layer in self.network if isinstance(layer, nn.ModuleList)]
        if isinstance(enable, bool):
            enable = len(stages) if enable else 0
        if not isinstance(enable, int) or enable < 0:
            raise ValueError(f"enable must be a bool or a stage count >= 0, got {enable!r}")
        for s, stage in enumerate(stages):
            for block in stage:
                block.grad_checkpointing = s < enable

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def stage_plan(self, stage: nn.ModuleList, geo: PointGeometry, lattice: bool) -> ClusterPlan:
        """The cluster plan shared by every block of a stage (regions tile the first two lattice axes)."""
        mixer: ContextCluster = stage[0].token_mixer
        pixel, grid_size = geo.pixel[:, :2], geo.grid_size[:, :2]
        if lattice:
            return mixer.make_plan(geo.pos, geo.batch, pixel=pixel, grid_size=grid_size)
        regions = mixer.regions if self.point_regions else 1
        return mixer.make_plan(
            geo.pos,
            geo.batch,
            pixel=pixel,
            grid_size=grid_size,
            proposal=self.point_proposal,
            regions=regions,
            random_start=self.training,
        )

    def _use_lattice(self, geo: PointGeometry) -> bool:
        """Lattice mode for ``mode="lattice"``; for ``"auto"`` on full image grids at least the stem's window."""
        if self.mode == "auto":
            k, _, p = self.config.stem
            return geo.is_full_grid and geo.pos.size(1) == 2 and bool((geo.grid_size + 2 * p >= k).all())
        if self.mode == "lattice" and (geo.pixel is None or geo.pos.size(1) != 2):
            raise ValueError("mode='lattice' needs 2-D image points with pixel and grid_size (pc.image_to_points)")
        return self.mode == "lattice"

    def _embed(self, points: PointsInput) -> Tuple[Tensor, PointGeometry, bool]:
        """Checked input in its canonical order through the stem: ``(x, geo, lattice mode?)``."""
        x, geo = as_point_batch(points)
        check_module_input(self, x, "points.x")
        if x.size(1) != self.in_chans:
            raise ValueError(f"points.x must have in_chans={self.in_chans} channels, got {x.size(1)}")
        if geo.pos.size(1) != self.pos_dim:
            raise ValueError(f"points.pos must have pos_dim={self.pos_dim} coordinates, got {geo.pos.size(1)}")
        lattice = self._use_lattice(geo)
        if not lattice:
            order = canonical_order(geo.pos, geo.batch)
            pitch = getattr(points, "pitch", None)
            x, geo = x[order], point_lattice(geo.select(order), self.pitch if pitch is None else pitch)
        x = torch.cat([x, geo.pos.to(x.dtype)], dim=1)
        x, geo = self.patch_embed(x, geo, "lattice" if lattice else "point", random_start=self.training)
        return x, geo, lattice

    def _run(self, points: PointsInput, stages: Optional[List[StageIntermediates]]) -> Tuple[Tensor, PointGeometry]:
        """Stem, stages and reducers; appends every stage's output to ``stages`` unless it is ``None``."""
        x, geo, lattice = self._embed(points)
        mode = "lattice" if lattice else "point"
        for layer in self.network:
            if isinstance(layer, PointReducer):
                x, geo = layer(x, geo, mode, random_start=self.training)
                continue
            plan = self.stage_plan(layer, geo, lattice)
            assignments: List[Tensor] = []
            for block in layer:
                if stages is None:
                    x = block(x, geo, plan)
                else:
                    x, assignment = block(x, geo, plan, return_assignment=True)
                    assignments.append(assignment)
            if stages is not None:
                stages.append(StageIntermediates(x, geo, plan, assignments))
        return x, geo

    def forward_features(self, points: PointsInput) -> Tuple[Tensor, PointGeometry]:
        """Last-stage point features ``[M, dims[-1]]`` (before ``norm``) and their geometry."""
        return self._run(points, None)

    def forward_intermediates(self, points: PointsInput) -> List[StageIntermediates]:
        """Every stage's features, geometry, plan and per-block cluster assignments, in stage order.

        The last stage's ``(features, geometry)`` are :meth:`forward_features`'s output.
        """
        stages: List[StageIntermediates] = []
        self._run(points, stages)
        return stages

    def forward_head(self, features: Tuple[Tensor, PointGeometry], pre_logits: bool = False) -> Tensor:
        """``norm``, the mean over each sample's points and (unless ``pre_logits``) the classifier.

        ``features``: :meth:`forward_features`'s ``(x, geo)``. Returns ``[B, dims[-1]]`` pooled
        features with ``pre_logits``, else logits ``[B, num_classes]``.
        """
        x, geo = features
        x = self.norm(x, geo.batch, geo.num_samples, geo.uniform)
        pooled = segment_mean(x, geo.batch, geo.num_samples, geo.counts)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, points: PointsInput) -> Tensor:
        return self.forward_head(self.forward_features(points))


def register_coc_variant(name: str, config: CocConfig) -> None:
    """Register ``name`` as a points-mode CoC model built from ``config``."""

    def build(num_classes: int = 1000, **kwargs: Any) -> ContextClusterNet:
        return ContextClusterNet(config, num_classes=num_classes, **kwargs)

    build.__name__ = name
    build.__doc__ = f"Points-mode {name} (docs/design.md §8)."
    register_model(build)


for _name, _config in VARIANTS.items():
    register_coc_variant(_name, _config)
