"""pointcoc.data.rgbd_frames: exact ray casting, the camera convention, rendered frame sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pointcoc as pc
from pointcoc.data import demo_objects
from pointcoc.data.demo_objects import Shape
from pointcoc.data.rgbd_frames import (
    DEPTH_SCALE,
    MAX_RANGE,
    Camera,
    _bounds,
    cast_rays,
    generate_frames,
    look_at,
    ray_cuboid,
    ray_cylinder,
    ray_ellipsoid,
    render,
    render_object_frame,
    torus_arc_centres,
)
from pointcoc.data.scanobjectnn import CLASS_NAMES

ORIGIN = np.array([0.0, 0.0, -5.0])
Z = np.array([[0.0, 0.0, 1.0]])


def _hit(fn, o, d, *args, **kwargs):
    t, normal = fn(np.asarray(o, dtype=np.float64), np.asarray(d, dtype=np.float64), *args, **kwargs)
    return t.tolist(), normal


# ----------------------------------------------------------------------------------------------
# primitives, against hand-computed hits
# ----------------------------------------------------------------------------------------------
def test_box_front_face_and_open_face():
    t, normal = _hit(ray_cuboid, ORIGIN, Z, (0, 0, 0), (2, 2, 2))
    assert t == [4.0] and normal.tolist() == [[0.0, 0.0, -1.0]]
    t, normal = _hit(ray_cuboid, ORIGIN, Z, (0, 0, 0), (2, 2, 2), open_faces=("-z",))
    assert t == [6.0] and normal.tolist() == [[0.0, 0.0, 1.0]]  # through the missing face onto the inside back
    # off-axis: the ray (0.5, 0.25, -5) + t (0, 0, 1) still meets the front face; one at x = 1.5 misses
    t, _ = _hit(ray_cuboid, [[0.5, 0.25, -5.0]][0], Z, (0, 0, 0), (2, 2, 2))
    assert t == [4.0]
    t, _ = _hit(ray_cuboid, [1.5, 0.0, -5.0], Z, (0, 0, 0), (2, 2, 2))
    assert t == [math.inf]
    # a slanted ray: from (-5, 0.5, 0) along (1, 0, 0.1) hits x = -1 at t = 4 (z = 0.4 inside)
    t, normal = _hit(ray_cuboid, [-5.0, 0.5, 0.0], [[1.0, 0.0, 0.1]], (0, 0, 0), (2, 2, 2))
    assert t == [4.0] and normal.tolist() == [[-1.0, 0.0, 0.0]]


def test_cylinder_side_caps_and_open_inside():
    t, normal = _hit(ray_cylinder, [0.0, 1.0, -5.0], Z, (0, 0, 0), 1.0, 2.0)
    assert t == [4.0] and np.allclose(normal, [[0.0, 0.0, -1.0]])
    down = [[0.0, -1.0, 0.0]]
    assert _hit(ray_cylinder, [0.0, 5.0, 0.0], down, (0, 0, 0), 1.0, 2.0)[0] == [3.0]  # top cap
    assert _hit(ray_cylinder, [0.0, 5.0, 0.0], down, (0, 0, 0), 1.0, 2.0, top=False)[0] == [5.0]  # bin bottom
    assert _hit(ray_cylinder, [0.5, 5.0, 0.0], down, (0, 0, 0), 1.0, 2.0, bottom=False, top=False)[0] == [math.inf]
    # into an open tube from above at 45 degrees: the near wall is behind the origin, the far wall at t = 1.5
    t, normal = _hit(ray_cylinder, [0.0, 3.0, -0.5], [[0.0, -1.0, 1.0]], (0, 0, 0), 1.0, 2.0, top=False)
    assert t == [1.5] and np.allclose(normal, [[0.0, 0.0, 1.0]])
    # the same ray above the rim of a lower tube (height 1) misses the wall: the inside is below y = 1.5
    assert _hit(ray_cylinder, [0.0, 3.0, -0.5], [[0.0, -1.0, 1.0]], (0, 0, 0), 1.0, 1.0, bottom=False, top=False)[
        0
    ] == [math.inf]


def test_ellipsoid_and_open_bowl():
    t, normal = _hit(ray_ellipsoid, ORIGIN, Z, (0, 0, 0), (1, 2, 3))
    assert t == [2.0] and np.allclose(normal / np.linalg.norm(normal), [[0.0, 0.0, -1.0]])
    t, _ = _hit(ray_ellipsoid, [0.0, 0.0, 0.0], [[0.0, 0.0, 1.0]], (0, 0, 5), (1, 1, 1))
    assert t == [4.0]
    down = [[0.0, -1.0, 0.0]]
    # a bowl (lower half of the unit sphere at y = 1) seen from above: the rim side is open, the bottom at y = 0
    assert _hit(ray_ellipsoid, [0.0, 5.0, 0.0], down, (0, 1, 0), (1, 1, 1), lower_half=True)[0] == [5.0]
    assert _hit(ray_ellipsoid, [0.0, 5.0, 0.0], down, (0, 1, 0), (1, 1, 1))[0] == [3.0]
    assert _hit(ray_ellipsoid, [0.0, -5.0, 0.0], [[0.0, 1.0, 0.0]], (0, 1, 0), (1, 1, 1), lower_half=True)[0] == [5.0]


def test_torus_arc_chain_follows_the_arc():
    centres = torus_arc_centres((1.0, 2.0, 3.0), major=0.5, minor=0.05, arc=math.pi, plane="xy")
    rel = centres - (1.0, 2.0, 3.0)
    np.testing.assert_allclose(np.linalg.norm(rel, axis=1), 0.5)
    np.testing.assert_allclose(rel[:, 2], 0.0)
    assert (rel[:, 1] >= -1e-12).all()  # a handle: the arc is centred on +y
    assert np.linalg.norm(np.diff(centres, axis=0), axis=1).max() <= 0.05 + 1e-12
    ring = torus_arc_centres((0.0, 0.0, 0.0), major=1.0, minor=0.1, arc=2 * math.pi, plane="xz", scale_z=2.0)
    np.testing.assert_allclose(ring[:, 1], 0.0)
    np.testing.assert_allclose(ring[:, 0] ** 2 + (ring[:, 2] / 2) ** 2, 1.0)


def test_cast_rays_nearest_surface_and_part_ids():
    shapes = [
        Shape("cuboid", dict(center=np.array([0.0, 1.0, 0.0]), size=np.array([2.0, 2.0, 2.0]), open_faces=())),
        Shape("ellipsoid", dict(center=np.array([0.0, 1.0, -3.0]), radii=np.array([0.3, 0.3, 0.3]), lower_half=False)),
    ]
    o = np.array([0.0, 1.0, -5.0])
    d = np.array([[0.0, 0.0, 1.0], [0.2, 0.0, 1.0], [0.0, -1.0, 1.0], [0.0, 1.0, 0.0]])
    t, normal, which = cast_rays(o, d, shapes)
    assert math.isclose(t[0], 1.7, abs_tol=1e-12) and which[0] == 2  # the sphere in front of the box
    assert which[1] == 1  # passes the sphere (closest approach 0.39 > 0.3), meets the box face z = -1 at x = 0.8
    assert math.isclose(t[1], 4.0, rel_tol=0, abs_tol=1e-12)
    assert t[2] == 1.0 and which[2] == 0  # the floor y = 0
    assert t[3] == math.inf and which[3] == -1
    assert (np.einsum("ij,ij->i", normal[:3], d[:3]) < 0).all()  # normals face the camera


# ----------------------------------------------------------------------------------------------
# camera and rendering
# ----------------------------------------------------------------------------------------------
def _camera(origin, target, size=(5, 7), focal=4.0):
    h, w = size
    return Camera(focal, focal, (w - 1) / 2, (h - 1) / 2, h, w, look_at(origin, target), np.asarray(origin, float))


def test_look_at_is_a_right_handed_camera_frame():
    rot = look_at([3.0, 2.0, -1.0], [0.0, 0.5, 1.0], roll=0.3)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert math.isclose(np.linalg.det(rot), 1.0, abs_tol=1e-12)
    forward = np.array([-3.0, -1.5, 2.0]) / np.linalg.norm([-3.0, -1.5, 2.0])
    np.testing.assert_allclose(rot[:, 2], forward, atol=1e-12)
    level = look_at([0.0, 1.0, -5.0], [0.0, 1.0, 0.0])  # looking along +z: right is -x, down is -y
    np.testing.assert_allclose(level, [[-1, 0, 0], [0, -1, 0], [0, 0, 1]], atol=1e-12)
    with pytest.raises(ValueError, match="straight"):
        look_at([0.0, 5.0, 0.0], [0.0, 0.0, 0.0])


def test_render_box_exact_depth_colour_and_sky():
    camera = _camera([0.0, 1.0, -5.0], [0.0, 1.0, 0.0])
    box = Shape("cuboid", dict(center=np.array([0.0, 1.0, 0.0]), size=np.array([2.0, 2.0, 2.0]), open_faces=()))
    colour = np.array([[0.8, 0.4, 0.2]])
    rgb, depth, which = render(
        camera, [box], colour, floor_colour=(0.5, 0.5, 0.5), background=(0.0, 0.0, 1.0), light=(0.0, 0.0, -1.0)
    )
    assert which[2, 3] == 1 and depth[2, 3] == 4000  # centre pixel: the front face, 4 m in front
    assert rgb[2, 3].tolist() == [204, 102, 51]  # facing the light: the albedo itself
    # pixel (row 2, col 0): ray direction (1.5/4, 0, 1) in camera = (-0.375, 0, 1) world hits the face at x = -1.5,
    # outside the box (|x| <= 1), and runs parallel to the floor: nothing within range -> sky, no depth
    assert which[2, 0] == -1 and depth[2, 0] == 0 and rgb[2, 0].tolist() == [0, 0, 255]
    # pixel (row 4, col 3): (0, 2/4, 1) -> world (0, -0.5, 1); the box face z = -1 at t = 4 has y = -1: below it,
    # so the floor at t = 2 (y = 0) comes first
    assert which[4, 3] == 0 and depth[4, 3] == 2000


def test_back_projection_recovers_the_surfaces():
    """rgbd_to_points of an exact frame, moved to the world by the camera pose, lies on the floor and the box."""
    camera = _camera([1.0, 2.0, -4.0], [0.0, 0.5, 0.0], size=(24, 32), focal=20.0)
    box = Shape("cuboid", dict(center=np.array([0.0, 0.5, 0.0]), size=np.array([1.0, 1.0, 1.0]), open_faces=()))
    rgb, depth, which = render(
        camera, [box], np.array([[0.9, 0.1, 0.1]]), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), (0.3, 1.0, -0.2)
    )
    points = pc.rgbd_to_points(rgb, depth.astype(np.float64), intrinsics=camera.intrinsics, depth_scale=DEPTH_SCALE)
    world = points.pos.double().numpy() @ camera.rotation.T + camera.origin
    ids = which[depth > 0]
    tol = 0.5 / DEPTH_SCALE * 3  # millimetre rounding of z, stretched along slanted rays
    assert (ids == 0).sum() > 50 and (ids == 1).sum() > 20
    assert np.abs(world[ids == 0, 1]).max() < tol
    on_box = np.abs(world[ids == 1] - (0.0, 0.5, 0.0)).max(axis=1)
    assert np.abs(on_box - 0.5).max() < tol


# ----------------------------------------------------------------------------------------------
# object frames and frame sets
# ----------------------------------------------------------------------------------------------
def test_object_shapes_describe_the_sampled_parts():
    """object_shapes draws the parts generate_object samples: same draws, and the samples lie in the shapes' bounds."""
    for c, name in enumerate(CLASS_NAMES):
        parts = demo_objects._BUILDERS[name](np.random.default_rng([3, c]))
        shapes = demo_objects.object_shapes(c, np.random.default_rng([3, c]))
        assert [repr(s) for s in shapes] == [repr(p.shape) for p in parts]
        for part, shape in zip(parts, shapes):
            points = part.sample(300, np.random.default_rng(c))[0]
            lo, hi = _bounds(shape)
            assert (points >= lo - 1e-3).all() and (points <= hi + 1e-3).all(), (name, shape.kind)
    with pytest.raises(ValueError, match="class_index"):
        demo_objects.object_shapes(15, np.random.default_rng(0))


def test_object_frame_sensor_model():
    exact = render_object_frame(4, np.random.default_rng(9), 40, 40, noise=False)
    noisy = render_object_frame(4, np.random.default_rng(9), 40, 40, noise=True)
    np.testing.assert_array_equal(exact[2], noisy[2])  # the same scene and camera
    which, z0, z1 = exact[2], exact[1] / DEPTH_SCALE, noisy[1] / DEPTH_SCALE
    assert (which >= 1).mean() > 0.1  # the chair is in view
    assert ((z0 > 0) == (which >= 0)).all() and z0.max() <= MAX_RANGE
    read = z1 > 0
    # dropouts only, never a reading from nowhere
    assert read.sum() > 0.9 * (z0 > 0).sum() and not (read & (z0 == 0)).any()
    sigma = 0.0012 + 0.0019 * (z0[read] - 0.4) ** 2
    assert np.abs(z1[read] - z0[read]).max() <= 6 * sigma.max() + 1e-3
    colour_noise = (noisy[0].astype(int) - exact[0].astype(int))[(exact[0] > 20) & (exact[0] < 235)]
    assert 2.0 < colour_noise.std() < 3.2 and np.abs(colour_noise).max() <= 16  # sigma 0.01 = 2.55 levels


def test_generate_frames_deterministic_and_order_independent():
    a = generate_frames(2, seed=5, split="train", height=16, width=20)
    b = generate_frames(2, seed=5, split="train", height=16, width=20)
    one = generate_frames(1, seed=5, split="train", height=16, width=20)
    test = generate_frames(1, seed=5, split="test", height=16, width=20)
    assert a.rgb.shape == (30, 16, 20, 3) and a.depth.shape == (30, 16, 20) and a.depth.dtype == np.uint16
    np.testing.assert_array_equal(a.label, np.arange(30) % 15)
    for name in ("rgb", "depth", "object_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(getattr(a, name)[:15], getattr(one, name))
    assert not np.array_equal(test.depth, one.depth)
    assert a.intrinsics == (20 / 2 / math.tan(math.radians(30)),) * 2 + (9.5, 7.5)
    assert a.object_mask.any(axis=(1, 2)).all()  # every frame shows its object


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(per_class=0), "per_class"),
        (dict(per_class=1, split="val"), "split"),
        (dict(per_class=1, height=1), "height"),
        (dict(per_class=1, width=2.5), "width"),
    ],
)
def test_generate_frames_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_frames(**kwargs)
