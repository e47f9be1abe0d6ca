"""Datasets: ScanObjectNN from its HDF5 files, a generated demo set in the same format, and
rendered RGB-D frames of the demo classes."""

from .demo_objects import ensure_demo_dataset, generate_object, generate_split, write_demo_dataset
from .rgbd_frames import RGBDFrames, generate_frames
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
    "RGBDFrames",
    "generate_frames",
]
