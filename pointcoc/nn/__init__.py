"""Neural-network layers on point sets: the context-cluster operation and its companions."""

from .anchors import fps_from_centre, grid_subsample
from .cluster_plan import ClusterPlan, make_plan
from .context_cluster import ContextCluster, assign_centres, context_cluster
from .geometry import PointGeometry, estimate_pitch, point_lattice
from .kernel import kernel_taps
from .layers import DropPath, Mlp
from .norm import PointGroupNorm, segment_mean
from .reducer import PointReducer

__all__ = [
    "ClusterPlan",
    "make_plan",
    "ContextCluster",
    "assign_centres",
    "context_cluster",
    "PointGeometry",
    "estimate_pitch",
    "point_lattice",
    "grid_subsample",
    "fps_from_centre",
    "kernel_taps",
    "DropPath",
    "Mlp",
    "PointGroupNorm",
    "segment_mean",
    "PointReducer",
]
