"""Architectures of the CoC variants (docs/design.md §8).

``VARIANTS`` holds each variant's :class:`CocConfig`; it is the single source of truth
for the point-set models (:mod:`pointcoc.models.coc`), the reference image models
(:mod:`pointcoc.reference`) and the checkpoint converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["CocConfig", "VARIANTS"]


@dataclass(frozen=True)
class CocConfig:
    """Architecture of one CoC variant; every tuple has one entry per stage.

    ``centres[s]``: centres per region side in stage ``s`` (``centres[s]**2`` centres per region);
    ``regions[s]``: regions per side (``regions[s]**2`` equal tiles of the feature map).
    ``stem`` / ``downsample``: ``(kernel, stride, padding)`` of the first reducer and of the
    reducers between stages (docs/design.md §8: 4x4 stride 4, and 3x3 stride 2 padding 1).
    """

    layers: Tuple[int, ...]
    dims: Tuple[int, ...]
    mlp_ratios: Tuple[int, ...]
    heads: Tuple[int, ...]
    head_dim: int
    centres: Tuple[int, ...]
    regions: Tuple[int, ...]
    stem: Tuple[int, int, int] = (4, 4, 0)
    downsample: Tuple[int, int, int] = (3, 2, 1)


_TINY = dict(layers=(3, 4, 5, 2), dims=(32, 64, 196, 320), mlp_ratios=(8, 8, 4, 4), heads=(4, 4, 8, 8), head_dim=24)

VARIANTS: Dict[str, CocConfig] = {
    "coc_tiny": CocConfig(**_TINY, centres=(2, 2, 2, 2), regions=(8, 4, 2, 1)),
    "coc_tiny2": CocConfig(**_TINY, centres=(4, 2, 7, 4), regions=(7, 7, 1, 1)),
    "coc_tiny_plain": CocConfig(**_TINY, centres=(4, 4, 2, 2), regions=(1, 1, 1, 1)),
    "coc_small": CocConfig(
        layers=(2, 2, 6, 2),
        dims=(64, 128, 320, 512),
        mlp_ratios=(8, 8, 4, 4),
        heads=(4, 4, 8, 8),
        head_dim=32,
        centres=(2, 2, 2, 2),
        regions=(8, 4, 2, 1),
    ),
    "coc_medium": CocConfig(
        layers=(4, 4, 12, 4),
        dims=(64, 128, 320, 512),
        mlp_ratios=(8, 8, 4, 4),
        heads=(6, 6, 12, 12),
        head_dim=32,
        centres=(2, 2, 2, 2),
        regions=(8, 4, 2, 1),
    ),
    # not in the paper: a small network for small images (16x16 to 64x64), 3x3 stride-2 stem
    "coc_mini": CocConfig(
        layers=(2, 2, 2),
        dims=(32, 64, 128),
        mlp_ratios=(4, 4, 4),
        heads=(2, 4, 4),
        head_dim=16,
        centres=(2, 2, 1),
        regions=(2, 1, 1),
        stem=(3, 2, 1),
    ),
}
