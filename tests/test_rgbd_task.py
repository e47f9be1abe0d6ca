"""examples/rgbd.py --train: the four inputs of a frame, and the task in its quick mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pointcoc.data.rgbd_frames import generate_frames
from tests.helpers import load_example


@pytest.fixture(scope="module")
def rgbd():
    return load_example("rgbd")


@pytest.fixture(scope="module")
def frames():
    return generate_frames(1, seed=3, split="test", height=10, width=12)


def test_four_inputs_of_a_frame(rgbd, frames):
    rgb, depth, _ = rgbd.frames_as_tensors(frames)
    rgb, depth = rgb[:2], depth[:2]
    fx, fy, cx, cy = frames.intrinsics
    valid = depth > 0
    image = rgbd.frame_points(rgb, depth, frames.intrinsics, "rgb")
    assert image.pos.shape == (2 * 120, 2) and torch.equal(image.x, rgb.permute(0, 2, 3, 1).reshape(-1, 3))
    uvd = rgbd.frame_points(rgb, depth, frames.intrinsics, "rgbd")
    assert uvd.x.shape == (int(valid.sum()), 4)
    assert torch.equal(uvd.x[:, 3], depth[valid]) and torch.equal(uvd.x[:, :3], rgb.permute(0, 2, 3, 1)[valid])
    for kind, channels in (("xyz_rgb", 3), ("xyz", 1)):
        cloud = rgbd.frame_points(rgb, depth, frames.intrinsics, kind)
        assert cloud.pos.shape == (int(valid.sum()), 3) and cloud.x.shape == (int(valid.sum()), channels)
        b, v, u = valid.nonzero().unbind(1)
        z = depth[valid].double()
        xyz = torch.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], 1)
        for s in range(2):  # camera-frame back-projection, shifted to each cloud's centroid
            own = xyz[b == s]
            torch.testing.assert_close(cloud.pos[cloud.batch == s].double(), own - own.mean(0), atol=1e-5, rtol=0)
    assert torch.equal(rgbd.frame_points(rgb, depth, frames.intrinsics, "xyz").x, torch.ones(int(valid.sum()), 1))
    with pytest.raises(ValueError, match="kind"):
        rgbd.frame_points(rgb, depth, frames.intrinsics, "depth")


def test_quick_training_is_deterministic_and_learns(rgbd, tmp_path):
    argv = ["--train", "--quick", "--no-progress", "--inputs", "rgbd", "xyz_rgb"]
    first = rgbd.main(argv + ["--output", str(tmp_path / "a")])
    second = rgbd.main(argv + ["--output", str(tmp_path / "b")])
    assert first["results"].keys() == {"rgbd", "xyz_rgb"}
    for kind in ("rgbd", "xyz_rgb"):
        a, b = first["results"][kind], second["results"][kind]
        assert (a["oa"], a["macc"], a["train_oa"]) == (b["oa"], b["macc"], b["train_oa"])  # same seed, same run
        weights_a = torch.load(tmp_path / "a" / f"{kind}.pt", weights_only=True)["state_dict"]
        weights_b = torch.load(tmp_path / "b" / f"{kind}.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
        assert a["train_oa"] > 2 / 15  # learns: twice chance on its training frames
    stored = json.loads((tmp_path / "a" / "results.json").read_text())
    assert stored["results"]["rgbd"]["oa"] == first["results"]["rgbd"]["oa"]
    picture = np.array(Image.open(tmp_path / "a" / "clusters.png"))
    assert picture.shape == (260, 720, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 4
