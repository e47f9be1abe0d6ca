"""RGB-D frames of the demo object classes, rendered by ray casting in numpy.

Each frame shows one object of the 15 demo classes (:mod:`pointcoc.data.demo_objects`:
the same part-built chairs, tables, bins, ... with random proportions) standing on a
floor, seen by a pinhole RGB-D camera from a random side:

* every primitive is intersected exactly (rays against box faces, vertical cylinders
  with their caps, ellipsoids and open bowls; a torus arc is a chain of small spheres),
  vectorised over all pixels, and the nearest hit wins, so only the visible side of the
  object is in the frame (a partial view);
* the camera looks at the object from a random azimuth, an elevation of 10-50 degrees and
  a distance that frames it (so the object fills about the same share of every image,
  whatever its real size), with a little roll and aim jitter;
* colours are random per object (parts vary around the object's colour), so colour says
  nothing about the class; a random light shades the surfaces; the floor has a random
  colour and the background beyond the sensor range is a random flat colour;
* depth is the camera-frame ``z`` with the noise of a structured-light sensor
  (standard deviation ``0.0012 + 0.0019 (z - 0.4)^2`` metres), no reading (0) beyond
  :data:`MAX_RANGE`, at grazing angles and at 2% random pixels, stored as ``uint16``
  millimetres like a Kinect / RealSense PNG.

Frame ``i`` of a split is drawn from its own seed sequence ``(seed, split, i)``, so a
set is reproducible and independent of generation order. Classes are interleaved
(frame ``i`` has label ``i % 15``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from .demo_objects import Shape, object_shapes
from .scanobjectnn import CLASS_NAMES

__all__ = [
    "DEPTH_SCALE",
    "MAX_RANGE",
    "Camera",
    "look_at",
    "ray_cuboid",
    "ray_cylinder",
    "ray_ellipsoid",
    "ray_spheres",
    "ray_floor",
    "ray_shape",
    "torus_arc_centres",
    "cast_rays",
    "render",
    "RGBDFrames",
    "render_object_frame",
    "generate_frames",
]

DEPTH_SCALE = 1000.0
"""Raw depth units per metre (millimetres)."""

MAX_RANGE = 8.0
"""Farthest depth (metres) the simulated sensor reads; beyond it depth is 0 (no reading)."""

FIELD_OF_VIEW = 60.0
"""Horizontal field of view of the generated frames, in degrees."""

_EPS = 1e-9  # hits closer than this along the ray are the ray's own origin
_UP = np.array([0.0, 1.0, 0.0])


# ----------------------------------------------------------------------------------------------
# the camera
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Camera:
    """A pinhole camera: intrinsics in pixels and its pose in the world.

    ``rotation`` is camera-to-world ``[3, 3]``: its columns are the camera's x (right),
    y (down) and z (forward) axes in world coordinates; ``origin`` ``[3]`` its centre.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    height: int
    width: int
    rotation: np.ndarray
    origin: np.ndarray

    @property
    def intrinsics(self) -> Tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)``, as :func:`pointcoc.rgbd_to_points` takes them."""
        return (self.fx, self.fy, self.cx, self.cy)

    def rays(self) -> np.ndarray:
        """World directions ``[H * W, 3]`` of the pixel rays, row-major, scaled to camera ``z = 1``.

        Along ray ``d`` the point ``origin + t d`` has camera-frame depth ``t``.
        """
        v, u = np.meshgrid(
            np.arange(self.height, dtype=np.float64), np.arange(self.width, dtype=np.float64), indexing="ij"
        )
        cam = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], -1).reshape(-1, 3)
        return cam @ self.rotation.T


def look_at(origin: Sequence[float], target: Sequence[float], roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation of a camera at ``origin`` looking at ``target`` (world y up).

    ``roll`` (radians) turns the camera about its viewing axis.
    """
    forward = np.asarray(target, dtype=np.float64) - np.asarray(origin, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, _UP)
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError("look_at: the camera must not look straight up or down")
    right /= norm
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def _pinhole(height: int, width: int, fov_degrees: float) -> Tuple[float, float, float, float]:
    f = (width / 2.0) / math.tan(math.radians(fov_degrees) / 2.0)
    return f, f, (width - 1) / 2.0, (height - 1) / 2.0


# ----------------------------------------------------------------------------------------------
# ray casting: every function takes origin o [3] and directions d [R, 3] and returns
# the nearest hit t [R] (inf: none) and the surface normal there [R, 3] (any orientation)
# ----------------------------------------------------------------------------------------------
Hit = Tuple[np.ndarray, np.ndarray]


def _nearest(candidates: List[Hit]) -> Hit:
    ts = np.stack([t for t, _ in candidates])
    which = ts.argmin(0)
    columns = np.arange(ts.shape[1])
    return ts[which, columns], np.stack([n for _, n in candidates])[which, columns]


def _quadratic_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Roots ``t1 <= t2`` of ``a t^2 + 2 b t + c = 0`` (``a > 0``); NaN where there is none."""
    disc = b * b - a * c
    root = np.sqrt(np.where(disc >= 0, disc, np.nan))
    return (-b - root) / a, (-b + root) / a


def _first_valid(t1: np.ndarray, t2: np.ndarray, ok1: np.ndarray, ok2: np.ndarray) -> np.ndarray:
    """``t1`` where it is a valid hit in front of the origin, else ``t2`` if valid, else inf."""
    ok1 = ok1 & (t1 > _EPS)
    ok2 = ok2 & (t2 > _EPS)
    return np.where(ok1, t1, np.where(ok2, t2, np.inf))


def ray_cuboid(o: np.ndarray, d: np.ndarray, center, size, open_faces: Sequence[str] = ()) -> Hit:
    """Axis-aligned box surface; faces named in ``open_faces`` ('+x', '-y', ...) are absent."""
    center, half = np.asarray(center, dtype=np.float64), np.asarray(size, dtype=np.float64) / 2
    hits: List[Hit] = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for sign in (1.0, -1.0):
            if f"{'+' if sign > 0 else '-'}{'xyz'[axis]}" in open_faces:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (center[axis] + sign * half[axis] - o[axis]) / d[:, axis]
                p = o + t[:, None] * d
                inside = np.all(np.abs(p[:, others] - center[others]) <= half[others], axis=1)
            normal = np.zeros(3)
            normal[axis] = sign
            hits.append((np.where(inside & (t > _EPS), t, np.inf), np.broadcast_to(normal, d.shape)))
    return _nearest(hits) if hits else (np.full(len(d), np.inf), np.zeros_like(d))


def ray_cylinder(
    o: np.ndarray, d: np.ndarray, center, radius: float, height: float, bottom: bool = True, top: bool = True
) -> Hit:
    """Vertical cylinder whose bottom centre is ``center``; the caps are optional (open tubes show their inside)."""
    center = np.asarray(center, dtype=np.float64)
    oc = o - center
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = oc[0] * d[:, 0] + oc[2] * d[:, 2]
    c = np.full_like(a, oc[0] ** 2 + oc[2] ** 2 - radius**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = _quadratic_roots(a, b, c)
        y1, y2 = oc[1] + t1 * d[:, 1], oc[1] + t2 * d[:, 1]
    side = _first_valid(t1, t2, (y1 >= 0) & (y1 <= height), (y2 >= 0) & (y2 <= height))
    p = oc + np.where(np.isfinite(side), side, 0.0)[:, None] * d
    hits: List[Hit] = [(side, np.stack([p[:, 0], np.zeros_like(side), p[:, 2]], 1) / radius)]
    for level, present in ((0.0, bottom), (height, top)):
        if present:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (level - oc[1]) / d[:, 1]
                q = oc + t[:, None] * d
                disc = q[:, 0] ** 2 + q[:, 2] ** 2 <= radius**2
            hits.append((np.where(disc & (t > _EPS), t, np.inf), np.broadcast_to(_UP, d.shape)))
    return _nearest(hits)


def ray_ellipsoid(o: np.ndarray, d: np.ndarray, center, radii, lower_half: bool = False) -> Hit:
    """Ellipsoid surface; ``lower_half`` keeps only the open bowl below the centre (both sides visible)."""
    center, radii = np.asarray(center, dtype=np.float64), np.asarray(radii, dtype=np.float64)
    os_, ds = (o - center) / radii, d / radii
    a = np.einsum("ij,ij->i", ds, ds)
    b = ds @ os_
    c = np.full_like(a, os_ @ os_ - 1.0)
    t1, t2 = _quadratic_roots(a, b, c)
    if lower_half:
        with np.errstate(invalid="ignore"):
            t = _first_valid(t1, t2, o[1] + t1 * d[:, 1] <= center[1], o[1] + t2 * d[:, 1] <= center[1])
    else:
        t = _first_valid(t1, t2, np.isfinite(t1), np.zeros_like(a, dtype=bool))
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, (p - center) / radii**2


def ray_spheres(o: np.ndarray, d: np.ndarray, centres: np.ndarray, radius: float) -> Hit:
    """The nearest of several equal spheres, ``centres: [K, 3]`` (outer surfaces)."""
    oc = o[None, :] - centres  # [K, 3]
    a = np.einsum("ij,ij->i", d, d)[None, :]
    b = oc @ d.T  # [K, R]
    c = np.einsum("ij,ij->i", oc, oc)[:, None] - radius**2
    t1, _ = _quadratic_roots(a, b, np.broadcast_to(c, b.shape))
    t1 = np.where(np.isfinite(t1) & (t1 > _EPS), t1, np.inf)
    which = t1.argmin(0)
    t = t1[which, np.arange(len(d))]
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, (p - centres[which]) / radius


def torus_arc_centres(center, major: float, minor: float, arc: float, plane: str, scale_z: float = 1.0) -> np.ndarray:
    """Centres ``[K, 3]`` of the chain of spheres (radius ``minor``, spaced at most ``minor``) that
    stands in for a torus arc of :mod:`pointcoc.data.demo_objects`."""
    length = arc * major * max(1.0, scale_z)
    count = max(2, int(math.ceil(length / minor)) + 1)
    start = math.pi / 2 if plane == "xy" else 0.0
    phi = start + np.linspace(-arc / 2, arc / 2, count)
    ring = np.zeros((count, 3))
    if plane == "xy":
        ring[:, 0], ring[:, 1] = major * np.cos(phi), major * np.sin(phi)
    else:
        ring[:, 0], ring[:, 2] = major * np.cos(phi), major * np.sin(phi) * scale_z
    return ring + np.asarray(center, dtype=np.float64)


def ray_shape(o: np.ndarray, d: np.ndarray, shape: Shape) -> Hit:
    """Hit of one demo-object part (:class:`pointcoc.data.demo_objects.Shape`)."""
    p = shape.params
    if shape.kind == "cuboid":
        return ray_cuboid(o, d, p["center"], p["size"], p["open_faces"])
    if shape.kind == "cylinder":
        return ray_cylinder(o, d, p["center"], p["radius"], p["height"], p["bottom"], p["top"])
    if shape.kind == "ellipsoid":
        return ray_ellipsoid(o, d, p["center"], p["radii"], p["lower_half"])
    if shape.kind == "torus_arc":
        return ray_spheres(o, d, torus_arc_centres(**p), p["minor"])
    raise ValueError(f"shape.kind must be 'cuboid', 'cylinder', 'ellipsoid' or 'torus_arc', got {shape.kind!r}")


def ray_floor(o: np.ndarray, d: np.ndarray, level: float = 0.0) -> Hit:
    """The horizontal plane ``y = level``, seen from either side."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (level - o[1]) / d[:, 1]
    return np.where(t > _EPS, t, np.inf), np.broadcast_to(_UP, d.shape)


def cast_rays(
    o: np.ndarray, d: np.ndarray, shapes: Sequence[Shape], floor: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest surface along every ray among the floor (``y = 0``, when ``floor``) and ``shapes``.

    Returns ``t [R]`` (inf: nothing hit), unit normals ``[R, 3]`` turned towards the camera,
    and ``which [R]`` int64: -1 nothing, 0 the floor, ``1 + j`` part ``j`` of ``shapes``.
    """
    o, d = np.asarray(o, dtype=np.float64), np.asarray(d, dtype=np.float64)
    candidates = [ray_floor(o, d) if floor else (np.full(len(d), np.inf), np.zeros_like(d))]
    candidates += [ray_shape(o, d, shape) for shape in shapes]
    ts = np.stack([t for t, _ in candidates])
    which = ts.argmin(0)
    columns = np.arange(len(d))
    t = ts[which, columns]
    normal = np.stack([n for _, n in candidates])[which, columns]
    normal = normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    facing = np.einsum("ij,ij->i", normal, d)
    normal = np.where((facing > 0)[:, None], -normal, normal)
    return t, normal, np.where(np.isfinite(t), which, -1)


# ----------------------------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------------------------
def _sensor_depth(t: np.ndarray, normal: np.ndarray, d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy metric depth of a structured-light sensor; 0 where it gives no reading."""
    z = np.where(np.isfinite(t), t, 0.0)
    z = z + rng.standard_normal(len(z)) * (0.0012 + 0.0019 * (z - 0.4) ** 2)
    cosine = -np.einsum("ij,ij->i", normal, d) / np.linalg.norm(d, axis=1)
    readable = np.isfinite(t) & (t <= MAX_RANGE) & (cosine > 0.1) & (rng.random(len(z)) >= 0.02)
    return np.where(readable, z, 0.0)


def render(
    camera: Camera,
    shapes: Sequence[Shape],
    colours: np.ndarray,
    floor_colour: Sequence[float],
    background: Sequence[float],
    light: Sequence[float],
    rng: np.random.Generator | None = None,
    ambient: float = 0.35,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``shapes`` (part ``j`` in colour ``colours[j]``, RGB in [0, 1]) on the floor ``y = 0``.

    Lambert shading with the unit ``light`` direction (towards the light) plus ``ambient``;
    rays that hit nothing within :data:`MAX_RANGE` show ``background``. With ``rng`` the frame
    gets sensor noise (colour noise, depth noise and dropouts, see the module notes); without
    it colour and depth are exact.

    Returns ``rgb uint8 [H, W, 3]``, ``depth uint16 [H, W]`` (millimetres, 0 = no reading) and
    ``which int64 [H, W]`` (-1 background, 0 floor, ``1 + j`` part ``j``).
    """
    d = camera.rays()
    t, normal, which = cast_rays(camera.origin, d, shapes)
    which = np.where(t <= MAX_RANGE, which, -1)
    albedo = np.concatenate([np.asarray(floor_colour, dtype=np.float64)[None], np.asarray(colours, dtype=np.float64)])
    light = np.asarray(light, dtype=np.float64) / np.linalg.norm(light)
    shade = ambient + (1.0 - ambient) * np.clip(normal @ light, 0.0, 1.0)
    colour = np.where((which >= 0)[:, None], albedo[np.maximum(which, 0)] * shade[:, None], np.asarray(background))
    if rng is not None:
        colour = colour + rng.normal(scale=0.01, size=colour.shape)
        z = _sensor_depth(np.where(which >= 0, t, np.inf), normal, d, rng)
    else:
        z = np.where(which >= 0, t, 0.0)
    shape = (camera.height, camera.width)
    rgb = np.rint(np.clip(colour, 0.0, 1.0) * 255).astype(np.uint8).reshape(*shape, 3)
    depth = np.rint(np.clip(z * DEPTH_SCALE, 0, 65535)).astype(np.uint16).reshape(shape)
    return rgb, depth, which.reshape(shape)


def _bounds(shape: Shape) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds ``(lo, hi)`` of one part."""
    p = shape.params
    c = np.asarray(p["center"], dtype=np.float64)
    if shape.kind == "cuboid":
        half = np.asarray(p["size"]) / 2
        return c - half, c + half
    if shape.kind == "cylinder":
        r, h = p["radius"], p["height"]
        return c - (r, 0.0, r), c + (r, h, r)
    if shape.kind == "ellipsoid":
        radii = np.asarray(p["radii"], dtype=np.float64)
        return c - radii, c + (radii * (1, 0, 1) if p["lower_half"] else radii)
    centres = torus_arc_centres(**p)
    pad = p["minor"] * max(1.0, p["scale_z"])  # the sampled tube is stretched along z with the ring
    return centres.min(0) - pad, centres.max(0) + pad


def _object_colours(count: int, rng: np.random.Generator) -> np.ndarray:
    """A random object colour, varied a little per part: ``[count, 3]`` in [0, 1]."""
    base = rng.uniform(0.15, 0.95, size=3)
    return np.clip(base + rng.normal(scale=0.08, size=(count, 3)), 0.05, 1.0)


def _random_camera(lo: np.ndarray, hi: np.ndarray, height: int, width: int, rng: np.random.Generator) -> Camera:
    """A camera framing the box ``[lo, hi]`` from a random side, 10-50 degrees above it."""
    fx, fy, cx, cy = _pinhole(height, width, FIELD_OF_VIEW)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    half_fov = math.radians(FIELD_OF_VIEW) / 2
    distance = radius / math.sin(half_fov) * rng.uniform(0.85, 1.25)
    azimuth, elevation = rng.uniform(0.0, 2 * math.pi), math.radians(rng.uniform(10.0, 50.0))
    target = (lo + hi) / 2 + rng.normal(scale=0.08 * radius, size=3)
    direction = np.array(
        [math.cos(elevation) * math.cos(azimuth), math.sin(elevation), math.cos(elevation) * math.sin(azimuth)]
    )
    origin = target + distance * direction
    rotation = look_at(origin, target, roll=math.radians(rng.uniform(-5.0, 5.0)))
    return Camera(fx, fy, cx, cy, height, width, rotation, origin)


def render_object_frame(
    class_index: int, rng: np.random.Generator, height: int = 32, width: int = 32, noise: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Camera]:
    """One random frame of a class-``class_index`` demo object (see the module notes).

    Returns ``rgb uint8 [H, W, 3]``, ``depth uint16 [H, W]`` (millimetres), ``which [H, W]``
    (-1 background, 0 floor, >= 1 object part) and the :class:`Camera`.
    """
    shapes = object_shapes(class_index, rng)
    bounds = [_bounds(s) for s in shapes]
    lo, hi = np.min([b[0] for b in bounds], axis=0), np.max([b[1] for b in bounds], axis=0)
    camera = _random_camera(lo, hi, height, width, rng)
    colours = _object_colours(len(shapes), rng)
    floor_colour = rng.uniform(0.25, 0.85) * rng.uniform(0.8, 1.0, size=3)
    background = rng.uniform(0.3, 1.0, size=3)
    azimuth, elevation = rng.uniform(0.0, 2 * math.pi), math.radians(rng.uniform(30.0, 80.0))
    light = (math.cos(elevation) * math.cos(azimuth), math.sin(elevation), math.cos(elevation) * math.sin(azimuth))
    rgb, depth, which = render(camera, shapes, colours, floor_colour, background, light, rng if noise else None)
    return rgb, depth, which, camera


@dataclass(frozen=True)
class RGBDFrames:
    """A set of rendered frames sharing one camera model.

    ``rgb uint8 [S, H, W, 3]``, ``depth uint16 [S, H, W]`` (raw units, :attr:`depth_scale`
    per metre, 0 = no reading), ``label int64 [S]``, ``object_mask bool [S, H, W]`` (pixels
    showing the object) and ``intrinsics`` ``(fx, fy, cx, cy)`` in pixels.
    """

    rgb: np.ndarray
    depth: np.ndarray
    label: np.ndarray
    object_mask: np.ndarray
    intrinsics: Tuple[float, float, float, float]
    depth_scale: float = DEPTH_SCALE

    def __len__(self) -> int:
        return len(self.label)


def generate_frames(
    per_class: int, seed: int = 0, split: str = "train", height: int = 32, width: int = 32, noise: bool = True
) -> RGBDFrames:
    """``per_class`` frames of each of the 15 classes for ``split`` (``'train'`` or ``'test'``).

    Frame ``i`` comes from the seed sequence ``(seed, split, i)``; labels are ``i % 15``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    total = per_class * len(CLASS_NAMES)
    label = np.arange(total, dtype=np.int64) % len(CLASS_NAMES)
    rgb = np.empty((total, height, width, 3), dtype=np.uint8)
    depth = np.empty((total, height, width), dtype=np.uint16)
    mask = np.empty((total, height, width), dtype=bool)
    split_id = 0 if split == "train" else 1
    for i in range(total):  # one frame per iteration; every frame is vectorised over its pixels
        rgb[i], depth[i], which, _ = render_object_frame(
            int(label[i]), np.random.default_rng([seed, split_id, i]), height, width, noise
        )
        mask[i] = which >= 1
    return RGBDFrames(rgb, depth, label, mask, _pinhole(height, width, FIELD_OF_VIEW))
