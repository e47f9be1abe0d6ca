"""pointcoc: Context Clusters on point sets.

Every visual input - point clouds, images with discrete pixels, masked or
irregular images, RGB-D frames, ordinary grid images - is an unordered set of
points ``(x, pos, batch)``; one context-cluster operation extracts features from
all of them.
"""

from . import models, nn, ops
from .checkpoint import convert_official_state_dict
from .models import create_model, list_models, register_model
from .ops.batch import to_dense_batch
from .points import image_to_points, points_to_image, rgbd_to_points, sample_pixels

__version__ = "0.1.0"


__all__ = [
    "ops",
    "nn",
    "models",
    "image_to_points",
    "sample_pixels",
    "rgbd_to_points",
    "points_to_image",
    "to_dense_batch",
    "create_model",
    "list_models",
    "register_model",
    "convert_official_state_dict",
]


def __getattr__(name: str):
    """``pc.reference``, the test oracle (docs/design.md §1), is loaded on first use only."""
    if name == "reference":
        import importlib

        return importlib.import_module(".reference", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
