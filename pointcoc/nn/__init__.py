"""Neural-network layers on point sets: the context-cluster operation and its companions."""
from .cluster_plan import ClusterPlan, make_plan
from .context_cluster import ContextCluster, assign_centres, context_cluster
from .geometry import PointGeometry
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
    "DropPath",
    "Mlp",
    "PointGroupNorm",
    "segment_mean",
    "PointReducer",
]
