"""Reliability under faults and hostile inputs (issue 10): kills at every write boundary, bit flips,
full disks, unwritable outputs, memory-exhausting and non-finite inputs, clear errors everywhere."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import pointcoc as pc
import pointcoc._files as files
import pointcoc.training as training
from pointcoc._files import WriteError, atomic_write, check_writable_dir, remove_stray_temporaries
from pointcoc.data import load_h5_split
from pointcoc.training import BatchAdapter, Trainer, channels_first, load_checkpoint, point_batch
from tests.helpers import load_example
from tests.test_training import EXAMPLE_TINY, write_real_format


class Clouds(Dataset):
    """Three classes of small clouds, stretched along axis ``label``."""

    def __init__(self, per_class: int, seed: int, points: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(3).repeat(per_class)
        self.points = 0.3 * torch.randn(len(self.labels), points, 3, generator=g)
        self.points[torch.arange(len(self.labels)), :, self.labels] *= 4.0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.points[i], self.labels[i]


class PointNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv1d(3, 16, 1), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 3, 1))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):  # [B, 3, n]
        return self.drop(self.mlp(x).amax(dim=2))


PLAIN = BatchAdapter(channels_first)


def tiny_trainer(out, epochs=4, **kw) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        PointNetLike(),
        Clouds(4, 1),
        Clouds(3, 2),
        adapter=PLAIN,
        num_classes=3,
        epochs=epochs,
        batch_size=4,
        lr=0.05,
        output_dir=out,
        progress=False,
        log=False,
        **kw,
    )


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing catches it on the way out."""


def kill_at_write(monkeypatch, k: int) -> list:
    """Make the k-th atomic write of the run die before it replaces its file."""
    calls = []
    real = training.atomic_write

    def write(path, data):
        calls.append(Path(path).name)
        if len(calls) == k:
            raise Killed
        return real(path, data)

    monkeypatch.setattr(training, "atomic_write", write)
    return calls


# ----------------------------------------------------------------------------- kills, resume, consistency
@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    trainer = tiny_trainer(out)
    calls = []
    real = training.atomic_write
    training.atomic_write = lambda path, data: (calls.append(Path(path).name), real(path, data))[1]
    try:
        trainer.fit()
    finally:
        training.atomic_write = real
    return out, trainer, calls


def test_straight_run_improves_and_stalls(straight_run):
    """The reference run must exercise both branches: epochs that write best.pt and epochs that do not."""
    _, trainer, calls = straight_run
    assert calls.count("last.pt") == 4 and 1 <= calls.count("best.pt") < 4


def test_kill_at_every_write_boundary_resumes_bitwise(straight_run, tmp_path, monkeypatch):
    ref_out, ref, calls = straight_run
    ref_best = load_checkpoint(ref_out / "best.pt")
    for k in range(1, len(calls) + 1):
        out = tmp_path / f"kill{k}"
        with monkeypatch.context() as m:
            kill_at_write(m, k)
            with pytest.raises(Killed):
                tiny_trainer(out).fit()
        # every on-disk state a kill leaves is consistent once resumed
        torch.manual_seed(99)
        resumed = tiny_trainer(out)
        if (out / "last.pt").exists():
            resumed.resume()
        resumed.fit()
        assert_same_tensors(resumed.model.state_dict(), ref.model.state_dict())
        best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
        assert best["epoch"] == ref_best["epoch"] == last["best"]["epoch"], (k, calls[k - 1])
        assert best["digest"] == last["best_digest"]
        assert_same_tensors(best["model"], ref_best["model"])
        assert_same_tensors(best["optimizer"]["state"][0], ref_best["optimizer"]["state"][0])


def test_kill_between_last_and_best_is_repaired(straight_run, tmp_path, monkeypatch):
    _, _, calls = straight_run
    k = (
        calls.index("best.pt", 1 + calls.index("best.pt")) + 1
        if calls.count("best.pt") > 1
        else calls.index("best.pt") + 1
    )
    out = tmp_path / "run"
    kill_at_write(monkeypatch, k)
    with pytest.raises(Killed):
        tiny_trainer(out).fit()
    monkeypatch.undo()
    last = load_checkpoint(out / "last.pt")
    stale = load_checkpoint(out / "best.pt") if (out / "best.pt").exists() else None
    assert last["best"]["epoch"] == last["epoch"] and (stale is None or stale["epoch"] < last["epoch"])
    note = training.repair_best_checkpoint(out)
    assert note and "repaired" in note
    assert (out / "best.pt").read_bytes() == (out / "last.pt").read_bytes()
    assert training.repair_best_checkpoint(out) is None  # consistent now


def test_unrepairable_best_is_refused(straight_run, tmp_path):
    ref_out, _, _ = straight_run
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("last.pt", "best.pt"):
        (out / name).write_bytes((ref_out / name).read_bytes())
    last = load_checkpoint(out / "last.pt")
    if last["best"]["epoch"] == last["epoch"]:
        pytest.skip("the reference run's last epoch is its best")
    (out / "best.pt").unlink()
    with pytest.raises(ValueError, match="best.pt: does not hold the best epoch"):
        training.repair_best_checkpoint(out)


# ----------------------------------------------------------------------------- digests and bit flips
def flip_one_weight_bit(path: Path, weight: torch.Tensor) -> None:
    raw = bytearray(path.read_bytes())
    needle = weight.detach().contiguous().numpy().tobytes()
    at = raw.find(needle)
    assert at >= 0
    raw[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_flipped_weight_bit_is_refused_naming_the_file(straight_run, tmp_path):
    ref_out, ref, _ = straight_run
    path = tmp_path / "last.pt"
    path.write_bytes((ref_out / "last.pt").read_bytes())
    load_checkpoint(path)  # intact: accepted
    flip_one_weight_bit(path, ref.model.mlp[0].weight)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "does not match its digest" in message


def test_digest_covers_every_tensor_and_value():
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "history": [{"a": 1.5}], "best_digest": "x"}
    base = training.checkpoint_digest(state)
    assert training.checkpoint_digest({**state, "best_digest": "y"}) == base  # the digests themselves excluded
    for changed in (
        {**state, "epoch": 4},
        {**state, "history": [{"a": 1.25}]},
        {**state, "model": {"w": torch.tensor([0.0, 1.0, 2.0, 3.0000002])}},
        {**state, "model": {"w": torch.arange(4.0).double()}},
        {**state, "model": {"w": torch.arange(4.0).view(2, 2)}},
    ):
        assert training.checkpoint_digest(changed) != base
    deep = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(ValueError, match="nested deeper"):
        training.checkpoint_digest(deep)


def test_self_referential_and_deep_state_dicts_are_refused():
    loop = {"state_dict": None}
    loop["state_dict"] = {"model": loop, "epoch": 1}
    with pytest.raises(ValueError, match="contains itself"):
        pc.convert_official_state_dict("coc_tiny", loop)
    deep = {"w": torch.zeros(1), "note": "x"}
    for _ in range(20):
        deep = {"model": deep, "epoch": 0}
    with pytest.raises(ValueError, match="nested more than 8"):
        pc.convert_official_state_dict("coc_tiny", deep)


# ----------------------------------------------------------------------------- full disk, unwritable output
def full_disk(monkeypatch, after_bytes: int = 0):
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > after_bytes:
                self.f.write(bytes(data)[: max(after_bytes - self.written + len(data), 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return Full(f) if "w" in mode else f

    monkeypatch.setattr(files, "open", fake_open, raising=False)


def test_full_disk_keeps_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, epochs=2)
    trainer.train_one_epoch(0)
    trainer.epochs = 1
    trainer.fit()
    before = (tmp_path / "last.pt").read_bytes()
    trainer.epochs = 2
    full_disk(monkeypatch, after_bytes=1000)
    with pytest.raises(WriteError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "last.pt") in message and "no space left on device" in message
    assert (tmp_path / "last.pt").read_bytes() == before  # intact
    assert not list(tmp_path.glob(".*.tmp"))


def test_output_checked_before_any_work(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match=f"{blocker} is a file, not a folder"):
        tiny_trainer(blocker / "run")

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as m:
        m.setattr(files.tempfile, "NamedTemporaryFile", read_only)
        with pytest.raises(WriteError, match="read-only file system"):
            tiny_trainer(tmp_path / "ro")
    with monkeypatch.context() as m:
        m.setattr(files.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
        with pytest.raises(WriteError, match=r"no space left on device \(0.0 MiB free, about [\d.]+ MiB needed\)"):
            tiny_trainer(tmp_path / "small")


def test_stray_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stray = tmp_path / f".last.pt.{dead}.tmp"
    live = tmp_path / f".best.pt.{os.getppid()}.tmp"
    other = tmp_path / ".notes.txt.tmp"
    for p in (stray, live, other):
        p.write_bytes(b"partial")
    tiny_trainer(tmp_path, epochs=1)
    assert not stray.exists() and live.exists() and other.exists()
    assert remove_stray_temporaries(tmp_path / "absent") == []


def test_atomic_write_failure_leaves_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write(target, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError(errno.EIO, "device error")

    with pytest.raises(WriteError, match=f"cannot write {target}: input/output error"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))
    assert check_writable_dir(tmp_path / "new" / "dir").is_dir()


# ----------------------------------------------------------------------------- inputs that would exhaust memory
def test_hdf5_declared_shape_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(2_000_000, 2048, 3), dtype="f4", chunks=(1, 2048, 3))
        f.create_dataset("label", shape=(2_000_000,), dtype="i8", chunks=(1024,))
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"declares shape \[2000000, 2048, 3\].*above max_bytes=1073741824"):
        load_h5_split(path)
    with pytest.raises(ValueError, match="max_bytes=1000"):
        load_h5_split(path, num_points=1, max_bytes=1000)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid-looking PNG of a few dozen bytes that declares ``width x height`` 8-bit gray pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_png_decompression_bomb_is_a_value_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    png_header_only(path, 12_000, 10_000)  # 1.2e8 pixels
    with pytest.raises(
        ValueError, match=r"too large to decode \(120000000 pixels\).*POINTCOC_MAX_IMAGE_PIXELS=16777216"
    ):
        pc.image_to_points(str(path))
    monkeypatch.setenv("POINTCOC_MAX_IMAGE_PIXELS", str(10**10))
    png_header_only(path, 20_000, 10_000)  # beyond PIL's own bomb limit
    with pytest.raises(ValueError, match="too large to decode"):
        pc.image_to_points(str(path))
    monkeypatch.setenv("POINTCOC_MAX_IMAGE_PIXELS", "50")
    png_header_only(path, 8, 8)
    with pytest.raises(ValueError, match="64 pixels"):
        pc.rgbd_to_points(np.zeros((8, 8, 3), np.uint8), str(path), intrinsics=(1, 1, 0, 0))


def test_sample_id_gaps_are_refused_before_allocating(monkeypatch):
    pos = torch.rand(10, 3)
    batch = torch.tensor([0] * 9 + [10**8])
    with pytest.raises(ValueError, match="ids run up to 100000000 for only 10 points.*POINTCOC_MAX_EMPTY_SAMPLES"):
        pc.ops.fps(pos, batch, 0.5)
    small_gap = torch.tensor([0] * 9 + [30])
    monkeypatch.setenv("POINTCOC_MAX_EMPTY_SAMPLES", "5")
    with pytest.raises(ValueError, match="more than 5 samples would be empty"):
        pc.ops.fps(pos, small_gap, 0.5)
    monkeypatch.setenv("POINTCOC_MAX_EMPTY_SAMPLES", "100")
    assert pc.ops.fps(pos, small_gap, 0.5).numel() == 6  # 5 of 9, 1 of 1
    monkeypatch.setenv("POINTCOC_MAX_EMPTY_SAMPLES", "lots")
    with pytest.raises(ValueError, match="POINTCOC_MAX_EMPTY_SAMPLES must be a positive integer"):
        pc.ops.fps(pos, small_gap, 0.5)


def test_k_far_above_sample_size_is_refused():
    x = torch.rand(10, 3)
    b = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="k=1000000000 exceeds"):
        pc.ops.knn(x, x, 10**9, b, b)


# ----------------------------------------------------------------------------- non-finite and absurd values
def write_split(path: Path, data: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["label"] = np.zeros(len(data), np.int64)
    return path


def test_absurd_and_non_finite_coordinates_name_file_and_object(tmp_path):
    data = np.zeros((3, 16, 3), np.float32)
    data[1, 4, 2] = 1e30
    path = write_split(tmp_path / "huge.h5", data)
    with pytest.raises(
        ValueError,
        match=rf"{path}: 'data' of object 1 has a coordinate of 1e\+30, beyond "
        r"max_abs_coordinate=10000",
    ):
        load_h5_split(path)
    assert load_h5_split(path, max_abs_coordinate=1e31)[0].shape == (3, 16, 3)
    data[1, 4, 2], data[2, 0, 0] = 0.0, np.nan
    path = write_split(tmp_path / "nan.h5", data)
    with pytest.raises(ValueError, match=f"{path}: 'data' of object 2 contains NaN or inf"):
        load_h5_split(path)


def test_rgbd_overflowing_depth_names_sample_and_pixel():
    rgb = np.zeros((2, 3, 4, 4), np.float32)
    depth = np.ones((2, 4, 4), np.float32)
    depth[1, 2, 0] = 3e38
    with pytest.raises(
        ValueError, match=r"depth of sample 1 at pixel \(2, 0\) is 3e\+38 m.*not finite in torch.float32"
    ):
        pc.rgbd_to_points(torch.from_numpy(rgb), depth, intrinsics=(0.5, 0.5, 3.0, 3.0))
    points = pc.rgbd_to_points(torch.from_numpy(rgb).double(), depth.astype(np.float64), intrinsics=(0.5, 0.5, 3, 3))
    assert bool(torch.isfinite(points.pos).all())


# ----------------------------------------------------------------------------- clear errors on bad model input
def test_model_settings_are_checked_up_front():
    with pytest.raises(TypeError, match="num_classes must be an int, got str '10'"):
        pc.create_model("coc_mini", num_classes="10")
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 2.0"):
        pc.create_model("coc_mini", drop_path_rate=2.0)
    with pytest.raises(ValueError, match=r"reducers\[1\] must be >= 1, got 0"):
        pc.create_model("pointmlp_elite", num_classes=3, points=64, reducers=(2, 0, 2, 2))


def test_model_inputs_give_clear_errors():
    torch.manual_seed(0)
    mlp = pc.create_model("pointmlp_elite", num_classes=3, points=32, k_neighbors=4)
    x = torch.rand(2, 3, 32)
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the model's weights are torch.float32"):
        mlp(x.double())
    with pytest.raises(TypeError, match="floating-point"):
        mlp((x * 10).long())
    with pytest.raises(ValueError, match="meta device"):
        mlp(x.to("meta"))
    with pytest.raises(ValueError, match="x holds 1 sample.*BatchNorm"):
        mlp(x[:1])
    assert mlp.eval()(x[:1]).shape == (1, 3)  # fine in evaluation mode
    coc = pc.create_model("coc_mini", num_classes=3, in_chans=3, pos_dim=3, mode="point")
    cloud = point_batch(torch.rand(2, 40, 3))
    with pytest.raises(TypeError, match="points.x has dtype torch.float64"):
        coc(point_batch(torch.rand(2, 40, 3, dtype=torch.float64)))
    cloud.x = cloud.x.to("meta")
    with pytest.raises(ValueError, match="meta device"):
        coc(cloud)
    with pytest.raises(ValueError, match="batch_size per process holds 1 sample"):
        Trainer(PointNetLike(), Clouds(4, 1), Clouds(1, 2), adapter=PLAIN, num_classes=3, epochs=1, batch_size=1)


def test_sample_pixels_generator_must_be_a_generator():
    points = pc.image_to_points(torch.rand(3, 4, 4))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        pc.sample_pixels(points, 0.5, generator=5)


# ----------------------------------------------------------------------------- one Trainer for any model
def run_twice(make_model, adapter, tmp_path):
    """Two epochs straight vs one epoch, kill, resume: returns both trainers."""

    def make(out):
        torch.manual_seed(0)
        return Trainer(
            make_model(),
            Clouds(4, 1),
            Clouds(2, 2),
            adapter=adapter,
            num_classes=3,
            epochs=2,
            batch_size=4,
            lr=0.01,
            optimizer="adamw",
            output_dir=out,
            progress=False,
            log=False,
        )

    straight = make(tmp_path / "a")
    straight.fit()
    killed = make(tmp_path / "b")
    killed.epochs = 1
    killed.fit()
    torch.manual_seed(5)
    resumed = make(tmp_path / "b")
    resumed.resume()
    resumed.fit()
    return straight, resumed


def test_one_trainer_trains_pointmlp_and_coc_with_bitwise_resume(tmp_path):
    def fps_start(value):
        def hook(model):
            model.fps_random_start = value

        return hook

    pointmlp = BatchAdapter(channels_first, on_train=fps_start(True), on_eval=fps_start(False))
    coc = BatchAdapter(point_batch)
    cases = [
        (lambda: pc.create_model("pointmlp_elite", num_classes=3, points=32, k_neighbors=4), pointmlp),
        (lambda: pc.create_model("coc_mini", num_classes=3, in_chans=3, pos_dim=3, mode="point"), coc),
    ]
    for i, (make_model, adapter) in enumerate(cases):
        straight, resumed = run_twice(make_model, adapter, tmp_path / str(i))
        assert_same_tensors(straight.model.state_dict(), resumed.model.state_dict())
        a, b = (
            load_checkpoint(tmp_path / str(i) / "a" / "best.pt"),
            load_checkpoint(tmp_path / str(i) / "b" / "best.pt"),
        )
        assert a["epoch"] == b["epoch"]
        assert_same_tensors(a["model"], b["model"])
    source = Path(training.__file__).read_text()
    trainer_source = source[source.index("class Trainer") :]
    assert "fps_random_start" not in trainer_source and "transpose" not in trainer_source


def test_progress_bars_only_on_a_terminal(tmp_path, capsys):
    trainer = Trainer(PointNetLike(), Clouds(4, 1), Clouds(1, 2), adapter=PLAIN, num_classes=3, epochs=2, batch_size=4)
    assert trainer.progress is False  # stderr is captured, not a terminal
    trainer.fit()
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("epoch ") and "eta" in line for line in lines)
    assert "\r" not in captured.err and "it/s" not in captured.err


# ----------------------------------------------------------------------------- example scripts
@pytest.fixture(scope="module")
def scan_example():
    return load_example("scanobjectnn")


@pytest.fixture(scope="module")
def scan_data(tmp_path_factory):
    return write_real_format(tmp_path_factory.mktemp("scan"), train_per_class=2, test_per_class=1)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_example_interrupt_message_is_truthful(scan_example, scan_data, tmp_path, monkeypatch, capsys):
    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_example.Trainer, "train_one_epoch", interrupted)
    args = ["--data-dir", str(scan_data), "--epochs", "2", *EXAMPLE_TINY, "--output", str(tmp_path / "out")]
    assert scan_example.main(args) == 130
    err = capsys.readouterr().err
    assert "this run saved no checkpoint" in err and "last.pt holds" not in err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_example_eval_only_after_kill_between_last_and_best(scan_example, scan_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    calls = kill_at_write(monkeypatch, 2)  # epoch 1 always improves: last.pt written, best.pt not
    with pytest.raises(Killed):
        scan_example.main(["--data-dir", str(scan_data), "--epochs", "2", *EXAMPLE_TINY, "--output", str(out)])
    assert calls == ["last.pt", "best.pt"] and not (out / "best.pt").exists()
    monkeypatch.undo()
    assert scan_example.main(["--eval-only", "--output", str(out), "--data-dir", str(scan_data), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert f"note: repaired {out / 'best.pt'}: restored epoch 1" in text and "(after epoch 1)" in text


def test_example_full_disk_is_one_line(scan_example, scan_data, tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, after_bytes=100)
    out = tmp_path / "out"
    assert scan_example.main(["--data-dir", str(scan_data), "--epochs", "1", *EXAMPLE_TINY, "--output", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: cannot write {out / 'last.pt'}: no space left on device"


def test_example_refuses_unwritable_output_before_training(scan_example, scan_data, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert (
        scan_example.main(
            ["--data-dir", str(scan_data), "--epochs", "1", *EXAMPLE_TINY, "--output", str(tmp_path / "file" / "out")]
        )
        == 2
    )
    line = one_error_line(capsys.readouterr().err)
    assert "is a file, not a folder" in line


def test_example_flipped_bit_and_flags(scan_example, scan_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        scan_example.main(
            ["--data-dir", str(scan_data), "--epochs", "1", *EXAMPLE_TINY, "--no-progress", "--output", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "expected duration:" in text
    weight = load_checkpoint(out / "last.pt")["model"]["classifier.0.weight"]
    flip_one_weight_bit(out / "last.pt", weight)
    assert scan_example.main(["--resume", "--output", str(out), "--data-dir", str(scan_data), "--workers", "0"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out / "last.pt") in line and "does not match its digest" in line
    help_text = scan_example.build_parser().format_help()
    assert "--no-progress" in help_text and "--max-data-bytes" in help_text


@pytest.fixture(scope="module")
def rgbd_example():
    return load_example("rgbd")


def run_rgbd(example, args, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        example.main(args)
    assert info.value.code == 2
    return one_error_line(capsys.readouterr().err)


def test_rgbd_bad_files_and_checkpoints_are_one_line(rgbd_example, tmp_path, capsys):
    small = ["--height", "12", "--width", "16", "--output", str(tmp_path / "out")]
    line = run_rgbd(
        rgbd_example,
        ["--rgb", str(tmp_path / "none.png"), "--depth", "d.png", "--fx", "1", "--fy", "1", "--cx", "0", "--cy", "0"],
        capsys,
    )
    assert "none.png" in line and "not found" in line
    (tmp_path / "junk.pt").write_bytes(b"junk")
    line = run_rgbd(rgbd_example, [*small, "--checkpoint", str(tmp_path / "junk.pt")], capsys)
    assert f"checkpoint {tmp_path / 'junk.pt'}: cannot be loaded" in line
    torch.save({"state_dict": {"head.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    line = run_rgbd(rgbd_example, [*small, "--checkpoint", str(tmp_path / "other.pt")], capsys)
    assert "does not fit coc_tiny" in line and "Missing key(s)" in line and "Unexpected key(s)" not in line
    assert "size mismatch" in line  # the full reason, not its first line only


def test_padded_knn_far_wider_than_any_sample_is_refused(monkeypatch):
    x = torch.rand(10, 3)
    with pytest.raises(
        ValueError,
        match=r"k=1000000000 exceeds every sample's size \(the largest has 10 points\)"
        r".*POINTCOC_MAX_PADDED_ENTRIES",
    ):
        pc.ops.knn_padded(x, x, 10**9)
    index, _ = pc.ops.knn_padded(x, x, 12)  # a little padding stays allowed
    assert index.shape == (10, 12) and bool((index[:, 10:] == -1).all())
    monkeypatch.setenv("POINTCOC_MAX_PADDED_ENTRIES", "100")
    with pytest.raises(ValueError, match="exceed 100 entries"):
        pc.ops.knn_padded(x, x, 12)


def test_random_sample_generator_must_be_a_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        pc.ops.random_sample(torch.zeros(5, dtype=torch.long), generator=5)
