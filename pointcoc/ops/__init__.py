"""Point-set operations: sampling, neighbours (kNN, radius, nearest), voxels, interpolation,
grid proposal, ragged-batch utilities. Pure PyTorch; signatures follow torch-cluster / PyG."""

from .backend import get_backend, set_backend, use_backend
from .batch import batch_counts, batch_ptr, to_dense_batch
from .fps import fps
from .grid import grid_proposal
from .interpolate import knn_interpolate
from .knn import knn, knn_dense, knn_graph, knn_padded, nearest
from .radius import radius, radius_graph
from .sampling import random_sample
from .voxel import grid_cluster, voxel_grid

__all__ = [
    "batch_counts",
    "batch_ptr",
    "to_dense_batch",
    "random_sample",
    "fps",
    "knn",
    "knn_padded",
    "knn_dense",
    "knn_graph",
    "nearest",
    "radius",
    "radius_graph",
    "grid_cluster",
    "voxel_grid",
    "knn_interpolate",
    "grid_proposal",
    "set_backend",
    "get_backend",
    "use_backend",
]
