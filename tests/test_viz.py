"""pointcoc.viz and examples/visualize_clusters.py: recorded assignments, clustering maps, point-cloud pictures."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch_geometric.data import Batch

import pointcoc as pc
from pointcoc import viz
from tests.helpers import DEVICES, load_example


def brute_force_ids(model, points, stage: int, block: int, head: int) -> torch.Tensor:
    """Expected sample-local cluster id of every input point, computed without pointcoc.viz."""
    with torch.no_grad():
        record = model.forward_intermediates(points)[stage]
    geo, assignment = record.geometry, record.assignments[block][:, head]
    config = model.config
    per_sample = config.regions[stage] ** 2 * config.centres[stage] ** 2  # lattice mode: regions^2 tiles
    local = assignment - geo.batch * per_sample
    diff = points.pos[:, None, :] - geo.pos[None, :, :]
    d = diff[..., 0] ** 2
    for axis in range(1, diff.size(-1)):  # coordinate by coordinate, in the positions' dtype (as pc.ops.knn)
        d = d + diff[..., axis] ** 2
    d[points.batch[:, None] != geo.batch[None, :]] = float("inf")
    return local[d.argmin(1)]  # first minimum: ties go to the lower stage point


def colours_to_ids(image: np.ndarray, n: int) -> np.ndarray:
    lookup = {tuple(c): i for i, c in enumerate(viz.palette(n).tolist())}
    lookup[viz.BACKGROUND] = -1
    return np.array([lookup[tuple(c)] for c in image.reshape(-1, 3).tolist()]).reshape(image.shape[:2])


# ----------------------------------------------------------------------------------------------
# palette, save_png, head_grid
# ----------------------------------------------------------------------------------------------
def test_palette_distinct_stable_and_never_background():
    colours = viz.palette(3000)
    assert colours.dtype == np.uint8 and colours.shape == (3000, 3)
    assert len({tuple(c) for c in colours.tolist()}) == 3000
    assert viz.BACKGROUND not in {tuple(c) for c in colours.tolist()}
    np.testing.assert_array_equal(viz.palette(17), colours[:17])
    with pytest.raises(ValueError, match="n"):
        viz.palette(-1)


def test_save_png_roundtrip_atomic(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = viz.save_png(image, tmp_path / "sub" / "a.png")
    np.testing.assert_array_equal(np.array(Image.open(path)), image)
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="image"):
        viz.save_png(image.astype(np.float32), tmp_path / "b.png")


def test_head_grid_layout():
    maps = [np.full((2, 3, 3), i, dtype=np.uint8) for i in range(3)]
    grid = viz.head_grid(maps, columns=2, gap=1, gap_colour=(9, 9, 9))
    assert grid.shape == (5, 7, 3)
    assert (grid[0:2, 0:3] == 0).all() and (grid[0:2, 4:7] == 1).all() and (grid[3:5, 0:3] == 2).all()
    assert (grid[2] == 9).all() and (grid[:, 3] == 9).all() and (grid[3:5, 4:7] == 9).all()
    with pytest.raises(ValueError, match="maps"):
        viz.head_grid([maps[0], np.zeros((3, 3, 3), np.uint8)])


# ----------------------------------------------------------------------------------------------
# record_assignments / point_clusters / cluster_map
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_record_assignments_restores_model_state(device):
    torch.manual_seed(0)
    model = pc.create_model("coc_tiny", num_classes=3).to(device).train()
    points = pc.image_to_points(torch.rand(2, 3, 20, 24, device=device))
    record = viz.record_assignments(model, points, stage=1, block=2)
    assert model.training
    assert record.assignment.shape == (2 * 3 * 3, 4)  # 20x24 -> stem 5x6 -> stage 1: 3x3 per sample
    assert record.regions == 16 and record.centres_per_region == 4
    assert int(record.assignment.min()) >= 0 and int(record.assignment.max()) < record.clusters_per_sample
    with pytest.raises(ValueError, match="stage"):
        viz.record_assignments(model, points, stage=4)
    with pytest.raises(ValueError, match="block"):
        viz.record_assignments(model, points, stage=0, block=3)
    with pytest.raises(TypeError, match="model"):
        viz.record_assignments(torch.nn.Linear(2, 2), points)


@pytest.mark.parametrize("stage", [0, 1])
def test_point_clusters_match_brute_force_on_ragged_batch(stage):
    torch.manual_seed(1)
    model = pc.create_model("coc_mini", num_classes=3).double().eval()
    images = [torch.rand(3, 20, 20, dtype=torch.float64), torch.rand(3, 31, 17, dtype=torch.float64)]
    points = pc.image_to_points(images)
    record = viz.record_assignments(model, points, stage=stage, block=1)
    per_head = [viz.point_clusters(record, points, head) for head in range(record.heads)]
    for head in range(record.heads):
        assert torch.equal(per_head[head], brute_force_ids(model, points, stage, 1, head))
    assert not torch.equal(per_head[0], per_head[1])  # the heads cluster differently: the head matters
    assert per_head[0].unique().numel() >= 4


def test_cluster_map_png_of_17x23_image_equals_recorded_assignment(tmp_path):
    """The CLI's map is a 17x23 PNG whose colours decode to exactly the recorded assignment."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    cli = load_example("visualize_clusters")
    out = cli.main(
        [
            "--image",
            str(tmp_path / "in.png"),
            "--model",
            "coc_mini",
            "--stage",
            "0",
            "--block",
            "1",
            "--head",
            "1",
            "--out",
            str(tmp_path / "map.png"),
        ]
    )
    image = np.array(Image.open(out))
    assert image.shape == (17, 23, 3)
    torch.manual_seed(0)  # the CLI's default seed: the same untrained weights
    model = pc.create_model("coc_mini", num_classes=1000).eval()
    points = pc.image_to_points(np.array(Image.open(tmp_path / "in.png")))
    expected = brute_force_ids(model, points, 0, 1, 1).view(17, 23).numpy()
    assert np.array_equal(colours_to_ids(image, 2 * 2 * 4), expected)  # 2x2 regions, 4 centres each
    assert not np.array_equal(expected, brute_force_ids(model, points, 0, 1, 0).view(17, 23).numpy())


@pytest.mark.parametrize("mode", ["point", "lattice"])
@pytest.mark.parametrize("kind", ["masked", "discrete"])
def test_cluster_map_absent_pixels_are_background(kind, mode):
    torch.manual_seed(2)
    image = torch.rand(3, 19, 26, dtype=torch.float64)
    if kind == "masked":
        mask = torch.ones(19, 26, dtype=torch.bool)
        mask[3:11, 5:20] = False
        points = pc.image_to_points(image, mask=mask)
    else:
        points = pc.sample_pixels(pc.image_to_points(image), 0.3, generator=torch.Generator().manual_seed(0))
        mask = torch.zeros(19, 26, dtype=torch.bool)
        mask[points.pixel[:, 0], points.pixel[:, 1]] = True
    model = pc.create_model("coc_mini", num_classes=3, mode=mode).double().eval()
    record = viz.record_assignments(model, points, stage=0)
    ids = colours_to_ids(viz.cluster_map(record, points, head=1), record.clusters_per_sample)
    expected = np.full((19, 26), -1)
    expected[points.pixel[:, 0].numpy(), points.pixel[:, 1].numpy()] = viz.point_clusters(record, points, 1).numpy()
    assert np.array_equal(ids, expected)
    assert ((ids == -1) == ~mask.numpy()).all()


def test_cluster_map_alpha_blends_over_input():
    image = torch.rand(1, 9, 11, dtype=torch.float64)
    points = pc.image_to_points(image)
    model = pc.create_model("coc_tiny", num_classes=3, in_chans=1).double()
    record = viz.record_assignments(model, points)
    pure = viz.cluster_map(record, points).astype(np.float64)
    gray = np.repeat(image[0].float().numpy()[:, :, None] * np.float32(255.0), 3, axis=2)  # as viz: float32 colours
    np.testing.assert_array_equal(
        viz.cluster_map(record, points, alpha=0.25), np.rint(0.25 * pure + 0.75 * gray).astype(np.uint8)
    )
    np.testing.assert_array_equal(viz.cluster_map(record, points, alpha=0.0), np.rint(gray).astype(np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        viz.cluster_map(record, points, alpha=1.5)
    with pytest.raises(ValueError, match="head"):
        viz.cluster_map(record, points, head=4)


def test_cli_all_heads_and_checkpoint(tmp_path):
    """--all-heads tiles one map per head (2 x 2); --checkpoint loads weights through convert_official_state_dict."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    torch.manual_seed(7)
    model = pc.create_model("coc_mini", num_classes=5).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ckpt.pth")
    cli = load_example("visualize_clusters")
    out = cli.main(
        [
            "--model",
            "coc_mini",
            "--image",
            str(tmp_path / "in.png"),
            "--checkpoint",
            str(tmp_path / "ckpt.pth"),
            "--stage",
            "1",
            "--all-heads",
            "--out",
            str(tmp_path / "heads.png"),
        ]
    )
    tiled = np.array(Image.open(out))
    assert tiled.shape == (2 * 21 + 2, 2 * 13 + 2, 3)  # 4 heads as 2 x 2, 2-pixel gaps
    points = pc.image_to_points(np.array(Image.open(tmp_path / "in.png")))
    record = viz.record_assignments(model, points, stage=1)
    maps = [viz.cluster_map(record, points, head=h) for h in range(4)]
    for h in range(4):
        r, c = divmod(h, 2)
        np.testing.assert_array_equal(tiled[23 * r : 23 * r + 21, 15 * c : 15 * c + 13], maps[h])
    assert any(not np.array_equal(maps[0], m) for m in maps[1:])


def test_cli_with_input_all_heads_fills_the_canvas(tmp_path):
    """--with-input --all-heads: the input then 4 heads, in one row of 5 tiles (no empty tile)."""
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (15, 11, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    cli = load_example("visualize_clusters")
    out = cli.main(
        [
            "--model",
            "coc_mini",
            "--image",
            str(tmp_path / "in.png"),
            "--stage",
            "1",
            "--all-heads",
            "--with-input",
            "--out",
            str(tmp_path / "heads.png"),
        ]
    )
    tiled = np.array(Image.open(out))
    assert tiled.shape == (15, 5 * 11 + 4 * 2, 3)
    np.testing.assert_array_equal(tiled[:, :11], np.array(Image.open(tmp_path / "in.png")))
    torch.manual_seed(0)  # the CLI's default seed
    model = pc.create_model("coc_mini", num_classes=1000).eval()
    points = pc.image_to_points(np.array(Image.open(tmp_path / "in.png")))
    record = viz.record_assignments(model, points, stage=1)
    for h in range(4):
        np.testing.assert_array_equal(tiled[:, 13 * (h + 1) : 13 * (h + 1) + 11], viz.cluster_map(record, points, h))


@pytest.mark.parametrize(
    "n, columns",
    [(1, 1), (2, 2), (3, 3), (4, 2), (5, 5), (6, 3), (7, 4), (8, 4), (9, 3), (12, 4), (13, 7), (16, 4), (17, 6)],
)
def test_tile_columns(n, columns):
    assert viz.tile_columns(n) == columns
    assert viz.head_grid([np.zeros((1, 1, 3), np.uint8)] * n, gap=0).shape[1] == columns


def test_tile_columns_rejects_non_positive():
    with pytest.raises(ValueError, match="n"):
        viz.tile_columns(0)


# ----------------------------------------------------------------------------------------------
# the CLI's one-line errors (exit status 2)
# ----------------------------------------------------------------------------------------------
def _cli_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        load_example("visualize_clusters").main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.fixture
def small_image(tmp_path):
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    return tmp_path / "in.png"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--stage", "3"], "--stage must be in [0, 3)"),
        (["--stage", "-1"], "--stage must be in [0, 3)"),
        (["--block", "2"], "block must be in [0, 2)"),
        (["--head", "2"], "--head must be in [0, 2)"),
        (["--alpha", "2"], "--alpha"),
        (["--keep", "0"], "--keep"),
        (["--model", "resnet"], "--model 'resnet'"),
    ],
)
def test_cli_out_of_range_arguments(capsys, tmp_path, small_image, args, expected):
    err = _cli_error(
        capsys, ["--model", "coc_mini", "--image", str(small_image), "--out", str(tmp_path / "m.png")] + args
    )
    assert expected in err
    assert not (tmp_path / "m.png").exists()


def test_cli_bad_files(capsys, tmp_path, small_image):
    out = ["--out", str(tmp_path / "m.png"), "--model", "coc_mini"]
    assert "--image" in _cli_error(capsys, ["--image", str(tmp_path / "missing.png")] + out)
    (tmp_path / "notes.png").write_text("not an image")
    assert "not a readable image" in _cli_error(capsys, ["--image", str(tmp_path / "notes.png")] + out)
    assert "--mask" in _cli_error(capsys, ["--image", str(small_image), "--mask", str(tmp_path / "notes.png")] + out)
    assert "--points" in _cli_error(capsys, ["--points", str(tmp_path / "missing.ply")] + out)
    (tmp_path / "bad.txt").write_text("1 2\n3 4\n")
    assert "x y z" in _cli_error(capsys, ["--points", str(tmp_path / "bad.txt")] + out)


def test_cli_bad_checkpoints(capsys, tmp_path, small_image):
    out = ["--image", str(small_image), "--out", str(tmp_path / "m.png"), "--model", "coc_mini"]
    assert "no such file" in _cli_error(capsys, ["--checkpoint", str(tmp_path / "missing.pth")] + out)
    (tmp_path / "junk.pth").write_bytes(b"\x00junk" * 10)
    assert "not a coc_mini checkpoint" in _cli_error(capsys, ["--checkpoint", str(tmp_path / "junk.pth")] + out)
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pth")
    assert "not a coc_mini checkpoint" in _cli_error(capsys, ["--checkpoint", str(tmp_path / "list.pth")] + out)
    torch.save(pc.create_model("coc_tiny", num_classes=3).state_dict(), tmp_path / "tiny.pth")
    assert "do not fit coc_mini" in _cli_error(capsys, ["--checkpoint", str(tmp_path / "tiny.pth")] + out)
    assert not (tmp_path / "m.png").exists()


# ----------------------------------------------------------------------------------------------
# depth preview
# ----------------------------------------------------------------------------------------------
def test_depth_preview_colours_valid_depth_and_blacks_out_the_rest(tmp_path):
    depth = np.array([[0, 1000, 2000], [3000, 4000, 65535]], dtype=np.uint16)
    preview = viz.depth_preview(depth, low=0, high=75)  # the 75th percentile of the valid values is 4000
    assert preview.dtype == np.uint8 and preview.shape == (2, 3, 3)
    assert tuple(preview[0, 0]) == viz.BACKGROUND
    valid = preview.reshape(-1, 3)[1:]
    assert (valid.max(1) > 0).all()  # no valid depth is drawn black
    brightness = valid.astype(int).sum(1)
    assert (np.diff(brightness[:4]) < 0).all()  # nearer is brighter, monotone
    assert tuple(preview[1, 2]) == tuple(preview[1, 1])  # beyond the high percentile: clipped to the far end
    Image.fromarray(depth).save(tmp_path / "depth.png")
    np.testing.assert_array_equal(viz.depth_preview(tmp_path / "depth.png", low=0, high=75), preview)
    np.testing.assert_array_equal(
        viz.depth_preview(torch.tensor(depth.astype(np.float32))[None], low=0, high=75), preview
    )


def test_depth_preview_edge_cases():
    flat = viz.depth_preview(np.full((2, 2), 1.5))
    assert (flat == flat[0, 0]).all() and flat[0, 0].max() > 0  # one depth: the nearest colour
    holes = viz.depth_preview(np.array([[np.nan, np.inf], [-1.0, 0.0]]))
    assert (holes == 0).all()
    with pytest.raises(ValueError, match="depth"):
        viz.depth_preview(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="low and high"):
        viz.depth_preview(np.ones((2, 2)), low=50, high=10)


# ----------------------------------------------------------------------------------------------
# point clouds: pictures and PLY
# ----------------------------------------------------------------------------------------------
def test_pil_renderer_nearest_point_wins():
    pos = np.array([[0.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 1.0], [-1.0, 0.0, -1.0]])
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], dtype=np.uint8)
    image, backend = viz.point_cloud_image(
        pos, colours, size=(41, 41), elev=0.0, azim=-90.0, point_size=1, backend="pil"
    )
    assert backend == "pil" and image.shape == (41, 41, 3)
    # looking along +y (azim -90): points 0 and 1 share a pixel; 1 (y = -1) is nearer the viewer
    centre = image[20, 20]
    assert tuple(centre) == (0, 255, 0)
    assert {tuple(c) for c in image.reshape(-1, 3).tolist()} == {(255, 255, 255), (0, 255, 0), (0, 0, 255), (9, 9, 9)}


def test_render_point_cloud_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    pos = np.random.default_rng(0).normal(size=(200, 3))
    colours = viz.palette(200)
    assert viz.render_point_cloud(pos, colours, tmp_path / "c.png", size=(320, 240)) == "matplotlib"
    assert Image.open(tmp_path / "c.png").size == (320, 240)


def test_ply_roundtrip_and_errors(tmp_path):
    pos = np.random.default_rng(0).normal(size=(50, 3)).round(6)
    colours = np.random.default_rng(1).integers(0, 256, (50, 3), dtype=np.uint8)
    viz.write_ply(tmp_path / "a.ply", pos, colours)
    back, back_colours = viz.read_ply(tmp_path / "a.ply")
    np.testing.assert_allclose(back, pos, atol=1e-6)
    np.testing.assert_array_equal(back_colours, colours)
    viz.write_ply(tmp_path / "b.ply", torch.tensor(pos))
    assert viz.read_ply(tmp_path / "b.ply")[1] is None
    (tmp_path / "c.ply").write_text("ply\nformat binary_little_endian 1.0\nend_header\n")
    with pytest.raises(ValueError, match="ASCII"):
        viz.read_ply(tmp_path / "c.ply")
    (tmp_path / "d.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
        "property float z\nend_header\n0 0 0\n1 1 1\n"
    )
    with pytest.raises(ValueError, match="3 vertices"):
        viz.read_ply(tmp_path / "d.ply")


def test_point_cloud_clusters_and_cli(tmp_path):
    torch.manual_seed(0)
    xyz = torch.randn(600, 3)
    cloud = Batch(x=torch.rand(600, 3), pos=xyz, batch=torch.zeros(600, dtype=torch.long))
    model = pc.create_model("coc_tiny", num_classes=0, pos_dim=3, mode="point")
    record = viz.record_assignments(model, cloud, stage=1)
    colours = viz.cluster_colours(record, cloud, head=3)
    ids = viz.point_clusters(record, cloud, head=3)
    np.testing.assert_array_equal(colours, viz.palette(record.clusters_per_sample)[ids.numpy()])
    viz.write_ply(tmp_path / "cloud.ply", xyz, (cloud.x * 255).round().to(torch.uint8).numpy())
    cli = load_example("visualize_clusters")
    out = cli.main(["--points", str(tmp_path / "cloud.ply"), "--stage", "1", "--out", str(tmp_path / "cloud.png")])
    assert Image.open(out).size == (480, 400)
