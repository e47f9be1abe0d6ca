"""Tests for pointcoc.points: images / masks / pixels / RGB-D -> point sets, and back."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch_geometric.data import Batch

from pointcoc.points import image_to_points, points_to_image, rgbd_to_points, sample_pixels

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_pos(H: int, W: int, dtype=torch.float32) -> torch.Tensor:
    """docs/design.md §3.1 positions of an H x W grid (H, W > 1), row-major, computed the reference way."""
    rows = torch.arange(H, dtype=dtype) / (H - 1.0) - 0.5
    cols = torch.arange(W, dtype=dtype) / (W - 1.0) - 0.5
    return torch.stack([rows[:, None].expand(H, W), cols[None, :].expand(H, W)], dim=-1).reshape(-1, 2)


def row_major_pixels(H: int, W: int) -> torch.Tensor:
    return torch.tensor([[i, j] for i in range(H) for j in range(W)], dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# image_to_points: positions, order, batching
# ----------------------------------------------------------------------------------------------
def test_positions_3x4_hand_computed_float64():
    img = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    pts = image_to_points(img)
    third = 1.0 / 3.0
    expected = torch.tensor(
        [
            [-0.5, -0.5],
            [-0.5, third - 0.5],
            [-0.5, 2 * third - 0.5],
            [-0.5, 0.5],
            [0.0, -0.5],
            [0.0, third - 0.5],
            [0.0, 2 * third - 0.5],
            [0.0, 0.5],
            [0.5, -0.5],
            [0.5, third - 0.5],
            [0.5, 2 * third - 0.5],
            [0.5, 0.5],
        ],
        dtype=torch.float64,
    )
    assert pts.pos.dtype == torch.float64 and pts.x.dtype == torch.float64
    assert torch.equal(pts.pos, expected)
    # x = the C channel values of each pixel, row-major
    assert torch.equal(pts.x, img.permute(1, 2, 0).reshape(12, 2))
    assert torch.equal(pts.x[5], torch.tensor([5.0, 17.0], dtype=torch.float64))  # row 1, col 1
    assert torch.equal(pts.pixel, row_major_pixels(3, 4))
    assert torch.equal(pts.batch, torch.zeros(12, dtype=torch.long))
    assert torch.equal(pts.ptr, torch.tensor([0, 12]))
    assert torch.equal(pts.grid_size, torch.tensor([[3, 4]]))
    assert pts.pixel.dtype == torch.long and pts.grid_size.dtype == torch.long


@pytest.mark.parametrize("device", DEVICES)
def test_float32_positions_equal_reference_formula_bitwise(device):
    img = torch.rand(3, 5, 7, device=device)
    pts = image_to_points(img)
    assert pts.pos.dtype == torch.float32
    assert pts.pos.device.type == device
    assert torch.equal(pts.pos.cpu(), reference_pos(5, 7))


def test_axis_of_length_one_gets_zero():
    pts = image_to_points(torch.arange(3.0).reshape(1, 1, 3))
    assert torch.equal(pts.pos, torch.tensor([[0.0, -0.5], [0.0, 0.0], [0.0, 0.5]]))
    pts = image_to_points(torch.arange(2.0).reshape(1, 2, 1))
    assert torch.equal(pts.pos, torch.tensor([[-0.5, 0.0], [0.5, 0.0]]))
    pts = image_to_points(torch.ones(1, 1, 1))
    assert torch.equal(pts.pos, torch.zeros(1, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_tensor(device):
    imgs = torch.rand(3, 3, 4, 5, device=device)
    pts = image_to_points(imgs)
    assert isinstance(pts, Batch)
    assert pts.num_graphs == 3
    assert pts.x.shape == (60, 3) and pts.pos.shape == (60, 2)
    assert torch.equal(pts.batch.cpu(), torch.arange(3).repeat_interleave(20))
    assert torch.equal(pts.ptr.cpu(), torch.tensor([0, 20, 40, 60]))
    assert torch.equal(pts.grid_size.cpu(), torch.tensor([[4, 5]] * 3))
    assert torch.equal(pts.pixel.cpu(), row_major_pixels(4, 5).repeat(3, 1))
    assert torch.equal(pts.pos.cpu(), reference_pos(4, 5).repeat(3, 1))
    for b in range(3):
        assert torch.equal(pts.x[20 * b : 20 * (b + 1)], imgs[b].permute(1, 2, 0).reshape(20, 3))
    assert all(t.device.type == device for t in (pts.x, pts.pos, pts.batch, pts.ptr, pts.pixel, pts.grid_size))


def test_uint8_tensor_scaled_and_half_promoted():
    img = torch.tensor([[[0, 51], [255, 102]]], dtype=torch.uint8)
    pts = image_to_points(img)
    assert pts.x.dtype == torch.float32
    assert torch.equal(pts.x[:, 0], torch.tensor([0, 51, 255, 102], dtype=torch.float32) / 255)
    assert image_to_points(img.half()).x.dtype == torch.float32


def test_gradient_flows_to_image():
    img = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    pts = image_to_points(img)
    (pts.x * torch.arange(9, dtype=torch.float64)[:, None]).sum().backward()
    assert torch.equal(img.grad, torch.arange(9, dtype=torch.float64).reshape(1, 3, 3).expand(2, 3, 3))


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_masked_batch_is_ragged(device):
    imgs = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32, device=device).reshape(2, 1, 3, 3)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool, device=device)
    mask[0, 0, 1] = mask[0, 2, 2] = mask[0, 1, 0] = True
    mask[1, 2, 0] = True
    pts = image_to_points(imgs, mask=mask)
    assert torch.equal(pts.ptr.cpu(), torch.tensor([0, 3, 4]))
    assert torch.equal(pts.batch.cpu(), torch.tensor([0, 0, 0, 1]))
    # row-major order inside each sample, positions from the full 3x3 grid
    assert torch.equal(pts.pixel.cpu(), torch.tensor([[0, 1], [1, 0], [2, 2], [2, 0]]))
    assert torch.equal(pts.x[:, 0].cpu(), torch.tensor([1.0, 3.0, 8.0, 15.0]))
    assert torch.equal(pts.pos.cpu(), torch.tensor([[-0.5, 0.0], [0.0, -0.5], [0.5, 0.5], [0.5, -0.5]]))
    assert torch.equal(pts.grid_size.cpu(), torch.tensor([[3, 3], [3, 3]]))


def test_mask_2d_applies_to_every_sample_and_numpy_mask():
    imgs = torch.rand(2, 3, 2, 3)
    mask = np.array([[True, False, False], [False, False, True]])
    pts = image_to_points(imgs, mask=mask)
    assert torch.equal(pts.pixel, torch.tensor([[0, 0], [1, 2], [0, 0], [1, 2]]))
    assert torch.equal(pts.ptr, torch.tensor([0, 2, 4]))
    assert torch.equal(pts.x[3], imgs[1, :, 1, 2])


def test_list_of_masks_with_none():
    imgs = [torch.rand(1, 2, 2), torch.rand(1, 3, 1)]
    pts = image_to_points(imgs, mask=[None, torch.tensor([[False], [True], [True]])])
    assert torch.equal(pts.ptr, torch.tensor([0, 4, 6]))
    assert torch.equal(pts.pixel[4:], torch.tensor([[1, 0], [2, 0]]))
    assert torch.equal(pts.pos[4:], torch.tensor([[0.0, 0.0], [0.5, 0.0]]))


def test_nan_in_masked_out_pixels_is_allowed():
    img = torch.tensor([[[1.0, float("nan")], [2.0, 3.0]]])
    pts = image_to_points(img, mask=torch.tensor([[True, False], [True, True]]))
    assert torch.equal(pts.x[:, 0], torch.tensor([1.0, 2.0, 3.0]))


# ----------------------------------------------------------------------------------------------
# numpy, PIL, files, lists
# ----------------------------------------------------------------------------------------------
def test_numpy_uint8_hwc():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    pts = image_to_points(arr)
    assert pts.x.dtype == torch.float32 and pts.x.shape == (6, 3)
    assert torch.equal(pts.x, torch.from_numpy(arr.reshape(6, 3)).float() / 255)
    assert torch.equal(pts.grid_size, torch.tensor([[2, 3]]))


def test_numpy_gray_uint16_and_float():
    gray16 = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    pts = image_to_points(gray16)
    assert pts.x.shape == (4, 1)
    assert torch.equal(pts.x[:, 0], torch.tensor([0.0, 65535.0, 32768.0, 1.0]) / 65535)
    f32 = np.array([[0.25, -1.5], [3.0, 7.0]], dtype=np.float32)
    assert torch.equal(image_to_points(f32).x[:, 0], torch.tensor([0.25, -1.5, 3.0, 7.0]))
    f64 = np.random.default_rng(0).random((2, 2, 2))
    pts = image_to_points(f64)
    assert pts.x.dtype == torch.float64 and pts.pos.dtype == torch.float64
    assert torch.equal(pts.x, torch.from_numpy(f64.reshape(4, 2)))


def test_pil_image_input():
    arr = np.random.default_rng(1).integers(0, 256, (3, 2, 3), dtype=np.uint8)
    pts = image_to_points(Image.fromarray(arr))
    assert torch.equal(pts.x, torch.from_numpy(arr.reshape(6, 3)).float() / 255)
    assert torch.equal(pts.pos, reference_pos(3, 2))


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("RGBA", 4), ("L", 1)])
def test_png_files_keep_their_channels(tmp_path, mode, channels):
    rng = np.random.default_rng(2)
    shape = (4, 5) if channels == 1 else (4, 5, channels)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"img_{mode}.png"
    Image.fromarray(arr, mode=mode).save(path)
    for p in (path, str(path)):
        pts = image_to_points(p)
        assert pts.x.shape == (20, channels)
        assert torch.equal(pts.x, torch.from_numpy(arr.reshape(20, channels)).float() / 255)
        assert torch.equal(pts.grid_size, torch.tensor([[4, 5]]))


def test_16bit_png_image_scaled(tmp_path):
    arr = np.array([[0, 1000], [65535, 40000]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(arr).save(path)
    pts = image_to_points(path)
    assert torch.equal(pts.x[:, 0], torch.tensor([0.0, 1000.0, 65535.0, 40000.0]) / 65535)


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1)])
def test_jpeg_files(tmp_path, mode, channels):
    rng = np.random.default_rng(3)
    shape = (6, 8) if channels == 1 else (6, 8, channels)
    path = tmp_path / "img.jpg"
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, quality=90)
    decoded = np.array(Image.open(path)).reshape(48, channels)
    pts = image_to_points(path)
    assert torch.equal(pts.x, torch.from_numpy(decoded).float() / 255)


def test_palette_png_becomes_rgb(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    path = tmp_path / "pal.png"
    img.save(path)
    pts = image_to_points(path)
    assert torch.equal(pts.x, torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0], [1.0, 0, 0]]))


def test_list_of_different_sizes_and_kinds(tmp_path):
    a = torch.rand(3, 2, 3)
    b = np.random.default_rng(4).integers(0, 256, (4, 1, 3), dtype=np.uint8)
    c_arr = np.random.default_rng(5).integers(0, 256, (3, 3, 3), dtype=np.uint8)
    Image.fromarray(c_arr).save(tmp_path / "c.png")
    d = torch.rand(2, 3, 2, 2)  # a batch inside the list contributes 2 samples
    pts = image_to_points([a, b, tmp_path / "c.png", d])
    assert torch.equal(pts.grid_size, torch.tensor([[2, 3], [4, 1], [3, 3], [2, 2], [2, 2]]))
    assert torch.equal(pts.ptr, torch.tensor([0, 6, 10, 19, 23, 27]))
    assert torch.equal(pts.batch, torch.arange(5).repeat_interleave(torch.tensor([6, 4, 9, 4, 4])))
    assert torch.equal(pts.x[:6], a.permute(1, 2, 0).reshape(6, 3))
    assert torch.equal(pts.x[6:10], torch.from_numpy(b.reshape(4, 3)).float() / 255)
    assert torch.equal(pts.x[10:19], torch.from_numpy(c_arr.reshape(9, 3)).float() / 255)
    assert torch.equal(pts.x[19:], d.permute(0, 2, 3, 1).reshape(8, 3))
    assert torch.equal(pts.pos[:6], reference_pos(2, 3))
    rows4 = torch.arange(4.0) / 3.0 - 0.5  # [-0.5, -1/6, 1/6, 0.5]; the width-1 axis is 0.0
    assert torch.equal(pts.pos[6:10], torch.stack([rows4, torch.zeros(4)], dim=1))
    assert torch.equal(pts.pixel[6:10], row_major_pixels(4, 1))
    assert torch.equal(pts.pos[10:19], reference_pos(3, 3))
    # tuples work like lists
    assert torch.equal(image_to_points((a, b)).x, pts.x[:10])


def test_list_mixing_float64_promotes():
    pts = image_to_points([torch.rand(1, 2, 2), torch.rand(1, 2, 2, dtype=torch.float64)])
    assert pts.x.dtype == torch.float64 and pts.pos.dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# sample_pixels
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_sample_pixels_seeded(device):
    imgs = [torch.rand(2, 3, 3, device=device), torch.rand(2, 2, 5, device=device), torch.rand(2, 1, 1, device=device)]
    pts = image_to_points(imgs)
    pts.label = torch.arange(pts.num_nodes, device=device) * 10  # an extra per-point tensor
    pts.y = torch.tensor([7], device=device)  # not per-point: kept as is

    def draw():
        return sample_pixels(pts, ratio=0.3, generator=torch.Generator(device=device).manual_seed(123))

    sub, again = draw(), draw()
    # ceil counts: 9 -> 3, 10 -> 3, 1 -> 1
    assert torch.equal(sub.ptr.cpu(), torch.tensor([0, 3, 6, 7]))
    for key in ("x", "pos", "batch", "pixel", "label"):
        assert torch.equal(sub[key], again[key])
    idx = sub.label // 10  # the global indices that were kept
    assert torch.equal(sub.x, pts.x[idx]) and torch.equal(sub.pos, pts.pos[idx])
    assert torch.equal(sub.pixel, pts.pixel[idx]) and torch.equal(sub.batch, pts.batch[idx])
    assert torch.equal(sub.batch.cpu(), torch.tensor([0, 0, 0, 1, 1, 1, 2]))
    # row-major order kept within each sample
    assert bool((idx[1:] > idx[:-1]).all())
    assert torch.equal(sub.grid_size, pts.grid_size)
    assert torch.equal(sub.y, pts.y)
    other = sample_pixels(pts, ratio=0.3, generator=torch.Generator(device=device).manual_seed(7))
    assert torch.equal(other.ptr, sub.ptr)


def test_sample_pixels_ratio_one_keeps_everything():
    pts = image_to_points(torch.rand(2, 3, 4, 4))
    sub = sample_pixels(pts, ratio=1.0, generator=torch.Generator().manual_seed(0))
    for key in ("x", "pos", "batch", "ptr", "pixel", "grid_size"):
        assert torch.equal(sub[key], pts[key])


def test_sample_pixels_with_index():
    pts = image_to_points(torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3))
    index = torch.tensor([1, 5, 6, 9, 10])
    sub = sample_pixels(pts, index=index)
    assert torch.equal(sub.x[:, 0], torch.tensor([1.0, 5.0, 6.0, 9.0, 10.0]))
    assert torch.equal(sub.pixel, torch.tensor([[0, 1], [1, 2], [0, 0], [1, 0], [1, 1]]))
    assert torch.equal(sub.ptr, torch.tensor([0, 2, 5]))
    assert torch.equal(sub.batch, torch.tensor([0, 0, 1, 1, 1]))
    assert torch.equal(sub.pos, pts.pos[index])
    assert torch.equal(sub.grid_size, pts.grid_size)


# ----------------------------------------------------------------------------------------------
# RGB-D
# ----------------------------------------------------------------------------------------------
RGB_2x3 = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 9  # H x W x C
K = [[2.0, 0.0, 1.0], [0.0, 4.0, 0.5], [0.0, 0.0, 1.0]]  # fx=2, fy=4, cx=1, cy=0.5


def _check_hand_computed_xyz(pts, dtype=torch.float32):
    # valid pixels: (0,0) z=2, (1,0) z=4, (1,1) z=3, (1,2) z=0.5
    assert torch.equal(pts.pixel, torch.tensor([[0, 0], [1, 0], [1, 1], [1, 2]]))
    expected = torch.tensor(
        [
            [(0 - 1) * 2.0 / 2, (0 - 0.5) * 2.0 / 4, 2.0],  # (-1, -0.25, 2)
            [(0 - 1) * 4.0 / 2, (1 - 0.5) * 4.0 / 4, 4.0],  # (-2, 0.5, 4)
            [(1 - 1) * 3.0 / 2, (1 - 0.5) * 3.0 / 4, 3.0],  # (0, 0.375, 3)
            [(2 - 1) * 0.5 / 2, (1 - 0.5) * 0.5 / 4, 0.5],  # (0.25, 0.0625, 0.5)
        ],
        dtype=dtype,
    )
    assert torch.allclose(pts.pos, expected, rtol=1e-6, atol=1e-7)
    assert torch.allclose(pts.pos[:2], torch.tensor([[-1.0, -0.25, 2.0], [-2.0, 0.5, 4.0]], dtype=dtype))
    colours = torch.from_numpy(RGB_2x3.reshape(6, 3)).to(dtype) / 255
    assert torch.equal(pts.x, colours[[0, 3, 4, 5]])
    assert torch.equal(pts.grid_size, torch.tensor([[2, 3]]))
    assert torch.equal(pts.ptr, torch.tensor([0, 4]))


def test_rgbd_xyz_hand_computed_invalid_dropped():
    depth = torch.tensor([[2.0, 0.0, float("nan")], [4.0, 3.0, 0.5]])
    _check_hand_computed_xyz(rgbd_to_points(RGB_2x3, depth, intrinsics=K))
    # (fx, fy, cx, cy) form, numpy depth, negative and inf dropped
    depth_np = np.array([[2.0, -1.0, np.inf], [4.0, 3.0, 0.5]])
    _check_hand_computed_xyz(rgbd_to_points(RGB_2x3, depth_np, intrinsics=(2.0, 4.0, 1.0, 0.5)))


def test_rgbd_16bit_png_with_depth_scale(tmp_path):
    mm = np.array([[2000, 0, 0], [4000, 3000, 500]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(mm).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb_path = tmp_path / "rgb.png"
    Image.fromarray(RGB_2x3).save(rgb_path)
    _check_hand_computed_xyz(rgbd_to_points(rgb_path, path, intrinsics=torch.tensor(K), depth_scale=1000))


def test_rgbd_batched_float64_and_per_sample_intrinsics():
    rgb = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    depth = torch.tensor([[[1.0, 2.0], [0.0, 4.0]], [[8.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    cams = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 4.0, 1.0, 1.0]], dtype=torch.float64)
    pts = rgbd_to_points(rgb, depth.unsqueeze(1), intrinsics=cams)
    assert pts.pos.dtype == torch.float64
    assert torch.equal(pts.ptr, torch.tensor([0, 3, 4]))
    expected = torch.tensor(
        [[0.0, 0.0, 1.0], [2.0, 0.0, 2.0], [4.0, 4.0, 4.0], [(0 - 1) * 8.0 / 2, (0 - 1) * 8.0 / 4, 8.0]],
        dtype=torch.float64,
    )
    assert torch.equal(pts.pos, expected)
    assert torch.equal(pts.x, rgb.permute(0, 2, 3, 1).reshape(8, 3)[[0, 1, 3, 4]])


def test_rgbd_uvd_mode():
    depth = torch.tensor([[2.0, 0.0, float("inf")], [4.0, 3.0, 0.5]])
    pts = rgbd_to_points(RGB_2x3, depth, mode="uvd")
    assert pts.pos.shape == (4, 2) and pts.x.shape == (4, 4)
    assert torch.equal(pts.pos, torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.0], [0.5, 0.5]]))
    assert torch.equal(pts.x[:, 3], torch.tensor([2.0, 4.0, 3.0, 0.5]))
    assert torch.equal(pts.x[:, :3], torch.from_numpy(RGB_2x3.reshape(6, 3)).float()[[0, 3, 4, 5]] / 255)
    assert torch.equal(pts.pixel, torch.tensor([[0, 0], [1, 0], [1, 1], [1, 2]]))


def test_rgbd_list_of_different_sizes():
    rgb = [torch.rand(3, 1, 2), torch.rand(3, 2, 1)]
    depth = [np.array([[1.0, 2.0]]), torch.tensor([[0.0], [5.0]])]
    pts = rgbd_to_points(rgb, depth, mode="uvd")
    assert torch.equal(pts.ptr, torch.tensor([0, 2, 3]))
    assert torch.equal(pts.x[:, 3], torch.tensor([1.0, 2.0, 5.0]))
    assert torch.equal(pts.pixel, torch.tensor([[0, 0], [0, 1], [1, 0]]))


# ----------------------------------------------------------------------------------------------
# points_to_image round trips
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_full(device):
    imgs = torch.rand(2, 3, 4, 5, device=device)
    pts = image_to_points(imgs)
    assert torch.equal(points_to_image(pts.x, pts), imgs)
    assert torch.equal(points_to_image(pts.x[:, 1], pts), imgs[:, 1:2])


def test_round_trip_masked_with_fill():
    imgs = torch.rand(2, 2, 3, 3)
    mask = torch.rand(2, 3, 3) > 0.5
    mask[:, 0, 0] = True
    pts = image_to_points(imgs, mask=mask)
    out = points_to_image(pts.x, pts, fill_value=-7.0)
    assert torch.equal(out, torch.where(mask[:, None], imgs, torch.full_like(imgs, -7.0)))


def test_round_trip_ragged_top_left():
    a, b = torch.rand(1, 2, 4), torch.rand(1, 3, 2)
    pts = image_to_points([a, b])
    out = points_to_image(pts.x, pts, fill_value=float("nan"))
    assert out.shape == (2, 1, 3, 4)
    assert torch.equal(out[0, :, :2, :4], a) and torch.equal(out[1, :, :3, :2], b)
    assert bool(out[0, :, 2:].isnan().all()) and bool(out[1, :, :, 2:].isnan().all())


def test_round_trip_after_sample_pixels_and_from_pos():
    imgs = torch.rand(2, 3, 5, 6)
    pts = image_to_points(imgs)
    sub = sample_pixels(pts, ratio=0.4, generator=torch.Generator().manual_seed(0))
    kept = torch.zeros(2, 5, 6, dtype=torch.bool)
    kept[sub.batch, sub.pixel[:, 0], sub.pixel[:, 1]] = True
    assert int(kept.sum()) == 2 * math.ceil(0.4 * 30)
    expected = torch.where(kept[:, None], imgs, torch.zeros_like(imgs))
    assert torch.equal(points_to_image(sub.x, sub), expected)
    # pixels recovered from pos: with grid_size, and with explicit height/width only
    no_pixel = Batch(x=sub.x, pos=sub.pos, batch=sub.batch, grid_size=sub.grid_size)
    assert torch.equal(points_to_image(no_pixel.x, no_pixel), expected)
    bare = Batch(x=sub.x, pos=sub.pos, batch=sub.batch)
    assert torch.equal(points_to_image(bare.x, bare, height=5, width=6), expected)


def test_points_to_image_bigger_canvas_and_gradient():
    img = torch.rand(1, 2, 2, dtype=torch.float64)
    pts = image_to_points(img)
    values = pts.x.clone().requires_grad_(True)
    out = points_to_image(values, pts, height=3, width=4, fill_value=1.0)
    assert out.shape == (1, 1, 3, 4)
    outside = torch.ones(3, 4, dtype=torch.bool)
    outside[:2, :2] = False
    assert torch.equal(out[0, :, :2, :2], img)
    assert torch.equal(out[0, 0][outside], torch.ones(8, dtype=torch.float64))
    out.sum().backward()
    assert torch.equal(values.grad, torch.ones(4, 1, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_property_round_trip_masked_ragged(data):
    num = data.draw(st.integers(1, 3))
    channels = data.draw(st.integers(1, 3))
    sizes = [(data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))) for _ in range(num)]
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    imgs = [torch.rand(channels, h, w, generator=gen) for h, w in sizes]
    masks = []
    for h, w in sizes:
        m = torch.rand(h, w, generator=gen) < 0.5
        m.view(-1)[data.draw(st.integers(0, h * w - 1))] = True
        masks.append(m)
    fill = data.draw(st.sampled_from([0.0, -1.0, 3.5]))
    pts = image_to_points(imgs, mask=masks)
    out = points_to_image(pts.x, pts, fill_value=fill)
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    assert out.shape == (num, channels, H, W)
    for b, ((h, w), img, m) in enumerate(zip(sizes, imgs, masks)):
        expected = torch.full((channels, H, W), fill)
        expected[:, :h, :w] = torch.where(m, img, torch.full_like(img, fill))
        assert torch.equal(out[b], expected)
        assert int((pts.batch == b).sum()) == int(m.sum())


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "images,exc",
    [
        (torch.rand(3, 4), ValueError),  # 2-D tensor
        (torch.rand(1, 1, 3, 4, 4), ValueError),  # 5-D tensor
        (torch.rand(3, 0, 4), ValueError),  # zero-size
        (torch.rand(0, 3, 4, 4), ValueError),  # empty batch
        (np.zeros((2, 2, 2, 2), dtype=np.uint8), ValueError),  # 4-D array
        (np.zeros((0, 4), dtype=np.uint8), ValueError),
        (np.zeros((2, 2), dtype=np.int64), TypeError),
        (torch.zeros(1, 2, 2, dtype=torch.int32), TypeError),
        (torch.tensor([[[1.0, float("nan")]]]), ValueError),
        (torch.tensor([[[1.0, float("inf")]]]), ValueError),
        (12, TypeError),
        (b"bytes", TypeError),
        ([], ValueError),
        ([[torch.rand(1, 2, 2)]], TypeError),
        ([torch.rand(1, 2, 2), torch.rand(3, 2, 2)], ValueError),  # channel mismatch
    ],
)
def test_bad_images(images, exc):
    with pytest.raises(exc, match="images"):
        image_to_points(images)


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match="images.*missing.png"):
        image_to_points(missing)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ValueError, match="images.*garbage.png"):
        image_to_points(str(garbage))
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="images.*truncated.png"):
        image_to_points(truncated)


@pytest.mark.parametrize(
    "mask,exc",
    [
        (torch.ones(3, 3, dtype=torch.bool), ValueError),  # wrong size
        (torch.ones(3, 2, 3, dtype=torch.bool), ValueError),  # wrong batch
        (torch.ones(2, 1, 2, 3, dtype=torch.bool), ValueError),  # wrong rank
        (torch.ones(2, 3), TypeError),  # not bool
        (np.ones((2, 3), dtype=np.uint8), TypeError),
        ([torch.ones(2, 3, dtype=torch.bool)], ValueError),  # list of wrong length
        ([torch.ones(2, 3, dtype=torch.bool), torch.ones(3, 2, dtype=torch.bool)], ValueError),
        ("mask", TypeError),
    ],
)
def test_bad_mask(mask, exc):
    with pytest.raises(exc, match="mask"):
        image_to_points(torch.rand(2, 1, 2, 3), mask=mask)


def test_mask_removing_a_whole_sample():
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"mask.*\[1\]"):
        image_to_points(torch.rand(2, 3, 2, 2), mask=mask)


def test_single_mask_for_ragged_list_rejected():
    with pytest.raises(ValueError, match="mask"):
        image_to_points([torch.rand(1, 2, 2), torch.rand(1, 3, 3)], mask=torch.ones(2, 2, dtype=torch.bool))


def test_bad_rgbd_inputs(tmp_path):
    rgb, depth = torch.rand(3, 2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="depth"):
        rgbd_to_points(rgb, torch.ones(3, 3), intrinsics=K)  # size mismatch
    with pytest.raises(ValueError, match="depth"):
        rgbd_to_points(torch.rand(2, 3, 2, 3), torch.ones(3, 2, 3), intrinsics=K)  # count mismatch
    with pytest.raises(ValueError, match="depth"):
        rgbd_to_points(rgb, torch.ones(1, 2, 2, 3), intrinsics=K)  # [B, 2, H, W]
    with pytest.raises(ValueError, match="depth"):
        rgbd_to_points(rgb, torch.zeros(2, 3), intrinsics=K)  # no valid depth at all
    with pytest.raises(TypeError, match="depth"):
        rgbd_to_points(rgb, 3.0, intrinsics=K)
    with pytest.raises(ValueError, match="depth.*nodepth.png"):
        rgbd_to_points(rgb, tmp_path / "nodepth.png", intrinsics=K)
    rgb_file = tmp_path / "colour.png"
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(rgb_file)
    with pytest.raises(ValueError, match="depth"):
        rgbd_to_points(rgb, rgb_file, intrinsics=K)  # 3-channel depth image
    with pytest.raises(ValueError, match="rgb"):
        rgbd_to_points(torch.full((3, 2, 3), float("nan")), depth, intrinsics=K)
    with pytest.raises(ValueError, match="intrinsics"):
        rgbd_to_points(rgb, depth)  # xyz needs intrinsics
    for bad in ([1.0, 2.0, 3.0], torch.eye(4), np.ones((2, 3))):
        with pytest.raises(ValueError, match="intrinsics"):
            rgbd_to_points(rgb, depth, intrinsics=bad)
    for bad in ((0.0, 1.0, 0.0, 0.0), (1.0, -2.0, 0.0, 0.0), [[-1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]):
        with pytest.raises(ValueError, match="intrinsics.*focal"):
            rgbd_to_points(rgb, depth, intrinsics=bad)
    with pytest.raises(ValueError, match="intrinsics.*skew"):
        rgbd_to_points(rgb, depth, intrinsics=[[1.0, 0.5, 0], [0, 1.0, 0], [0, 0, 1.0]])
    with pytest.raises(ValueError, match="intrinsics"):
        rgbd_to_points(rgb, depth, intrinsics=(float("nan"), 1.0, 0.0, 0.0))
    with pytest.raises(TypeError, match="intrinsics"):
        rgbd_to_points(rgb, depth, intrinsics="K")
    for scale in (0, -1000.0, float("inf")):
        with pytest.raises(ValueError, match="depth_scale"):
            rgbd_to_points(rgb, depth, intrinsics=K, depth_scale=scale)
    with pytest.raises(TypeError, match="depth_scale"):
        rgbd_to_points(rgb, depth, intrinsics=K, depth_scale="1000")
    with pytest.raises(ValueError, match="mode"):
        rgbd_to_points(rgb, depth, intrinsics=K, mode="xy")


def test_bad_sample_pixels_inputs():
    pts = image_to_points(torch.rand(2, 1, 2, 2))
    with pytest.raises(TypeError, match="points"):
        sample_pixels({"x": pts.x})
    for ratio in (0.0, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            sample_pixels(pts, ratio=ratio)
    with pytest.raises(TypeError, match="index"):
        sample_pixels(pts, index=torch.tensor([0.0, 4.0]))
    with pytest.raises(ValueError, match="index"):
        sample_pixels(pts, index=torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="index"):
        sample_pixels(pts, index=torch.tensor([0, 8]))  # out of range
    with pytest.raises(ValueError, match="index"):
        sample_pixels(pts, index=torch.tensor([0, 0, 4]))  # duplicate
    with pytest.raises(ValueError, match="index"):
        sample_pixels(pts, index=torch.tensor([4, 0]))  # samples out of order
    with pytest.raises(ValueError, match=r"index.*\[1\]"):
        sample_pixels(pts, index=torch.tensor([0, 1]))  # sample 1 left empty
    with pytest.raises(ValueError, match="index"):
        sample_pixels(pts, index=torch.tensor([], dtype=torch.long))


def test_bad_points_to_image_inputs():
    pts = image_to_points(torch.rand(2, 1, 2, 2))
    with pytest.raises(ValueError, match="values"):
        points_to_image(torch.rand(7, 1), pts)
    with pytest.raises(ValueError, match="values"):
        points_to_image(torch.rand(8, 1, 1), pts)
    with pytest.raises(TypeError, match="values"):
        points_to_image(np.zeros((8, 1)), pts)
    with pytest.raises(TypeError, match="points"):
        points_to_image(torch.rand(8, 1), pts.x)
    with pytest.raises(ValueError, match="height"):
        points_to_image(pts.x, pts, height=1, width=2)
    with pytest.raises(ValueError, match="width"):
        points_to_image(pts.x, pts, height=2, width=1)
    with pytest.raises(ValueError, match="height"):
        points_to_image(pts.x, pts, height=0)
    bare = Batch(x=pts.x, pos=pts.pos, batch=pts.batch)
    with pytest.raises(ValueError, match="height"):
        points_to_image(bare.x, bare)
    xyz = Batch(x=pts.x, pos=torch.rand(8, 3), batch=pts.batch)
    with pytest.raises(ValueError, match="pos"):
        points_to_image(xyz.x, xyz, height=2, width=2)


def test_models_on_tensors_do_not_import_torch_geometric():
    """torch_geometric (which imports torch._dynamo) loads only when a PyG object is built."""
    code = (
        "import sys, torch, pointcoc as pc\n"
        "m = pc.create_model('coc_mini', num_classes=3).eval()\n"
        "m(torch.rand(1, 3, 16, 16))\n"
        "assert 'torch_geometric' not in sys.modules, 'imported too early'\n"
        "pc.image_to_points(torch.rand(3, 4, 4))\n"
        "assert 'torch_geometric' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_sample_pixels_refuses_a_non_pyg_object():
    with pytest.raises(TypeError, match="points must be a torch_geometric Data/Batch"):
        sample_pixels(types.SimpleNamespace(x=torch.zeros(2, 3), batch=torch.zeros(2, dtype=torch.long)))
