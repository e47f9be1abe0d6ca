"""Context Cluster (CoC) image classifiers on ``[B, C, H, W]`` grids: the reference models.

The architectures come from :data:`pointcoc.models.configs.VARIANTS` (docs/design.md §8). Module and
parameter names follow the released checkpoints' "new naming", so an official
state dict loads into :class:`ContextClusterNet` as is.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from .._checks import check_drop_prob, check_float, check_tensor
from ..models.configs import VARIANTS, CocConfig
from ..points import pixel_positions
from .cluster import Cluster

__all__ = [
    "add_position_channels",
    "DropPath",
    "PointReducer",
    "Mlp",
    "ClusterBlock",
    "ContextClusterNet",
    "create_model",
    "list_models",
]


def add_position_channels(x: Tensor) -> Tensor:
    """Append the two position channels: ``x: [B, C, H, W] -> [B, C + 2, H, W]``.

    Channel ``C`` is the row position ``i / (H - 1) - 0.5``, channel ``C + 1`` the
    column position ``j / (W - 1) - 0.5`` (H, W >= 2).
    """
    batch, _, height, width = x.shape
    rows = pixel_positions(torch.arange(height, device=x.device), torch.tensor(height, device=x.device), x.dtype)
    cols = pixel_positions(torch.arange(width, device=x.device), torch.tensor(width, device=x.device), x.dtype)
    pos = torch.stack((rows[:, None].expand(height, width), cols[None, :].expand(height, width)), dim=0)  # [2, H, W]
    return torch.cat((x, pos.unsqueeze(0).expand(batch, 2, height, width)), dim=1)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``drop_prob``
    (survivors scaled by ``1 / (1 - drop_prob)``); identity in eval. ``x: [B, ...]``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = check_drop_prob(drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class PointReducer(nn.Module):
    """Stem / between-stage reducer: on the grid, a strided convolution ``proj``.
    ``x: [B, in_dim, H, W] -> [B, out_dim, H', W']``."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Mlp(nn.Module):
    """Channel MLP ``fc1 -> GELU -> fc2`` applied per pixel: ``x: [B, dim, H, W] -> [B, dim, H, W]``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(x)))
        return x.permute(0, 3, 1, 2)


class ClusterBlock(nn.Module):
    """MetaFormer block: ``x + ls1 * Cluster(GN(x))``, then ``x + ls2 * MLP(GN(x))``. ``x: [B, dim, H, W]``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: int,
        heads: int,
        head_dim: int,
        centres: int,
        regions: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        normalize: str = "similarity",
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = Cluster(
            dim,
            dim,
            centres_w=centres,
            centres_h=centres,
            regions_w=regions,
            regions_h=regions,
            heads=heads,
            head_dim=head_dim,
            normalize=normalize,
        )
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.token_mixer(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x


class ContextClusterNet(nn.Module):
    """CoC classifier on images: ``x: [B, in_chans, H, W] -> logits [B, num_classes]``.

    Stem ``patch_embed`` (4x4 conv, stride 4, on the image plus 2 position
    channels), four stages of :class:`ClusterBlock` in ``network`` (even
    indices) separated by 3x3 stride-2 reducers (odd indices), then ``norm``
    (GroupNorm), the mean over H and W, and the ``head`` classifier.
    Each stage's feature map must be divisible by that stage's regions per side.
    """

    def __init__(
        self,
        config: CocConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        normalize: str = "similarity",
    ) -> None:
        super().__init__()
        if not isinstance(config, CocConfig):
            raise TypeError(f"config must be a CocConfig, got {type(config).__name__}")
        self.config = config
        self.in_chans = in_chans
        self.num_classes = num_classes
        dims = config.dims
        self.patch_embed = PointReducer(in_chans + 2, dims[0], *config.stem)
        total = sum(config.layers)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear over all blocks
        network: List[nn.Module] = []
        first = 0
        for stage, depth in enumerate(config.layers):
            blocks = [
                ClusterBlock(
                    dims[stage],
                    config.mlp_ratios[stage],
                    config.heads[stage],
                    config.head_dim,
                    config.centres[stage],
                    config.regions[stage],
                    drop_path=rates[first + i],
                    layer_scale_init_value=layer_scale_init_value,
                    normalize=normalize,
                )
                for i in range(depth)
            ]
            first += depth
            network.append(nn.Sequential(*blocks))
            if stage + 1 < len(config.layers):
                network.append(PointReducer(dims[stage], dims[stage + 1], *config.downsample))
        self.network = nn.ModuleList(network)
        self.norm = nn.GroupNorm(1, dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, in_chans, H, W]`` -> last-stage feature map ``[B, dims[-1], H/32, W/32]`` (before ``norm``)."""
        check_tensor(x, "x", ndim=4)
        check_float(x, "x")
        if x.size(1) != self.in_chans:
            raise ValueError(f"x must have in_chans={self.in_chans} channels, got shape {tuple(x.shape)}")
        k = self.config.stem[0]
        if x.size(2) < k or x.size(3) < k:
            raise ValueError(f"x must be at least {k}x{k} pixels (the stem's window), got shape {tuple(x.shape)}")
        x = self.patch_embed(add_position_channels(x))
        for module in self.network:
            x = module(x)
        return x

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """``norm``, the mean over H and W and (unless ``pre_logits``) the classifier.

        ``features``: :meth:`forward_features`'s map. Returns ``[B, dims[-1]]`` pooled features
        with ``pre_logits``, else logits ``[B, num_classes]``.
        """
        pooled = self.norm(features).mean(dim=(-2, -1))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, in_chans, H, W]`` -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))


def list_models() -> List[str]:
    """Names of the CoC variants, in the order of docs/design.md §8."""
    return list(VARIANTS)


def create_model(name: str, **kwargs: object) -> ContextClusterNet:
    """Build variant ``name`` (see :func:`list_models`); ``kwargs`` go to :class:`ContextClusterNet`
    (``num_classes``, ``in_chans``, ``drop_path_rate``, ``layer_scale_init_value``, ``normalize``)."""
    if name not in VARIANTS:
        raise ValueError(f"name must be one of {list_models()}, got {name!r}")
    return ContextClusterNet(VARIANTS[name], **kwargs)
