"""Reference implementation: the context cluster and CoC models on ``[B, C, H, W]`` images.

Written plainly (dense similarity, 0/1 assignment mask) as the oracle the
points-mode models are tested against (docs/design.md §1, §13). A leaf: only tests,
benchmarks and the checkpoint converter import it.
"""

from .cluster import Cluster
from .models import (
    ClusterBlock,
    ContextClusterNet,
    DropPath,
    Mlp,
    PointReducer,
    add_position_channels,
    create_model,
    list_models,
)

__all__ = [
    "Cluster",
    "add_position_channels",
    "DropPath",
    "PointReducer",
    "Mlp",
    "ClusterBlock",
    "ContextClusterNet",
    "create_model",
    "list_models",
]
