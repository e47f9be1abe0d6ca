"""Reference implementations: the context cluster and CoC models on ``[B, C, H, W]`` images, and
PointMLP(-CoC) in the released layout (:mod:`pointcoc.reference.pointmlp`).

Written plainly (dense similarity, 0/1 assignment mask; explicit grouped tensors) as the
oracles the library's models are tested against and the baselines the benchmarks run beside
them (docs/design.md §1, §13). A leaf: only tests, benchmarks and the checkpoint converter
import it.
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
from .pointmlp import ReferencePointMLP

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
    "ReferencePointMLP",
]
