"""examples/scanobjectnn.py with a CoC backbone in point mode: same trainer, resume and eval-only as PointMLP."""

from __future__ import annotations

import pytest
import torch

from tests.test_training import load_example, write_real_format

COC_TINY = [
    "--model",
    "coc_mini",
    "--num-points",
    "96",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_real_format(tmp_path_factory.mktemp("scan_coc"), train_per_class=1, test_per_class=1, points=128)


def test_build_model_picks_the_family_and_its_input(example):
    settings = dict(model="coc_mini", num_points=64, model_kwargs={})
    model, adapter = example.build_model(settings)
    assert adapter is example.COC_ADAPTER and model.pos_dim == 3 and model.in_chans == 3 and model.mode == "point"
    clouds = torch.rand(2, 64, 3)
    points = adapter.to_input(clouds)
    assert torch.equal(points.pos, clouds.reshape(-1, 3)) and torch.equal(points.x, points.pos)
    assert model(points).shape == (2, 15)
    settings = dict(model="pointmlp_elite", num_points=64, model_kwargs={"k_neighbors": 8})
    model, adapter = example.build_model(settings)
    assert adapter is example.POINTMLP_ADAPTER and adapter.to_input(clouds).shape == (2, 3, 64)


def test_coc_trains_resumes_bitwise_and_evaluates(example, tiny_data, tmp_path, monkeypatch, capsys):
    common = ["--data-dir", str(tiny_data), "--epochs", "2", *COC_TINY]
    assert example.main([*common, "--output", str(tmp_path / "straight")]) == 0
    out = capsys.readouterr().out
    assert "model coc_mini" in out and "last epoch (2): test OA" in out

    real_epoch = example.Trainer.train_one_epoch

    def killed_in_epoch_two(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(example.Trainer, "train_one_epoch", killed_in_epoch_two)
    assert example.main([*common, "--output", str(tmp_path / "killed")]) == 130
    monkeypatch.setattr(example.Trainer, "train_one_epoch", real_epoch)
    assert (
        example.main(["--resume", "--data-dir", str(tiny_data), "--output", str(tmp_path / "killed"), "--no-progress"])
        == 0
    )
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["args"]["model"] == "coc_mini" and a["args"]["model_kwargs"] == {}
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    capsys.readouterr()
    assert (
        example.main(
            [
                "--eval-only",
                "--checkpoint",
                str(tmp_path / "straight" / "last.pt"),
                "--data-dir",
                str(tiny_data),
                "--no-progress",
            ]
        )
        == 0
    )
    assert f"OA {a['test_metrics']['test_oa']:.2f}%" in capsys.readouterr().out  # evaluated now == stored
