"""ScanObjectNN loading/validation/augmentation and the generated demo set."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pointcoc.data import (
    CLASS_NAMES,
    VARIANTS,
    ScanObjectNN,
    dataset_file,
    ensure_demo_dataset,
    generate_object,
    generate_split,
    load_h5_split,
    scale_shift_shuffle,
    write_demo_dataset,
)


def write_h5(path: Path, data: np.ndarray, label: np.ndarray, **extra: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
        for key, value in extra.items():
            f.create_dataset(key, data=value)
    return path


def random_split(rng: np.random.Generator, objects: int = 6, points: int = 64):
    data = rng.standard_normal((objects, points, 3)).astype(np.float32)
    label = rng.integers(0, 15, size=objects).astype(np.int64)
    return data, label


# ----------------------------------------------------------------------------- layout and names
def test_class_names_in_label_order():
    assert CLASS_NAMES == (
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
    assert ScanObjectNN.classes == CLASS_NAMES


@pytest.mark.parametrize(
    "variant, split, expected",
    [
        ("PB_T50_RS", "train", "h5_files/main_split/training_objectdataset_augmentedrot_scale75.h5"),
        ("PB_T50_RS", "test", "h5_files/main_split/test_objectdataset_augmentedrot_scale75.h5"),
        ("OBJ_BG", "train", "h5_files/main_split/training_objectdataset.h5"),
        ("OBJ_BG", "test", "h5_files/main_split/test_objectdataset.h5"),
        ("OBJ_ONLY", "train", "h5_files/main_split_nobg/training_objectdataset.h5"),
        ("OBJ_ONLY", "test", "h5_files/main_split_nobg/test_objectdataset.h5"),
    ],
)
def test_dataset_file_layout(variant, split, expected):
    assert dataset_file("root", variant, split) == Path("root") / expected
    assert set(VARIANTS) == {"PB_T50_RS", "OBJ_BG", "OBJ_ONLY"}


def test_dataset_file_rejects_unknown_names():
    with pytest.raises(ValueError, match="variant"):
        dataset_file("root", "PB_T25", "train")
    with pytest.raises(ValueError, match="split"):
        dataset_file("root", "OBJ_BG", "val")


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_load_reads_first_points_and_labels(tmp_path, label_shape):
    rng = np.random.default_rng(0)
    data, label = random_split(rng)
    stored = label.reshape(-1, 1).astype(np.uint8) if label_shape == "column" else label.astype(np.int32)
    path = write_h5(tmp_path / "a.h5", data.astype(np.float64), stored, mask=np.zeros(data.shape[:2], np.int32))
    points, labels = load_h5_split(path, num_points=40)
    assert points.dtype == np.float32 and points.flags.c_contiguous
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(points, data[:, :40])
    np.testing.assert_array_equal(labels, label)
    all_points, _ = load_h5_split(path)
    np.testing.assert_array_equal(all_points, data)


def _missing_label(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"] = data


def _wrong_data_shape(path, data, label):
    write_h5(path, data[:, :, :2], label)


def _flat_data(path, data, label):
    write_h5(path, data.reshape(len(data), -1), label)


def _float_labels(path, data, label):
    write_h5(path, data, label.astype(np.float32))


def _int_data(path, data, label):
    write_h5(path, data.astype(np.int32), label)


def _label_matrix(path, data, label):
    write_h5(path, data, np.stack([label, label], axis=1))


def _count_mismatch(path, data, label):
    write_h5(path, data, label[:-1])


def _label_out_of_range(path, data, label):
    write_h5(path, data, np.full_like(label, 15))


def _nan(path, data, label):
    data = data.copy()
    data[2, 3, 1] = np.nan
    write_h5(path, data, label)


def _empty(path, data, label):
    write_h5(path, data[:0], label[:0])


def _too_few_points(path, data, label):
    write_h5(path, data[:, :10], label)


def _truncated(path, data, label):
    write_h5(path, data, label)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _not_hdf5(path, data, label):
    path.write_text("this is not an HDF5 file\n")


def _data_is_group(path, data, label):
    with h5py.File(path, "w") as f:
        f.create_group("data")
        f["label"] = label


@pytest.mark.parametrize(
    "make, what",
    [
        (_missing_label, "missing dataset 'label'"),
        (_wrong_data_shape, r"'data' must have shape \[S, P, 3\], got \[6, 64, 2\]"),
        (_flat_data, r"'data' must have shape \[S, P, 3\], got \[6, 192\]"),
        (_float_labels, "'label' must hold integers, got dtype float32"),
        (_int_data, "'data' must hold floats, got dtype int32"),
        (_label_matrix, r"'label' must have shape \[S\] or \[S, 1\], got \[6, 2\]"),
        (_count_mismatch, "'data' holds 6 objects but 'label' holds 5"),
        (_label_out_of_range, r"labels must be in \[0, 15\), found 15 at object 0 \(range \[15, 15\]\)"),
        (_nan, "NaN or inf"),
        (_empty, "holds no objects"),
        (_too_few_points, "objects have 10 points, fewer than the 32 requested"),
        (_truncated, "cannot be read as HDF5"),
        (_not_hdf5, "cannot be read as HDF5"),
        (_data_is_group, "'data' is a group"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, make, what):
    data, label = random_split(np.random.default_rng(1))
    path = tmp_path / "bad.h5"
    make(path, data, label)
    with pytest.raises(ValueError, match=what) as info:
        load_h5_split(path, num_points=32)
    message = str(info.value)
    assert message.startswith(f"ScanObjectNN file {path}: ")
    assert "datasets/README.md" in message and "\n" not in message


def test_missing_file_error_names_file_and_source(tmp_path):
    path = dataset_file(tmp_path, "OBJ_ONLY", "test")
    with pytest.raises(ValueError) as info:
        ScanObjectNN(tmp_path, "test", "OBJ_ONLY")
    message = str(info.value)
    assert message.startswith(f"ScanObjectNN file {path}: file not found")
    assert "official ScanObjectNN project page" in message
    assert "datasets/scanobjectnn/h5_files/main_split/" in message


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        load_h5_split(tmp_path)


# ----------------------------------------------------------------------------- dataset
@pytest.fixture()
def split_root(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 10), ("test", 4)):
        data, label = random_split(rng, objects=n, points=48)
        write_h5(dataset_file(tmp_path, "OBJ_BG", split), data, label)
    return tmp_path


def test_dataset_holds_split_in_memory(split_root):
    ds = ScanObjectNN(split_root, "test", "OBJ_BG", num_points=32)
    with h5py.File(dataset_file(split_root, "OBJ_BG", "test"), "r") as f:
        data, label = f["data"][()], f["label"][()]
    dataset_file(split_root, "OBJ_BG", "test").unlink()  # items never reopen the file
    assert len(ds) == 4 and not ds.augment
    for i in range(len(ds)):
        points, lab = ds[i]
        assert points.dtype == torch.float32 and points.shape == (32, 3)
        assert lab.dtype == torch.int64 and lab.dim() == 0
        np.testing.assert_array_equal(points.numpy(), data[i, :32])
        assert int(lab) == label[i]


def test_dataset_rejects_bad_num_points(split_root):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_points"):
            ScanObjectNN(split_root, "train", "OBJ_BG", num_points=bad)
    with pytest.raises(ValueError, match="seed"):
        ScanObjectNN(split_root, "train", "OBJ_BG", num_points=16, seed=-1)


def _recover_scale_shift(original: np.ndarray, augmented: np.ndarray):
    """Per-axis scale and shift mapping ``original`` onto ``augmented`` (as multisets of points)."""
    scale, shift = np.empty(3), np.empty(3)
    for axis in range(3):
        a, b = np.sort(original[:, axis]), np.sort(augmented[:, axis])
        slope, intercept = np.polyfit(a.astype(np.float64), b.astype(np.float64), 1)
        np.testing.assert_allclose(a * slope + intercept, b, atol=1e-5)
        scale[axis], shift[axis] = slope, intercept
    return scale, shift


def test_train_augmentation_is_scale_shift_shuffle(split_root):
    ds = ScanObjectNN(split_root, "train", "OBJ_BG", num_points=32, seed=7)
    assert ds.augment
    for i in range(len(ds)):
        original = ds.points[i]
        augmented = ds[i][0].numpy()
        scale, shift = _recover_scale_shift(original, augmented)
        assert np.all((scale > 2 / 3 - 1e-6) & (scale < 3 / 2 + 1e-6))
        assert np.all(np.abs(shift) <= 0.2 + 1e-6)
        restored = (augmented - shift) / scale
        order_a, order_r = np.lexsort(original.T[::-1]), np.lexsort(restored.T[::-1])
        np.testing.assert_allclose(restored[order_r], original[order_a], atol=1e-5)
        assert not np.allclose(restored, original, atol=1e-4)  # the points were reordered


def test_augmentation_depends_on_seed_epoch_and_index_only(split_root):
    ds = ScanObjectNN(split_root, "train", "OBJ_BG", num_points=32, seed=3)
    first = ds[5][0]
    assert torch.equal(ds[5][0], first)  # no hidden state
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], first)
    ds.set_epoch(0)
    assert torch.equal(ds[5][0], first)
    other = ScanObjectNN(split_root, "train", "OBJ_BG", num_points=32, seed=4)
    assert not torch.equal(other[5][0], first)
    expected = scale_shift_shuffle(ds.points[5], np.random.default_rng([3, 0, 5]))
    np.testing.assert_array_equal(first.numpy(), expected)


def test_augment_switch(split_root):
    plain = ScanObjectNN(split_root, "train", "OBJ_BG", num_points=16, augment=False)
    np.testing.assert_array_equal(plain[0][0].numpy(), plain.points[0])
    assert ScanObjectNN(split_root, "test", "OBJ_BG", num_points=16, augment=True).augment


# ----------------------------------------------------------------------------- demo set
def test_generate_object_scan_properties():
    for c in range(len(CLASS_NAMES)):
        points, mask = generate_object(c, np.random.default_rng([11, c]))
        assert points.shape == (2048, 3) and points.dtype == np.float32
        assert mask.shape == (2048,) and mask.dtype == np.int32
        assert np.isfinite(points).all()
        np.testing.assert_allclose(np.linalg.norm(points, axis=1).max(), 1.0, rtol=1e-6)
        np.testing.assert_allclose((points.min(0) + points.max(0)) / 2, 0.0, atol=1e-6)  # centred
        background = 1.0 - mask.mean()
        assert background <= 0.3 + 1e-3  # at most 30% clutter; the object dominates
        assert set(np.unique(mask)) <= {0, 1}


def test_every_class_has_its_builder_in_label_order():
    from pointcoc.data.demo_objects import _BUILDERS

    assert tuple(_BUILDERS) == CLASS_NAMES


def test_generate_object_is_deterministic_and_varied():
    a = generate_object(4, np.random.default_rng(5))
    b = generate_object(4, np.random.default_rng(5))
    c = generate_object(4, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="class_index"):
        generate_object(15, np.random.default_rng(0))


def test_bin_is_an_open_cylinder_seen_partially():
    """Object points of a bin lie (up to noise) on a vertical cylinder; a partial view misses part of it."""
    points, mask = generate_object(CLASS_NAMES.index("bin"), np.random.default_rng(3))
    obj = points[mask == 1].astype(np.float64)
    xz = obj[:, [0, 2]]
    # Fit the circle x^2 + z^2 + D x + E z + F = 0 to the points away from the bottom.
    wall = obj[:, 1] > np.quantile(obj[:, 1], 0.3)
    A = np.column_stack([xz[wall], np.ones(wall.sum())])
    rhs = -(xz[wall] ** 2).sum(1)
    (D, E, F), *_ = np.linalg.lstsq(A, rhs, rcond=None)
    centre = np.array([-D / 2, -E / 2])
    radius = np.sqrt(centre @ centre - F)
    dist = np.linalg.norm(xz[wall] - centre, axis=1)
    assert np.median(np.abs(dist - radius)) < 0.03 * radius
    angles = np.arctan2(*(xz[wall] - centre).T[::-1])
    covered = np.histogram(angles, bins=36, range=(-np.pi, np.pi))[0] > 0
    assert covered.sum() < 36  # occlusion hides part of the wall


def test_generate_split_balanced_and_seeded():
    data, label, mask = generate_split(2, seed=9, split="test")
    assert data.shape == (30, 2048, 3) and label.shape == (30,) and mask.shape == (30, 2048)
    assert label.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(label, minlength=15), np.full(15, 2))
    # object i depends only on (seed, split, i)
    again, _ = generate_object(int(label[17]), np.random.default_rng([9, 1, 17]))
    np.testing.assert_array_equal(data[17], again)
    with pytest.raises(ValueError, match="split"):
        generate_split(1, 0, "val")


def test_demo_files_are_written_once_and_read_by_the_loader(tmp_path):
    root = tmp_path / "demo"
    assert ensure_demo_dataset(root, 1, 1, seed=3, progress=False) is True
    train_file = dataset_file(root, "PB_T50_RS", "train")
    stamp = train_file.stat().st_mtime_ns
    assert ensure_demo_dataset(root, 1, 1, seed=3, progress=False) is False  # reused
    assert train_file.stat().st_mtime_ns == stamp
    assert not list(root.rglob("*.tmp"))
    with h5py.File(train_file, "r") as f:
        assert f["data"].dtype == np.float32 and f["data"].shape == (15, 2048, 3)
        assert f["label"].dtype == np.int64 and f["mask"].shape == (15, 2048)
    ds = ScanObjectNN(root, "train", num_points=1024)
    assert len(ds) == 15 and ds.points.shape == (15, 1024, 3)
    np.testing.assert_array_equal(np.sort(ds.labels), np.arange(15))
    assert ensure_demo_dataset(root, 1, 1, seed=4, progress=False) is True  # other settings: rebuilt
    write_demo_dataset(root, 1, 1, seed=3, progress=False)
    np.testing.assert_array_equal(ScanObjectNN(root, "train", num_points=1024).points, ds.points)
