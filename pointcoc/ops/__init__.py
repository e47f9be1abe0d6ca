"""Point-set operations: sampling, neighbours, ragged-batch utilities."""
from .batch import batch_counts, batch_ptr, from_dense_batch, to_dense_batch
from .sampling import random_sample

__all__ = ["batch_counts", "batch_ptr", "from_dense_batch", "to_dense_batch", "random_sample"]
