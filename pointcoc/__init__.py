"""pointcoc: Context Clusters on point sets."""
from . import ops
from .ops.batch import from_dense_batch, to_dense_batch

__version__ = "0.1.0"

__all__ = ["ops", "to_dense_batch", "from_dense_batch"]
