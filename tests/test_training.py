"""The training engine (pointcoc.training) and examples/scanobjectnn.py."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pointcoc.data import ScanObjectNN, dataset_file, generate_split
from pointcoc.training import (
    METRIC_FIELDS,
    BatchAdapter,
    ShardSampler,
    Trainer,
    atomic_write,
    capture_rng_state,
    channels_first,
    confusion_matrix,
    load_checkpoint,
    mean_class_accuracy,
    overall_accuracy,
    restore_rng_state,
    smooth_cross_entropy,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "scanobjectnn.py"


def one_thread_env():
    """One thread, and this checkout's pointcoc first (not an installed copy)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def load_example():
    spec = importlib.util.spec_from_file_location("scanobjectnn_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyNet(nn.Module):
    """Stand-in classifier for engine tests: shared point MLP, max-pool, dropout, linear head."""

    def __init__(self, classes: int = 15) -> None:
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Conv1d(3, 16, 1), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 32, 1))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(32, classes))
        self.fps_random_start = False
        self.seen_modes = []

    def forward(self, x):  # x: [B, 3, n]
        self.seen_modes.append((self.training, self.fps_random_start))
        return self.head(self.point_mlp(x).amax(dim=2))


def _set_flag(value):
    def hook(model):
        model.fps_random_start = value

    return hook


ADAPTER = BatchAdapter(channels_first, on_train=_set_flag(True), on_eval=_set_flag(False))


class AxisClouds(Dataset):
    """Separable data: class c is a cloud stretched along axis c (plus small noise)."""

    def __init__(self, per_class: int, seed: int, points: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(3).repeat(per_class)
        self.points = 0.05 * torch.randn(len(self.labels), points, 3, generator=g)
        stretch = torch.linspace(-1, 1, points)[torch.randperm(points, generator=g)]
        self.points[torch.arange(len(self.labels)), :, self.labels] += stretch

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.points[i], self.labels[i]


def write_real_format(root: Path, train_per_class: int = 2, test_per_class: int = 1, points: int = 256) -> Path:
    """Small ScanObjectNN-format files (PB_T50_RS names) made from demo objects."""
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        data, label, mask = generate_split(per_class, 5, split)
        path = dataset_file(root, "PB_T50_RS", split)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f["data"] = data[:, :points]
            f["label"] = label.reshape(-1, 1)
            f["mask"] = mask[:, :points]
    return root


# ----------------------------------------------------------------------------- loss and metrics
def test_smooth_cross_entropy_matches_explicit_target_distribution():
    torch.manual_seed(0)
    logits = torch.randn(7, 5, dtype=torch.float64)
    target = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    eps = 0.2
    q = torch.full((7, 5), eps / 4, dtype=torch.float64)
    q[torch.arange(7), target] = 1 - eps
    expected = -(q * torch.log_softmax(logits, dim=1)).sum(1).mean()
    torch.testing.assert_close(smooth_cross_entropy(logits, target, eps).double(), expected, rtol=1e-6, atol=1e-7)
    # not torch's variant, which also puts eps/K on the target
    torch_variant = F.cross_entropy(logits, target, label_smoothing=eps)
    assert abs(float(torch_variant) - float(expected)) > 1e-4
    torch.testing.assert_close(smooth_cross_entropy(logits, target, 0.0).double(), F.cross_entropy(logits, target))


def test_smooth_cross_entropy_rejects_bad_input():
    with pytest.raises(ValueError, match="logits"):
        smooth_cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        smooth_cross_entropy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="smoothing"):
        smooth_cross_entropy(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), 1.0)


def test_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng = np.random.default_rng(0)
    target = rng.choice([0, 1, 2, 4, 6], size=200)  # classes 3 and 5 absent
    pred = np.where(rng.random(200) < 0.6, target, rng.integers(0, 7, size=200))
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 7)
    np.testing.assert_array_equal(conf.numpy(), sk_confusion(target, pred, labels=range(7)))
    assert overall_accuracy(conf) == pytest.approx(accuracy_score(target, pred), abs=1e-12)
    with pytest.warns(UserWarning):  # sklearn warns about the classes predicted but absent
        reference = balanced_accuracy_score(target, pred)
    assert mean_class_accuracy(conf) == pytest.approx(reference, abs=1e-12)
    assert np.isnan(overall_accuracy(torch.zeros(3, 3, dtype=torch.long)))


# ----------------------------------------------------------------------------- files and RNG
def test_atomic_writes_and_checkpoint_errors(tmp_path):
    atomic_write(tmp_path / "a" / "b.txt", "hello\n")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello\n"
    atomic_write(tmp_path / "c.pt", lambda tmp: torch.save({"x": torch.arange(3)}, tmp))
    assert torch.equal(torch.load(tmp_path / "c.pt")["x"], torch.arange(3))
    assert not list(tmp_path.rglob("*.tmp"))

    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'none.pt'}: file not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pt: cannot be loaded"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="c.pt: not a pointcoc-classification-v2 checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


def test_rng_state_round_trip():
    state = capture_rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(draws[0], again[0])
    np.testing.assert_array_equal(draws[1], again[1])
    assert draws[2:] == again[2:]


def test_shard_sampler_covers_every_item_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [len(s) for s in shards]


# ----------------------------------------------------------------------------- trainer
def test_model_learns_separable_data(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(classes=3)
    trainer = Trainer(
        model,
        AxisClouds(16, seed=1),
        AxisClouds(8, seed=2),
        adapter=ADAPTER,
        num_classes=3,
        epochs=6,
        batch_size=8,
        lr=0.05,
        seed=0,
        output_dir=tmp_path,
        progress=False,
        run_args={"note": "t"},
    )
    result = trainer.fit()
    history = trainer.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result["last"]["test_oa"] == 100.0 and result["last"]["test_macc"] == 100.0
    # training forwards run with FPS random starts, evaluation without
    assert set(model.seen_modes) == {(True, True), (False, False)}

    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRIC_FIELDS and len(rows) == 6
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["args"] == {"note": "t"} and len(summary["epochs"]) == 6
    assert summary["last"]["epoch"] == 6
    best_epoch = max(history, key=lambda r: (r["test_oa"], -r["epoch"]))["epoch"]
    assert summary["best"]["epoch"] == best_epoch == result["best"]["epoch"]
    best = load_checkpoint(tmp_path / "best.pt")
    last = load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == best_epoch and last["epoch"] == 6
    assert last["test_metrics"]["test_oa"] == history[-1]["test_oa"]
    for key, value in model.state_dict().items():
        assert torch.equal(last["model"][key], value)
    assert set(last) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "args", "history", "best"}


def test_learning_rate_follows_cosine_to_one_hundredth(tmp_path):
    trainer = Trainer(
        TinyNet(3),
        AxisClouds(4, 0),
        AxisClouds(1, 1),
        adapter=ADAPTER,
        num_classes=3,
        epochs=4,
        batch_size=4,
        lr=0.1,
        progress=False,
    )
    trainer.fit()
    lrs = [r["lr"] for r in trainer.history]
    expected = [0.001 + (0.1 - 0.001) * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_adamw_option_learns_too():
    torch.manual_seed(0)
    trainer = Trainer(
        TinyNet(3),
        AxisClouds(16, 1),
        AxisClouds(8, 2),
        adapter=ADAPTER,
        num_classes=3,
        epochs=6,
        batch_size=8,
        optimizer="adamw",
        lr=0.01,
        progress=False,
    )
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.fit()["last"]["test_oa"] == 100.0


def test_trainer_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adamw'"):
        Trainer(
            TinyNet(3), AxisClouds(4, 0), AxisClouds(1, 1), adapter=ADAPTER, num_classes=3, epochs=1, optimizer="adam"
        )
    with pytest.raises(ValueError, match="epochs"):
        Trainer(TinyNet(3), AxisClouds(4, 0), AxisClouds(1, 1), adapter=ADAPTER, num_classes=3, epochs=0)
    with pytest.raises(ValueError, match="smaller than one batch"):
        Trainer(TinyNet(3), AxisClouds(2, 0), AxisClouds(1, 1), adapter=ADAPTER, num_classes=3, epochs=1, batch_size=32)


def _scan_sets(root: Path):
    train = ScanObjectNN(root, "train", num_points=64, seed=3)
    test = ScanObjectNN(root, "test", num_points=64)
    return train, test


def _make_trainer(root: Path, out: Path) -> Trainer:
    torch.manual_seed(1)  # initialisation; overwritten by the checkpoint on resume
    train, test = _scan_sets(root)
    return Trainer(
        TinyNet(),
        train,
        test,
        adapter=ADAPTER,
        num_classes=15,
        epochs=2,
        batch_size=8,
        seed=3,
        workers=0,
        output_dir=out,
        progress=False,
    )


def test_resume_equals_uninterrupted_run(tmp_path):
    root = write_real_format(tmp_path / "data")
    straight = _make_trainer(root, tmp_path / "a")
    straight.fit()

    interrupted = _make_trainer(root, tmp_path / "b")
    real_epoch = interrupted.train_one_epoch

    def stop_in_second_epoch(epoch):
        if epoch == 1:
            torch.rand(5)  # RNG used after the checkpoint must not matter
            raise KeyboardInterrupt
        return real_epoch(epoch)

    interrupted.train_one_epoch = stop_in_second_epoch
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1

    torch.manual_seed(123)  # a different process state before resuming
    np.random.seed(9)
    resumed = _make_trainer(root, tmp_path / "b")
    resumed.load_state_dict(load_checkpoint(tmp_path / "b" / "last.pt"))
    resumed.fit()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in opt_a:
        assert torch.equal(opt_a[key]["momentum_buffer"], opt_b[key]["momentum_buffer"])
    drop = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert drop(straight.history) == drop(resumed.history)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["epochs"][1]["epoch"] == 2


# ----------------------------------------------------------------------------- the example
EXAMPLE_TINY = [
    "--model",
    "pointmlp_elite",
    "--num-points",
    "192",
    "--batch-size",
    "16",
    "--workers",
    "0",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_real_format(tmp_path_factory.mktemp("scan"), train_per_class=2, test_per_class=1)


def test_example_resume_and_eval_only(example, tiny_data, tmp_path, monkeypatch, capsys):
    common = ["--data-dir", str(tiny_data), "--epochs", "2", *EXAMPLE_TINY]
    assert example.main([*common, "--output", str(tmp_path / "straight")]) == 0
    out = capsys.readouterr().out
    assert "last epoch (2): test OA" in out and "best epoch (" in out and "time:" in out

    real_epoch = example.Trainer.train_one_epoch

    def killed_in_epoch_two(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(example.Trainer, "train_one_epoch", killed_in_epoch_two)
    assert example.main([*common, "--output", str(tmp_path / "killed")]) == 130
    assert "re-run with --resume" in capsys.readouterr().err
    monkeypatch.setattr(example.Trainer, "train_one_epoch", real_epoch)
    assert (
        example.main(
            [
                "--resume",
                "--data-dir",
                str(tiny_data),
                "--output",
                str(tmp_path / "killed"),
                "--workers",
                "0",
                "--lr",
                "0.5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "note: ignoring --lr 0.5" in out and "resuming from" in out

    a = torch.load(tmp_path / "straight" / "last.pt")
    b = torch.load(tmp_path / "killed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    best = torch.load(tmp_path / "straight" / "best.pt")
    assert (
        example.main(
            [
                "--eval-only",
                "--checkpoint",
                str(tmp_path / "straight" / "best.pt"),
                "--data-dir",
                str(tiny_data),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "straight" / "eval.json").read_text())
    stored = best["test_metrics"]
    assert result["checkpoint_epoch"] == best["epoch"]
    assert result["test_oa"] == stored["test_oa"] and result["test_macc"] == stored["test_macc"]
    assert result["test_loss"] == pytest.approx(stored["test_loss"], rel=1e-5)
    assert "stored with the checkpoint" in capsys.readouterr().out


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


def _drop_label(path: Path) -> None:
    with h5py.File(path, "a") as f:
        del f["label"]


def _reshape_data(path: Path) -> None:
    with h5py.File(path, "a") as f:
        data = f["data"][()]
        del f["data"]
        f["data"] = data.reshape(len(data), -1)


@pytest.mark.parametrize(
    "damage, what",
    [
        (_truncate, "cannot be read as HDF5"),
        (_drop_label, "missing dataset 'label'"),
        (_reshape_data, "'data' must have shape [S, P, 3]"),
    ],
)
def test_example_reports_bad_file_in_one_line(example, tmp_path, damage, what, capsys):
    root = write_real_format(tmp_path / "data", train_per_class=1, test_per_class=1)
    bad = dataset_file(root, "PB_T50_RS", "test")
    damage(bad)
    assert (
        example.main(["--data-dir", str(root), "--epochs", "1", *EXAMPLE_TINY, "--output", str(tmp_path / "out")]) == 2
    )
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: ScanObjectNN file {bad}: ")
    assert what in lines[0] and "Traceback" not in err


def test_example_missing_file_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--data-dir", str(tmp_path), "--epochs", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=one_thread_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    expected = dataset_file(tmp_path, "PB_T50_RS", "train")
    assert len(lines) == 1 and lines[0].startswith(f"error: ScanObjectNN file {expected}: file not found")
    assert "Traceback" not in proc.stderr


def test_example_falls_back_to_demo_only_without_real_files(example, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(example, "REAL_ROOT", tmp_path / "absent")
    settings = example._resolve(example.build_parser().parse_args([]), None, print)
    line = capsys.readouterr().out.strip()
    assert settings["demo"] and settings["model"] == example.DEMO["model"]
    assert settings["num_points"] == example.DEMO["num_points"] and settings["epochs"] == example.DEMO["epochs"]
    assert line.startswith("ScanObjectNN not found: put its h5_files folder in ") and "\n" not in line
    assert "demo" in line

    write_real_format(tmp_path / "absent", train_per_class=1, test_per_class=1)
    settings = example._resolve(example.build_parser().parse_args([]), None, print)
    assert not settings["demo"] and capsys.readouterr().out == ""
    assert {k: settings[k] for k in example.RECIPE} == example.RECIPE
    assert settings["variant"] == "PB_T50_RS"
    settings = example._resolve(example.build_parser().parse_args(["--demo", "--epochs", "3"]), None, print)
    assert settings["demo"] and settings["epochs"] == 3


def test_example_help_explains_every_flag(example):
    text = example.build_parser().format_help()
    for flag in (
        "--model",
        "--data-dir",
        "--variant",
        "--epochs",
        "--optimizer",
        "--batch-size",
        "--lr",
        "--weight-decay",
        "--num-points",
        "--seed",
        "--workers",
        "--device",
        "--amp",
        "--output",
        "--resume",
        "--eval-only",
        "--checkpoint",
        "--demo",
    ):
        assert flag in text
    assert "250 epochs" in text  # the stated default on real data
    helps = [a.help for a in example.build_parser()._actions]
    assert all(h and len(h) > 15 for h in helps)


def test_torchrun_two_processes_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(EXAMPLE),
            "--data-dir",
            str(tiny_data),
            "--epochs",
            "1",
            *EXAMPLE_TINY,
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=one_thread_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch   1 | train loss") == 1  # only rank 0 prints
    assert "x 2 process(es)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.csv", "metrics.json"]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    ckpt = load_checkpoint(out / "last.pt")
    assert len(ckpt["rng"]) == 2  # both ranks' RNG states, for an exact resume
