"""Point-set operations: sampling, neighbours, grid proposal, ragged-batch utilities."""
from .backend import get_backend, set_backend, use_backend
from .batch import batch_counts, batch_ptr, from_dense_batch, to_dense_batch
from .fps import fps
from .grid import adaptive_bins, grid_proposal
from .knn import knn, knn_dense, knn_padded
from .sampling import random_sample

__all__ = [
    "batch_counts",
    "batch_ptr",
    "from_dense_batch",
    "to_dense_batch",
    "random_sample",
    "fps",
    "knn",
    "knn_padded",
    "knn_dense",
    "adaptive_bins",
    "grid_proposal",
    "set_backend",
    "get_backend",
    "use_backend",
]
