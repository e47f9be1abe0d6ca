"""The context-cluster operation on image feature maps, written plainly (the oracle).

This is the reference formulation of docs/design.md §5 on ``[B, C, H, W]`` tensors:
dense centre-by-point similarity, a 0/1 assignment mask, and the full
``[b, M, N, c]`` aggregate/dispatch products. It is deliberately not optimised:
the points-mode implementation is tested against it, and benchmarks compare its
memory use against this formulation.

Naming: ``*_h`` counts along rows (height, dim 2), ``*_w`` along columns
(width, dim 3). The feature map is cut into ``regions_h x regions_w`` equal tiles
(tile index ``row_tile * regions_w + col_tile``); inside each tile the centres are
the ``centres_h x centres_w`` bins of adaptive average pooling, numbered
row-major (``bin_row * centres_w + bin_col``); points are numbered row-major.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._checks import check_float, check_k, check_tensor
from ..nn.context_cluster import NORMALIZATIONS

__all__ = ["Cluster"]


class Cluster(nn.Module):
    """Context-cluster token mixer on a feature map ``x: [B, dim, H, W] -> [B, out_dim, H, W]``.

    Parameters ``f``, ``v`` (1x1 convs ``dim -> heads * head_dim``), ``proj``
    (1x1 conv ``heads * head_dim -> out_dim``), all with bias, and the scalars
    ``sim_alpha`` (init 1) and ``sim_beta`` (init 0), named as in the released
    checkpoints.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        centres_w: int = 2,
        centres_h: int = 2,
        regions_w: int = 2,
        regions_h: int = 2,
        heads: int = 4,
        head_dim: int = 24,
        normalize: str = "similarity",
    ) -> None:
        super().__init__()
        for value, name in (
            (dim, "dim"),
            (out_dim, "out_dim"),
            (centres_w, "centres_w"),
            (centres_h, "centres_h"),
            (regions_w, "regions_w"),
            (regions_h, "regions_h"),
            (heads, "heads"),
            (head_dim, "head_dim"),
        ):
            check_k(value, name)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.dim = dim
        self.out_dim = out_dim
        self.centres_w = centres_w
        self.centres_h = centres_h
        self.regions_w = regions_w
        self.regions_h = regions_h
        self.heads = heads
        self.head_dim = head_dim
        self.normalize = normalize
        inner = heads * head_dim
        self.f = nn.Conv2d(dim, inner, kernel_size=1)
        self.v = nn.Conv2d(dim, inner, kernel_size=1)
        self.proj = nn.Conv2d(inner, out_dim, kernel_size=1)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, out_dim={self.out_dim}, centres_h={self.centres_h}, centres_w={self.centres_w}, "
            f"regions_h={self.regions_h}, regions_w={self.regions_w}, heads={self.heads}, head_dim={self.head_dim}, "
            f"normalize={self.normalize!r}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, dim, H, W]`` -> ``[B, out_dim, H, W]``; ``H % regions_h == 0`` and ``W % regions_w == 0``."""
        check_tensor(x, "x", ndim=4)
        check_float(x, "x")
        if x.size(1) != self.dim:
            raise ValueError(f"x must have {self.dim} channels (dim), got shape {tuple(x.shape)}")
        height, width = x.shape[2], x.shape[3]
        if height % self.regions_h or width % self.regions_w:
            raise ValueError(
                f"feature map size {height}x{width} (HxW) is not divisible by the regions "
                f"regions_h={self.regions_h} x regions_w={self.regions_w}"
            )

        value = self.v(x)
        feat = self.f(x)
        # heads: channel ch belongs to head ch // head_dim
        value = rearrange(value, "b (e c) h w -> (b e) c h w", e=self.heads)
        feat = rearrange(feat, "b (e c) h w -> (b e) c h w", e=self.heads)
        # regions: regions_h x regions_w equal tiles
        value = rearrange(value, "b c (f1 h) (f2 w) -> (b f1 f2) c h w", f1=self.regions_h, f2=self.regions_w)
        feat = rearrange(feat, "b c (f1 h) (f2 w) -> (b f1 f2) c h w", f1=self.regions_h, f2=self.regions_w)
        b, c, h, w = feat.shape

        # centres: adaptive average pooling bins, flattened row-major -> [b, M, c]
        centres = F.adaptive_avg_pool2d(feat, (self.centres_h, self.centres_w))
        value_centres = F.adaptive_avg_pool2d(value, (self.centres_h, self.centres_w))
        centres = rearrange(centres, "b c h w -> b (h w) c")
        value_centres = rearrange(value_centres, "b c h w -> b (h w) c")
        points = rearrange(feat, "b c h w -> b (h w) c")  # [b, N, c]
        value_points = rearrange(value, "b c h w -> b (h w) c")  # [b, N, c]

        # similarity [b, M, N]
        cos = F.normalize(centres, dim=-1) @ F.normalize(points, dim=-1).transpose(-2, -1)
        sim = torch.sigmoid(self.sim_beta + self.sim_alpha * cos)
        # each point goes to its most similar centre (ties: the lowest centre index)
        _, idx = sim.max(dim=1, keepdim=True)
        mask = torch.zeros_like(sim).scatter_(1, idx, 1.0)
        sim = sim * mask

        # aggregate: [b, M, N, c] products summed over points -> [b, M, c]
        aggregated = (value_points.unsqueeze(1) * sim.unsqueeze(-1)).sum(dim=2) + value_centres
        if self.normalize == "similarity":
            aggregated = aggregated / (sim.sum(dim=-1, keepdim=True) + 1.0)
        else:
            aggregated = aggregated / (mask.sum(dim=-1, keepdim=True) + 1.0)
        # dispatch: [b, M, N, c] products summed over centres -> [b, N, c]
        out = (aggregated.unsqueeze(2) * sim.unsqueeze(-1)).sum(dim=1)

        out = rearrange(out, "b (h w) c -> b c h w", h=h, w=w)
        out = rearrange(out, "(b f1 f2) c h w -> b c (f1 h) (f2 w)", f1=self.regions_h, f2=self.regions_w)
        out = rearrange(out, "(b e) c h w -> b (e c) h w", e=self.heads)
        return self.proj(out)
