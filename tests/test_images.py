"""Images as point sets: round trips, any image size, masked images as sparse lattices, the examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pointcoc as pc
from pointcoc import viz
from pointcoc.models.coc import as_point_batch
from pointcoc.nn.cluster_plan import make_plan
from tests.helpers import DEVICES, load_example


# ----------------------------------------------------------------------------------------------
# image_to_points -> points_to_image
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_odd_and_ragged_sizes(device):
    a = torch.rand(3, 17, 23, device=device)
    torch.testing.assert_close(
        pc.points_to_image(pc.image_to_points(a).x, pc.image_to_points(a)), a[None], rtol=0, atol=0
    )
    b, c = torch.rand(3, 20, 20, device=device), torch.rand(3, 31, 17, device=device)
    pts = pc.image_to_points([b, c])
    canvas = pc.points_to_image(pts.x, pts, fill_value=-1.0)
    assert canvas.shape == (2, 3, 31, 20)
    assert torch.equal(canvas[0, :, :20, :20], b) and torch.equal(canvas[1, :, :31, :17], c)
    assert (canvas[0, :, 20:] == -1).all() and (canvas[1, :, :, 17:] == -1).all()


def test_round_trip_masked_and_discrete():
    image = torch.rand(2, 1, 13, 9, dtype=torch.float64)
    mask = torch.rand(2, 13, 9) > 0.4
    masked = pc.image_to_points(image, mask=mask)
    back = pc.points_to_image(masked.x, masked, fill_value=float("nan"))
    assert torch.equal(back.isnan()[:, 0], ~mask)
    assert torch.equal(back[:, 0][mask], image[:, 0][mask])
    discrete = pc.sample_pixels(pc.image_to_points(image), 0.3, generator=torch.Generator().manual_seed(0))
    back = pc.points_to_image(discrete.x, discrete, fill_value=float("nan"))
    kept = ~back.isnan()
    assert int(kept.sum()) == 2 * math.ceil(0.3 * 13 * 9)
    assert torch.equal(back[kept], image[kept])


# ----------------------------------------------------------------------------------------------
# any image size, ragged batches
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["auto", "point"])
def test_model_runs_on_17x23_and_ragged_batch(mode):
    torch.manual_seed(0)
    model = pc.create_model("coc_tiny", num_classes=4, mode=mode).double().eval()
    assert model(pc.image_to_points(torch.rand(3, 17, 23, dtype=torch.float64))).shape == (1, 4)
    images = [torch.rand(3, 20, 20, dtype=torch.float64), torch.rand(3, 31, 17, dtype=torch.float64)]
    both = model(pc.image_to_points(images))
    for i, image in enumerate(images):
        torch.testing.assert_close(both[i], model(pc.image_to_points(image))[0], rtol=0, atol=1e-10)


def test_masked_ragged_batch_equals_each_alone_in_lattice_mode():
    torch.manual_seed(1)
    model = pc.create_model("coc_mini", num_classes=3, in_chans=1, mode="lattice").double().eval()
    images = [torch.rand(1, 16, 16, dtype=torch.float64), torch.rand(1, 19, 13, dtype=torch.float64)]
    masks = [torch.rand(16, 16) > 0.5, torch.ones(19, 13, dtype=torch.bool)]
    masks[1][4:12, 3:9] = False
    both = model(pc.image_to_points(images, mask=masks))
    for i in range(2):
        torch.testing.assert_close(both[i], model(pc.image_to_points(images[i], mask=masks[i]))[0], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# image points with holes in grid mode: sparse convolutions, no empty centres
# ----------------------------------------------------------------------------------------------
def test_stem_on_masked_image_is_a_sparse_convolution():
    """Anchors whose 4x4 window holds no point are absent; the others equal a convolution of the
    [pixels, positions] image in which absent pixels are zero in every channel, divided by the
    share of the window's pixels present (partial convolution), plus the bias."""
    torch.manual_seed(2)
    model = pc.create_model("coc_tiny", num_classes=3, mode="lattice").double()
    image = torch.rand(3, 24, 28, dtype=torch.float64)
    mask = torch.ones(24, 28, dtype=torch.bool)
    mask[2:15, 5:23] = False  # covers the windows of stem anchors rows 1..2, cols 2..4 entirely
    points = pc.image_to_points(image, mask=mask)
    x, geo = as_point_batch(points)
    out, anchors = model.patch_embed(torch.cat([x, geo.pos], 1), geo, "lattice")
    dense = pc.reference.models.add_position_channels(image[None]) * mask  # [1, 5, 24, 28], zero where absent
    coverage = F.avg_pool2d(mask[None, None].double(), 4, 4)[0]  # [1, 6, 7]
    conv = F.conv2d(dense, model.patch_embed.proj.weight, stride=4)[0] / coverage.clamp(min=1 / 16)
    conv = conv + model.patch_embed.proj.bias[:, None, None]  # [32, 6, 7]
    occupied = coverage[0] > 0
    assert coverage[0, 0, 1] == 0.625 and coverage[0, 3, 2] == 0.25  # windows cut by the hole
    expected_pixels = occupied.nonzero()
    assert torch.equal(anchors.pixel, expected_pixels)
    assert not occupied[1:3, 2:5].any() and int(occupied.sum()) == 6 * 7 - 6
    torch.testing.assert_close(out, conv[:, expected_pixels[:, 0], expected_pixels[:, 1]].T, rtol=0, atol=1e-12)


def test_grid_centres_with_an_empty_bin_proposes_no_centre():
    pixel = torch.tensor([[r, c] for r in range(4) for c in range(4) if not (r >= 2 and c >= 2)])  # bin 3 empty
    pos = pixel.double() / 3 - 0.5
    plan = make_plan(pos, None, proposal="grid", centres=2, pixel=pixel, grid_size=torch.tensor([[4, 4]]))
    assert plan.centre_valid.tolist() == [[True, True, True, False]]
    assert plan.centre_count.tolist() == [4, 4, 4, 0]
    # every point is anti-aligned with the three real centres: an empty centre (zero feature, cos 0)
    # would win; it may not, so the tie among the real ones goes to the lowest index
    fn = -torch.ones(len(pixel), 1, 1, dtype=torch.float64)
    cn = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64).view(1, 4, 1, 1)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    assert pc.nn.assign_centres(fn, cn, plan, one, zero).unique().tolist() == [0]


# ----------------------------------------------------------------------------------------------
# examples/images.py
# ----------------------------------------------------------------------------------------------
def test_digit_formats():
    images = load_example("images")
    g = torch.Generator().manual_seed(0)
    assert images.format_mask("grid", 5, 16, g) is None
    discrete = images.format_mask("discrete", 200, 16, g)
    assert (discrete.sum((1, 2)) == 128).all()
    assert not torch.equal(discrete[0], discrete[1])
    masked = images.format_mask("masked", 500, 16, g)
    hidden = ~masked
    rows, cols = hidden.any(2), hidden.any(1)
    h, w = rows.sum(1), cols.sum(1)
    assert torch.equal(hidden.sum((1, 2)), h * w)  # one rectangle
    assert ((h * w - 64).abs() <= 8).all() and (h <= 2 * w).all() and (w <= 2 * h).all()
    disc = images.format_mask("disc", 2, 8, g)
    assert disc[0].int().tolist()[0] == [0, 0, 1, 1, 1, 1, 0, 0] and torch.equal(disc[0], disc[1])
    torch.testing.assert_close(
        images.format_mask("discrete", 3, 8, torch.Generator().manual_seed(5)),
        images.format_mask("discrete", 3, 8, torch.Generator().manual_seed(5)),
    )


def test_digits_quick_mode_full_grid(tmp_path):
    images = load_example("images")
    summary = images.main(["--quick", "--no-progress", "--output", str(tmp_path)])
    accuracy = summary["results"]["grid"]["point"]["accuracy"]
    assert accuracy >= 0.90
    assert json.loads((tmp_path / "results.json").read_text())["results"]["grid"]["point"]["accuracy"] == accuracy


# ----------------------------------------------------------------------------------------------
# examples/rgbd.py
# ----------------------------------------------------------------------------------------------
def test_rgbd_example_on_synthetic_frame(tmp_path):
    rgbd = load_example("rgbd")
    rgb, depth, (fx, fy, cx, cy), scale = rgbd.synthetic_frame(48, 64)
    valid = depth > 0
    assert rgb.shape == (48, 64, 3) and depth.dtype == np.uint16 and 0 < valid.sum() < valid.size
    summary = rgbd.main(["--output", str(tmp_path), "--height", "48", "--width", "64"])
    assert summary["num_points"] == int(valid.sum())
    pos, colours = viz.read_ply(tmp_path / "cloud.ply")
    assert pos.shape == (int(valid.sum()), 3)
    v, u = np.nonzero(valid)  # row-major, the point order
    z = depth[valid] / scale
    np.testing.assert_allclose(pos, np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], 1), atol=2e-6)
    np.testing.assert_array_equal(colours, rgb[valid])
    clusters = np.array(Image.open(tmp_path / "clusters_image.png"))
    assert clusters.shape == (48, 64, 3)
    assert ((clusters == 0).all(2) == ~valid).all()  # pixels without depth are background
    assert Image.open(tmp_path / "clusters_3d.png").size == (640, 480)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "depth.png")), depth)


def test_digit_table_has_three_columns():
    images = load_example("images")
    run = lambda a: dict(accuracy=a)  # noqa: E731
    table = images._table(
        {
            "grid": {"point": run(0.98), "lattice": run(0.97)},
            "masked": {"point": run(0.9), "lattice": run(0.91), "zeros": run(0.88)},
            "disc": {"point": dict(accuracy=0.975, accuracies=[0.97, 0.98]), "lattice": run(0.96)},
        }
    )
    assert table.splitlines() == [
        "| format | point mode (FPS centres) | lattice mode | zero-filled grid |",
        "|---|---|---|---|",
        "| grid | 98.0% | 97.0% | 97.0% (lattice run) |",
        "| masked | 90.0% | 91.0% | 88.0% |",
        "| disc | 97.5% (97.0-98.0) | 96.0% | - |",
    ]
