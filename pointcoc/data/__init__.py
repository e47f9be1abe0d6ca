"""Datasets: ScanObjectNN from its HDF5 files, and a generated demo set in the same format."""
from .demo_objects import ensure_demo_dataset, generate_object, generate_split, write_demo_dataset
from .scanobjectnn import (
    CLASS_NAMES,
    DATA_SOURCE_HINT,
    DEFAULT_ROOT,
    VARIANTS,
    ScanObjectNN,
    dataset_file,
    load_h5_split,
    scale_shift_shuffle,
)

__all__ = [
    "CLASS_NAMES",
    "DATA_SOURCE_HINT",
    "DEFAULT_ROOT",
    "VARIANTS",
    "ScanObjectNN",
    "dataset_file",
    "load_h5_split",
    "scale_shift_shuffle",
    "ensure_demo_dataset",
    "generate_object",
    "generate_split",
    "write_demo_dataset",
]
