"""ScanObjectNN (Uy et al., ICCV 2019) from its HDF5 files, with the reference recipe.

Files (docs/design.md §3.4): ``data`` float ``[S, 2048, 3]``, ``label`` integer ``[S]``
or ``[S, 1]`` (and ``mask`` ``[S, 2048]``, not needed here), laid out as::

    <root>/h5_files/main_split/training_objectdataset_augmentedrot_scale75.h5   PB_T50_RS
    <root>/h5_files/main_split/test_objectdataset_augmentedrot_scale75.h5
    <root>/h5_files/main_split/training_objectdataset.h5                        OBJ_BG
    <root>/h5_files/main_split/test_objectdataset.h5
    <root>/h5_files/main_split_nobg/training_objectdataset.h5                   OBJ_ONLY
    <root>/h5_files/main_split_nobg/test_objectdataset.h5

The whole split is read into memory once (the files are well under 1 GB), so
items never touch the file. The reference recipe keeps the first 1024 points of
each object; training augmentation scales each axis by U(2/3, 3/2), shifts it by
U(-0.2, 0.2) and shuffles the points. The augmentation of item ``i`` in epoch
``e`` comes from its own generator seeded with ``(seed, e, i)``: it does not
depend on loader workers or processes, and a resumed run sees the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CLASS_NAMES",
    "VARIANTS",
    "DEFAULT_ROOT",
    "DATA_SOURCE_HINT",
    "dataset_file",
    "load_h5_split",
    "scale_shift_shuffle",
    "ScanObjectNN",
]

CLASS_NAMES: Tuple[str, ...] = (
    "bag",
    "bin",
    "box",
    "cabinet",
    "chair",
    "desk",
    "display",
    "door",
    "shelf",
    "table",
    "bed",
    "pillow",
    "sink",
    "sofa",
    "toilet",
)
"""The 15 ScanObjectNN classes, in label order."""

VARIANTS: Dict[str, Tuple[str, str]] = {
    "PB_T50_RS": ("main_split", "objectdataset_augmentedrot_scale75.h5"),
    "OBJ_BG": ("main_split", "objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "objectdataset.h5"),
}
"""Variant name -> (folder under ``h5_files``, file-name suffix after ``training_``/``test_``)."""

DEFAULT_ROOT = Path("datasets") / "scanobjectnn"
"""Default dataset root, relative to the working directory."""

DATA_SOURCE_HINT = (
    "get ScanObjectNN from its authors (official ScanObjectNN project page, by request under their terms of use) "
    "and place the h5_files folder under the data root, e.g. "
    "datasets/scanobjectnn/h5_files/main_split/training_objectdataset_augmentedrot_scale75.h5 "
    "(see datasets/README.md)"
)
"""Where the data comes from and where it goes; appended to file errors."""

_SPLIT_PREFIX = {"train": "training_", "test": "test_"}

DEFAULT_MAX_BYTES = 1 << 30
"""Default ``max_bytes`` of :func:`load_h5_split`: 1 GiB (the largest real split, first 2048 points, is 280 MB)."""

DEFAULT_MAX_ABS_COORDINATE = 1e4
"""Default ``max_abs_coordinate`` of :func:`load_h5_split` (ScanObjectNN coordinates lie within a few units)."""


def dataset_file(root: Union[str, Path], variant: str = "PB_T50_RS", split: str = "train") -> Path:
    """Path of the HDF5 file holding ``split`` ('train' or 'test') of ``variant`` under ``root``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    folder, suffix = VARIANTS[variant]
    return Path(root) / "h5_files" / folder / (_SPLIT_PREFIX[split] + suffix)


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"ScanObjectNN file {path}: {what}; {DATA_SOURCE_HINT}")


def _check_values(path: Path, data: np.ndarray, max_abs_coordinate: float) -> None:
    """Refuse NaN / inf and coordinates above ``max_abs_coordinate``, naming the first bad object."""
    finite = np.isfinite(data).all(axis=(1, 2))
    if not finite.all():
        raise _bad(path, f"'data' of object {int(np.argmin(finite))} contains NaN or inf values")
    large = (np.abs(data) > max_abs_coordinate).any(axis=(1, 2))
    if large.any():
        index = int(np.argmax(large))
        raise _bad(
            path,
            f"'data' of object {index} has a coordinate of {float(np.abs(data[index]).max()):.3g}, "
            f"beyond max_abs_coordinate={max_abs_coordinate:g} (raise it if the values are meant)",
        )


def _check_layout(path: Path, f: "h5py.File", num_points: Optional[int], max_bytes: int) -> None:
    """Check the declared shapes and dtypes of 'data' and 'label' (nothing is read yet)."""
    for key in ("data", "label"):
        if key not in f:
            raise _bad(path, f"missing dataset {key!r} (keys present: {', '.join(sorted(f.keys())) or 'none'})")
        if not isinstance(f[key], h5py.Dataset):
            raise _bad(path, f"{key!r} is a group, expected an array")
    data_ds, label_ds = f["data"], f["label"]
    if data_ds.ndim != 3 or data_ds.shape[2] != 3:
        raise _bad(path, f"'data' must have shape [S, P, 3], got {list(data_ds.shape)}")
    if data_ds.dtype.kind != "f":
        raise _bad(path, f"'data' must hold floats, got dtype {data_ds.dtype}")
    if not (label_ds.ndim == 1 or (label_ds.ndim == 2 and label_ds.shape[1] == 1)):
        raise _bad(path, f"'label' must have shape [S] or [S, 1], got {list(label_ds.shape)}")
    if label_ds.dtype.kind not in "iu":
        raise _bad(path, f"'label' must hold integers, got dtype {label_ds.dtype}")
    if label_ds.shape[0] != data_ds.shape[0]:
        raise _bad(path, f"'data' holds {data_ds.shape[0]} objects but 'label' holds {label_ds.shape[0]}")
    if data_ds.shape[0] == 0:
        raise _bad(path, "it holds no objects")
    if num_points is not None and data_ds.shape[1] < num_points:
        raise _bad(path, f"objects have {data_ds.shape[1]} points, fewer than the {num_points} requested")
    kept = data_ds.shape[1] if num_points is None else num_points
    size = data_ds.shape[0] * kept * 3 * max(data_ds.dtype.itemsize, 4) + label_ds.shape[0] * 8
    if size > max_bytes:
        raise _bad(
            path,
            f"'data' declares shape {list(data_ds.shape)}: reading {kept} points per object needs "
            f"{size / 2**30:.2f} GiB, above max_bytes={max_bytes} ({max_bytes / 2**30:.2f} GiB); raise "
            f"max_bytes if the file is meant to be that large",
        )


def load_h5_split(
    path: Union[str, Path],
    num_points: Optional[int] = None,
    num_classes: int = len(CLASS_NAMES),
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_abs_coordinate: float = DEFAULT_MAX_ABS_COORDINATE,
) -> Tuple[np.ndarray, np.ndarray]:
    """Read and validate one ScanObjectNN HDF5 file.

    Returns ``points: [S, num_points, 3]`` float32 (the first ``num_points`` of
    each object; all of them when None) and ``labels: [S]`` int64. Raises
    ``ValueError`` naming the file and the problem (missing or unreadable file,
    missing ``data``/``label``, wrong shape or dtype, a declared size above
    ``max_bytes`` (checked before reading), labels out of range, an object with
    NaN / inf values or coordinates beyond ``max_abs_coordinate``) and saying
    where to get the data.
    """
    path = Path(path)
    if not path.is_file():
        raise _bad(path, "file not found" if not path.exists() else "not a regular file")
    try:
        with h5py.File(path, "r") as f:
            _check_layout(path, f, num_points, max_bytes)
            data = f["data"][:, :num_points] if num_points is not None else f["data"][()]
            labels = f["label"][()].reshape(-1).astype(np.int64)
    except OSError as exc:  # h5py's error for truncated / corrupt / non-HDF5 files
        raise _bad(path, f"cannot be read as HDF5 ({' '.join(str(exc).split())})") from None
    data = np.ascontiguousarray(data, dtype=np.float32)
    _check_values(path, data, max_abs_coordinate)
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = int(np.argmax((labels < 0) | (labels >= num_classes)))
        raise _bad(
            path,
            f"labels must be in [0, {num_classes}), found {labels[bad]} at object {bad} "
            f"(range [{labels.min()}, {labels.max()}])",
        )
    return data, labels


def scale_shift_shuffle(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference training augmentation of one object ``points: [n, 3]``.

    Each axis is scaled by U(2/3, 3/2) and shifted by U(-0.2, 0.2), then the
    points are put in a random order. Returns a new float32 ``[n, 3]`` array.
    """
    scale = rng.uniform(2.0 / 3.0, 3.0 / 2.0, size=3)
    shift = rng.uniform(-0.2, 0.2, size=3)
    out = (points * scale + shift).astype(np.float32)
    return out[rng.permutation(len(out))]


class ScanObjectNN(Dataset):
    """One split of a ScanObjectNN variant, held in memory.

    Args:
        root: folder holding ``h5_files/`` (default ``datasets/scanobjectnn``).
        split: ``'train'`` or ``'test'``.
        variant: ``'PB_T50_RS'`` (default, hardest), ``'OBJ_BG'`` or ``'OBJ_ONLY'``.
        num_points: points kept per object: the first ``num_points`` (1024 in the
            reference recipe).
        augment: apply :func:`scale_shift_shuffle`; default True for the train split.
        seed: base seed of the augmentation (see :meth:`set_epoch`).
        max_bytes, max_abs_coordinate: limits of :func:`load_h5_split`.

    Items are ``(points [num_points, 3] float32, label int64 scalar)`` tensors.
    ``points`` is ``[S, num_points, 3]`` and ``labels`` ``[S]`` for the whole split.
    """

    classes: Tuple[str, ...] = CLASS_NAMES

    def __init__(
        self,
        root: Union[str, Path] = DEFAULT_ROOT,
        split: str = "train",
        variant: str = "PB_T50_RS",
        num_points: int = 1024,
        augment: Optional[bool] = None,
        seed: int = 0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_abs_coordinate: float = DEFAULT_MAX_ABS_COORDINATE,
    ) -> None:
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"num_points must be a positive int, got {num_points!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.root = Path(root)
        self.split = split
        self.variant = variant
        self.num_points = num_points
        self.augment = (split == "train") if augment is None else bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.path = dataset_file(root, variant, split)
        self.points, self.labels = load_h5_split(
            self.path, num_points, max_bytes=max_bytes, max_abs_coordinate=max_abs_coordinate
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        points = self.points[index]
        if self.augment:
            points = scale_shift_shuffle(points, np.random.default_rng([self.seed, self.epoch, int(index)]))
        return torch.from_numpy(np.array(points, dtype=np.float32)), torch.tensor(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"ScanObjectNN(variant={self.variant!r}, split={self.split!r}, objects={len(self)}, "
            f"num_points={self.num_points}, augment={self.augment}, file={str(self.path)!r})"
        )
