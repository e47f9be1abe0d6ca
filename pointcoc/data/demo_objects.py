"""A procedurally generated stand-in for ScanObjectNN, written in the same HDF5 format.

Each of the 15 ScanObjectNN classes is built from simple surface primitives
(a chair has a seat, a back and four legs; a table a top and legs; a bin is an
open cylinder with a bottom; ...), with random proportions. The object then
goes through a simulated scan:

* a camera at a random azimuth and elevation sees it: self-occlusion through a
  coarse z-buffer plus back-face culling, so only a partial view is kept;
* sometimes a cut by a random vertical plane truncates it (like the shifted
  bounding boxes of the PB_T50 variants);
* background clutter is added: a patch of floor, often a wall behind the
  object and a few small blobs, occluded by the object like the object itself;
* Gaussian sensor noise, a random rotation about the up axis (y), centring and
  scaling into the unit sphere, and a random point order (so the first ``n``
  points are a random subset, as the reference recipe assumes).

Every object has 2048 points. Object ``i`` of a split is generated from its own
seed sequence ``(seed, split, i)``, so the set is reproducible and does not
depend on the order of generation. Files follow docs/design.md §3.4: ``data``
float32 ``[S, 2048, 3]``, ``label`` int64 ``[S]``, ``mask`` int32 ``[S, 2048]``
(1 = object point, 0 = background), in the PB_T50_RS file names under
``<root>/h5_files/main_split/``, so :class:`pointcoc.data.ScanObjectNN` reads them
unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import h5py
import numpy as np
from tqdm.auto import tqdm

from .._files import atomic_write, remove_stray_temporaries
from .scanobjectnn import CLASS_NAMES, dataset_file

__all__ = [
    "DEMO_FORMAT_VERSION",
    "DEMO_POINTS",
    "Shape",
    "object_shapes",
    "generate_object",
    "generate_split",
    "write_demo_dataset",
    "ensure_demo_dataset",
]

DEMO_FORMAT_VERSION = 1
"""Bumped whenever the generator changes, so stale demo files are rebuilt."""

DEMO_POINTS = 2048
"""Points per generated object (as in ScanObjectNN)."""

_UP = 1  # index of the up axis (y)

# A sampler maps (count, rng) to (points [n,3], outward normals [n,3], two_sided [n] bool).
Sample = Tuple[np.ndarray, np.ndarray, np.ndarray]


class Shape(NamedTuple):
    """The geometry of one part, for renderers (:mod:`pointcoc.data.rgbd_frames`).

    ``kind`` is ``'cuboid'``, ``'cylinder'``, ``'ellipsoid'`` or ``'torus_arc'``; ``params``
    holds the arguments the part was built with (object frame, metres, y up).
    """

    kind: str
    params: Dict[str, Any]


class Part(NamedTuple):
    """A surface part: its area, its point sampler and (for object parts) its geometry."""

    area: float
    sample: Callable[[int, np.random.Generator], Sample]
    shape: Optional[Shape] = None


# ----------------------------------------------------------------------------- primitives
def _cuboid(center, size, open_faces: Tuple[str, ...] = ()) -> Part:
    """Surface of an axis-aligned box. ``open_faces`` drops faces: '+x', '-y', ..."""
    center = np.asarray(center, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    faces = [(axis, sign) for axis in range(3) for sign in (1.0, -1.0)]
    names = [f"{'+' if s > 0 else '-'}{'xyz'[a]}" for a, s in faces]
    keep = [f for f, nm in zip(faces, names) if nm not in open_faces]
    areas = np.array([np.prod(np.delete(size, a)) for a, _ in keep])
    two_sided = len(open_faces) > 0

    def sample(n: int, rng: np.random.Generator) -> Sample:
        which = rng.choice(len(keep), size=n, p=areas / areas.sum())
        axis = np.array([keep[w][0] for w in range(len(keep))])[which]
        sign = np.array([keep[w][1] for w in range(len(keep))])[which]
        pts = (rng.random((n, 3)) - 0.5) * size
        pts[np.arange(n), axis] = sign * size[axis] / 2
        normals = np.zeros((n, 3))
        normals[np.arange(n), axis] = sign
        return pts + center, normals, np.full(n, two_sided)

    shape = Shape("cuboid", dict(center=center, size=size, open_faces=tuple(open_faces)))
    return Part(float(areas.sum()), sample, shape)


def _cylinder(center, radius: float, height: float, bottom: bool = True, top: bool = True) -> Part:
    """Vertical cylinder standing on ``center`` (its bottom centre); caps optional."""
    center = np.asarray(center, dtype=np.float64)
    side, cap = 2 * np.pi * radius * height, np.pi * radius**2
    areas = np.array([side, cap if bottom else 0.0, cap if top else 0.0])
    two_sided = not (bottom and top)

    def sample(n: int, rng: np.random.Generator) -> Sample:
        which = rng.choice(3, size=n, p=areas / areas.sum())
        theta = rng.random(n) * 2 * np.pi
        r = np.where(which == 0, radius, radius * np.sqrt(rng.random(n)))
        y = np.where(which == 0, rng.random(n) * height, np.where(which == 1, 0.0, height))
        pts = np.stack([r * np.cos(theta), y, r * np.sin(theta)], axis=1)
        normals = np.stack([np.cos(theta), np.zeros(n), np.sin(theta)], axis=1)
        normals[which == 1] = (0.0, -1.0, 0.0)
        normals[which == 2] = (0.0, 1.0, 0.0)
        return pts + center, normals, np.full(n, two_sided)

    shape = Shape("cylinder", dict(center=center, radius=float(radius), height=float(height), bottom=bottom, top=top))
    return Part(float(areas.sum()), sample, shape)


def _ellipsoid(center, radii, lower_half: bool = False) -> Part:
    """Ellipsoid surface; ``lower_half`` keeps the open bowl below the centre."""
    center = np.asarray(center, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    a, b, c = radii
    p = 1.6075  # Knud Thomsen's approximation of the surface area
    area = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)

    def sample(n: int, rng: np.random.Generator) -> Sample:
        d = rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        if lower_half:
            d[:, _UP] = -np.abs(d[:, _UP])
        pts = d * radii
        normals = pts / radii**2
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        return pts + center, normals, np.full(n, lower_half)

    shape = Shape("ellipsoid", dict(center=center, radii=radii, lower_half=lower_half))
    return Part(float(area / 2 if lower_half else area), sample, shape)


def _torus_arc(center, major: float, minor: float, arc: float, plane: str, scale_z: float = 1.0) -> Part:
    """Tube of radius ``minor`` along a circular arc of radius ``major`` and angle ``arc``.

    ``plane`` is 'xy' (a vertical handle) or 'xz' (a horizontal ring); the arc is
    centred on the +y (xy) or spans from +x (xz) direction. ``scale_z`` stretches
    a horizontal ring into an ellipse.
    """
    center = np.asarray(center, dtype=np.float64)
    area = arc * major * 2 * np.pi * minor

    def sample(n: int, rng: np.random.Generator) -> Sample:
        phi = (rng.random(n) - 0.5) * arc + (np.pi / 2 if plane == "xy" else 0.0)
        psi = rng.random(n) * 2 * np.pi
        radial = np.stack([np.cos(phi), np.sin(phi)], axis=1)  # in-plane direction
        ring = major * radial
        tube = minor * (np.cos(psi)[:, None] * radial)
        off = minor * np.sin(psi)
        pts = np.zeros((n, 3))
        normals = np.zeros((n, 3))
        if plane == "xy":
            pts[:, 0], pts[:, 1], pts[:, 2] = ring[:, 0] + tube[:, 0], ring[:, 1] + tube[:, 1], off
            normals[:, 0], normals[:, 1], normals[:, 2] = tube[:, 0], tube[:, 1], off
        else:
            pts[:, 0], pts[:, 2], pts[:, 1] = ring[:, 0] + tube[:, 0], (ring[:, 1] + tube[:, 1]) * scale_z, off
            normals[:, 0], normals[:, 2], normals[:, 1] = tube[:, 0], tube[:, 1], off
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        return pts + center, normals, np.zeros(n, dtype=bool)

    shape = Shape(
        "torus_arc",
        dict(
            center=center, major=float(major), minor=float(minor), arc=float(arc), plane=plane, scale_z=float(scale_z)
        ),
    )
    return Part(float(area), sample, shape)


# ----------------------------------------------------------------------------- objects
def _j(rng: np.random.Generator, value: float, spread: float = 0.2) -> float:
    """``value`` jittered by a uniform factor in ``[1 - spread, 1 + spread]``."""
    return float(value * rng.uniform(1 - spread, 1 + spread))


def _legs(width: float, depth: float, height: float, thick: float, inset: float) -> List[Part]:
    xs, zs = width / 2 - inset - thick / 2, depth / 2 - inset - thick / 2
    return [_cuboid((sx * xs, height / 2, sz * zs), (thick, height, thick)) for sx in (-1, 1) for sz in (-1, 1)]


def _bag(rng):
    w, h, d = _j(rng, 0.4), _j(rng, 0.3), _j(rng, 0.16)
    parts = [_ellipsoid((0, h / 2, 0), (w / 2, h / 2, d / 2))]
    handle = _j(rng, 0.35 * w)
    parts.append(_torus_arc((0, h * 0.85, 0), handle, 0.012, np.pi * 1.1, "xy"))
    return parts


def _bin(rng):
    r, h = _j(rng, 0.18), _j(rng, 0.45)
    return [_cylinder((0, 0, 0), r, h, bottom=True, top=False)]


def _box(rng):
    base = _j(rng, 0.45)
    size = (base * rng.uniform(0.75, 1.3), base * rng.uniform(0.6, 1.1), base * rng.uniform(0.75, 1.3))
    parts = [_cuboid((0, size[1] / 2, 0), size)]
    if rng.random() < 0.4:  # lid flaps standing open
        parts.append(_cuboid((0, size[1] + size[2] * 0.25, size[2] / 2), (size[0], size[2] * 0.5, 0.01)))
        parts.append(_cuboid((0, size[1] + size[2] * 0.25, -size[2] / 2), (size[0], size[2] * 0.5, 0.01)))
    return parts


def _cabinet(rng):
    w, h, d = _j(rng, 0.7), _j(rng, 1.3), _j(rng, 0.5)
    plinth = 0.08
    parts = [_cuboid((0, plinth + h / 2, 0), (w, h, d)), _cuboid((0, plinth / 2, -0.03), (w * 0.95, plinth, d * 0.9))]
    door_w = w / 2 - 0.015
    for sx in (-1, 1):
        parts.append(_cuboid((sx * (door_w / 2 + 0.01), plinth + h / 2, d / 2 + 0.01), (door_w, h * 0.96, 0.02)))
        parts.append(_cuboid((sx * 0.05, plinth + h * 0.55, d / 2 + 0.04), (0.02, 0.12, 0.03)))
    return parts


def _chair(rng):
    w, d, h = _j(rng, 0.46), _j(rng, 0.44), _j(rng, 0.45)
    back_h, t, leg = _j(rng, 0.45), 0.05, _j(rng, 0.04)
    parts = [_cuboid((0, h - t / 2, 0), (w, t, d))]
    parts += _legs(w, d, h - t, leg, 0.01)
    parts.append(_cuboid((0, h + back_h / 2, -d / 2 + 0.025), (w, back_h, 0.05)))
    if rng.random() < 0.35:  # armrests
        for sx in (-1, 1):
            parts.append(_cuboid((sx * (w / 2 - 0.02), h + 0.22, 0), (0.04, 0.04, d * 0.9)))
            parts.append(_cuboid((sx * (w / 2 - 0.02), h + 0.11, d * 0.4), (0.03, 0.22, 0.03)))
    return parts


def _desk(rng):
    w, d, h = _j(rng, 1.3), _j(rng, 0.65), _j(rng, 0.75, 0.08)
    t = 0.04
    ped_w = _j(rng, 0.42)
    side = 1 if rng.random() < 0.5 else -1
    parts = [_cuboid((0, h - t / 2, 0), (w, t, d))]
    parts.append(_cuboid((side * (w / 2 - ped_w / 2), (h - t) / 2, 0), (ped_w, h - t, d * 0.95)))
    for k in range(3):  # drawer fronts
        parts.append(
            _cuboid(
                (side * (w / 2 - ped_w / 2), (h - t) * (k + 0.5) / 3, d * 0.475 + 0.01),
                (ped_w * 0.9, (h - t) / 3 * 0.85, 0.02),
            )
        )
    parts.append(_cuboid((-side * (w / 2 - 0.02), (h - t) / 2, 0), (0.04, h - t, d * 0.95)))
    parts.append(_cuboid((0, h - t - 0.2, -d / 2 + 0.02), (w - ped_w, 0.4, 0.02)))
    return parts


def _display(rng):
    w, h = _j(rng, 0.6), _j(rng, 0.36)
    lift = _j(rng, 0.12)
    return [
        _cuboid((0, lift + h / 2, 0), (w, h, 0.03)),
        _cuboid((0, lift + h / 2, -0.035), (w * 0.4, h * 0.4, 0.04)),
        _cylinder((0, 0.01, -0.05), 0.02, lift + h / 2),
        _cuboid((0, 0.008, -0.05), (_j(rng, 0.24), 0.016, _j(rng, 0.16))),
    ]


def _door(rng):
    w, h = _j(rng, 0.85, 0.1), _j(rng, 2.0, 0.08)
    side = 1 if rng.random() < 0.5 else -1
    parts = [_cuboid((0, h / 2, 0), (w, h, 0.04))]
    parts.append(_ellipsoid((side * (w / 2 - 0.08), h * 0.48, 0.05), (0.03, 0.03, 0.03)))
    for sx in (-1, 1):  # frame
        parts.append(_cuboid((sx * (w / 2 + 0.04), h / 2, 0), (0.06, h + 0.06, 0.12)))
    parts.append(_cuboid((0, h + 0.04, 0), (w + 0.14, 0.06, 0.12)))
    return parts


def _shelf(rng):
    w, h, d = _j(rng, 0.8), _j(rng, 1.5), _j(rng, 0.32)
    boards = int(rng.integers(3, 6))
    t = 0.02
    parts = [_cuboid((sx * (w / 2 - t / 2), h / 2, 0), (t, h, d)) for sx in (-1, 1)]
    for k in range(boards):
        y = t / 2 + (h - t) * k / (boards - 1)
        parts.append(_cuboid((0, y, 0), (w - 2 * t, t, d)))
    if rng.random() < 0.6:
        parts.append(_cuboid((0, h / 2, -d / 2 + 0.005), (w - 2 * t, h, 0.01)))
    return parts


def _table(rng):
    h, t = _j(rng, 0.74, 0.08), 0.04
    if rng.random() < 0.3:  # round top on a pedestal
        r = _j(rng, 0.45)
        return [
            _cylinder((0, h - t, 0), r, t),
            _cylinder((0, 0.03, 0), 0.05, h - t - 0.03),
            _cylinder((0, 0, 0), r * 0.5, 0.03),
        ]
    w, d = _j(rng, 1.2, 0.25), _j(rng, 0.8)
    return [_cuboid((0, h - t / 2, 0), (w, t, d))] + _legs(w, d, h - t, _j(rng, 0.06), 0.03)


def _bed(rng):
    w, length, hm = _j(rng, 1.5), _j(rng, 2.0, 0.1), _j(rng, 0.5)
    head = _j(rng, 1.0)
    parts = [
        _cuboid((0, hm / 2, 0), (w, hm, length)),
        _cuboid((0, head / 2, -length / 2 - 0.03), (w + 0.04, head, 0.06)),
    ]
    if rng.random() < 0.6:  # a pillow at the head end
        parts.append(_ellipsoid((0, hm + 0.06, -length / 2 + 0.3), (w * 0.35, 0.07, 0.2)))
    if rng.random() < 0.5:  # footboard
        parts.append(_cuboid((0, 0.3, length / 2 + 0.03), (w + 0.04, 0.6, 0.06)))
    return parts


def _pillow(rng):
    return [_ellipsoid((0, 0.07, 0), (_j(rng, 0.32), _j(rng, 0.07), _j(rng, 0.22)))]


def _sink(rng):
    rx, ry, rz = _j(rng, 0.26), _j(rng, 0.15), _j(rng, 0.2)
    top = _j(rng, 0.85, 0.06)
    parts = [
        _ellipsoid((0, top, 0), (rx, ry, rz), lower_half=True),
        _torus_arc((0, top, 0), rx, 0.02, 2 * np.pi, "xz", scale_z=rz / rx),
        _cylinder((0, top - ry + 0.01, -0.02 * rz), 0.03, 0.04, top=False),
        _cylinder((0, top, -rz - 0.05), 0.018, 0.2),
        _cuboid((0, top + 0.19, -rz + 0.0), (0.03, 0.03, 0.12)),
    ]
    if rng.random() < 0.5:  # pedestal
        parts.append(_cylinder((0, 0, 0), _j(rng, 0.09), top - ry * 0.8))
    else:  # vanity cabinet under the bowl
        parts.append(_cuboid((0, (top - ry) / 2, 0), (rx * 2.2, top - ry, rz * 2.2), open_faces=("+y",)))
    return parts


def _sofa(rng):
    w, d, hs = _j(rng, 2.0), _j(rng, 0.9), _j(rng, 0.42)
    back_h, arm_w, arm_h = _j(rng, 0.42), _j(rng, 0.2), _j(rng, 0.22)
    return [
        _cuboid((0, hs / 2, 0), (w, hs, d)),
        _cuboid((0, hs + back_h / 2, -d / 2 + 0.11), (w, back_h, 0.22)),
        _cuboid((-(w / 2 - arm_w / 2), hs + arm_h / 2, 0), (arm_w, arm_h, d)),
        _cuboid((w / 2 - arm_w / 2, hs + arm_h / 2, 0), (arm_w, arm_h, d)),
    ]


def _toilet(rng):
    seat_h, r = _j(rng, 0.4, 0.08), _j(rng, 0.19, 0.1)
    tank_w, tank_h, tank_d = _j(rng, 0.42), _j(rng, 0.36), _j(rng, 0.18)
    return [
        _ellipsoid((0, seat_h, 0.05), (r, _j(rng, 0.22), r * 1.3), lower_half=True),
        _torus_arc((0, seat_h + 0.02, 0.05), r, 0.025, 2 * np.pi, "xz", scale_z=1.3),
        _cylinder((0, 0, 0.03), r * 0.6, seat_h - 0.15),
        _cuboid((0, seat_h + tank_h / 2 - 0.05, -r * 1.3 - tank_d / 2 + 0.02), (tank_w, tank_h, tank_d)),
    ]


_BUILDERS = {
    "bag": _bag,
    "bin": _bin,
    "box": _box,
    "cabinet": _cabinet,
    "chair": _chair,
    "desk": _desk,
    "display": _display,
    "door": _door,
    "shelf": _shelf,
    "table": _table,
    "bed": _bed,
    "pillow": _pillow,
    "sink": _sink,
    "sofa": _sofa,
    "toilet": _toilet,
}


def _sample_parts(parts: List[Part], n: int, rng: np.random.Generator) -> Sample:
    """Sample ``n`` surface points from ``parts``, proportionally to their areas."""
    areas = np.array([part.area for part in parts])
    counts = rng.multinomial(n, areas / areas.sum())
    out = [part.sample(int(c), rng) for part, c in zip(parts, counts) if c > 0]
    return tuple(np.concatenate(arrays) for arrays in zip(*out))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- scanning
def _background(lo: np.ndarray, hi: np.ndarray, n: int, rng: np.random.Generator, wall_dir: np.ndarray) -> Sample:
    """Floor patch under the object, often a wall behind it, and a few clutter blobs."""
    extent = hi - lo
    margin = extent * rng.uniform(0.15, 0.45, size=3)
    parts: List[Part] = []
    floor_size = (extent[0] + 2 * margin[0], 0.01, extent[2] + 2 * margin[2])
    floor_c = ((lo[0] + hi[0]) / 2, lo[1] - 0.005, (lo[2] + hi[2]) / 2)
    parts.append(_cuboid(floor_c, floor_size, open_faces=("-y", "+x", "-x", "+z", "-z")))
    if rng.random() < 0.6:  # a wall behind the object, seen from the camera
        dist = 0.5 * float(np.hypot(extent[0], extent[2])) + rng.uniform(0.02, 0.2)
        c = np.array(floor_c) - dist * wall_dir
        wall_h = extent[1] * rng.uniform(0.5, 1.1)
        span = float(max(extent[0], extent[2])) * rng.uniform(1.0, 1.5)
        ang = np.arctan2(wall_dir[2], wall_dir[0])

        def wall(k: int, r: np.random.Generator, c=c, wall_h=wall_h, span=span, ang=ang) -> Sample:
            s = (r.random(k) - 0.5) * span
            y = lo[1] + r.random(k) * wall_h
            pts = np.stack([c[0] - np.sin(ang) * s, y, c[2] + np.cos(ang) * s], axis=1)
            normals = np.tile(np.array([np.cos(ang), 0.0, np.sin(ang)]), (k, 1))
            return pts, normals, np.ones(k, dtype=bool)

        parts.append(Part(span * wall_h, wall))
    for _ in range(int(rng.integers(0, 4))):  # clutter blobs near the object on the floor
        pos = lo + rng.random(3) * extent
        side = rng.integers(0, 2)
        pos[[0, 2][side]] = (lo if rng.random() < 0.5 else hi)[[0, 2][side]]
        radii = extent.max() * rng.uniform(0.04, 0.15, size=3)
        pos[1] = lo[1] + radii[1]
        parts.append(_ellipsoid(pos, radii))
    return _sample_parts(parts, n, rng)


def _visible(pts: np.ndarray, normals: np.ndarray, two_sided: np.ndarray, view: np.ndarray, cell: float) -> np.ndarray:
    """Points seen from direction ``view`` (unit, object -> camera): z-buffer and back-face test."""
    helper = np.array([0.0, 1.0, 0.0]) if abs(view[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(view, helper)
    u /= np.linalg.norm(u)
    v = np.cross(view, u)
    depth = pts @ view
    iu = np.floor((pts @ u) / cell).astype(np.int64)
    iv = np.floor((pts @ v) / cell).astype(np.int64)
    iu -= iu.min()
    iv -= iv.min()
    flat = iu * (int(iv.max()) + 1) + iv
    front = np.full(int(flat.max()) + 1, -np.inf)
    np.maximum.at(front, flat, depth)
    seen = depth >= front[flat] - 1.5 * cell
    facing = (normals @ view) > -0.05
    return seen & (facing | two_sided)


def _check_class(class_index: int) -> None:
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index must be in [0, {len(CLASS_NAMES)}), got {class_index}")


def object_shapes(class_index: int, rng: np.random.Generator) -> List[Shape]:
    """The parts of one random object of class ``class_index`` (object frame: y up, standing on y = 0).

    Draws the same proportions from ``rng`` as :func:`generate_object` does first.
    """
    _check_class(class_index)
    return [part.shape for part in _BUILDERS[CLASS_NAMES[class_index]](rng)]


def generate_object(
    class_index: int, rng: np.random.Generator, num_points: int = DEMO_POINTS
) -> Tuple[np.ndarray, np.ndarray]:
    """Build one scanned-looking object of class ``class_index``.

    Returns ``points: [num_points, 3]`` float32 (in the unit sphere, y up, random
    order) and ``mask: [num_points]`` int32 (1 = object, 0 = background).
    """
    _check_class(class_index)
    parts = _BUILDERS[CLASS_NAMES[class_index]](rng)
    obj, obj_n, obj_two = _sample_parts(parts, 4 * num_points, rng)
    lo, hi = obj.min(axis=0), obj.max(axis=0)
    extent = float((hi - lo).max())

    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(10, 55))
    view = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)])
    horizontal = np.array([view[0], 0.0, view[2]]) / np.cos(elevation)
    bg, bg_n, bg_two = _background(lo, hi, 2 * num_points, rng, horizontal)

    pts = np.concatenate([obj, bg])
    is_obj = np.concatenate([np.ones(len(obj), dtype=bool), np.zeros(len(bg), dtype=bool)])
    keep = _visible(pts, np.concatenate([obj_n, bg_n]), np.concatenate([obj_two, bg_two]), view, 0.03 * extent)
    if rng.random() < 0.5:  # truncation by a vertical plane, as a shifted bounding box does
        cut_dir = rng.standard_normal(3)
        cut_dir[_UP] = 0.0
        cut_dir /= np.linalg.norm(cut_dir)
        proj = pts @ cut_dir
        keep &= proj <= np.quantile(proj[is_obj & keep], rng.uniform(0.75, 0.95))

    n_bg = int(num_points * rng.uniform(0.08, 0.3))
    choose_obj = np.flatnonzero(keep & is_obj)
    choose_bg = np.flatnonzero(keep & ~is_obj)
    if len(choose_bg) == 0:
        n_bg = 0
    take_obj = rng.choice(choose_obj, size=num_points - n_bg, replace=len(choose_obj) < num_points - n_bg)
    take_bg = rng.choice(choose_bg, size=n_bg, replace=len(choose_bg) < n_bg) if n_bg else choose_bg[:0]
    idx = np.concatenate([take_obj, take_bg])
    points = pts[idx] + rng.normal(scale=0.006 * extent, size=(len(idx), 3))
    mask = is_obj[idx].astype(np.int32)

    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    points = points @ rot.T
    points -= (points.min(axis=0) + points.max(axis=0)) / 2
    points /= np.linalg.norm(points, axis=1).max()
    order = rng.permutation(num_points)
    return points[order].astype(np.float32), mask[order]


def generate_split(
    per_class: int, seed: int, split: str, progress: bool = False
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``per_class`` objects of each class for ``split`` ('train' or 'test').

    Returns ``data: [S, 2048, 3]`` float32, ``label: [S]`` int64 and
    ``mask: [S, 2048]`` int32 with ``S = 15 * per_class``, classes interleaved.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    split_id = 0 if split == "train" else 1
    total = per_class * len(CLASS_NAMES)
    data = np.empty((total, DEMO_POINTS, 3), dtype=np.float32)
    mask = np.empty((total, DEMO_POINTS), dtype=np.int32)
    label = np.arange(total, dtype=np.int64) % len(CLASS_NAMES)
    for i in tqdm(range(total), desc=f"generating demo {split} set", unit="obj", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, split_id, i])
        data[i], mask[i] = generate_object(int(label[i]), rng)
    return data, label, mask


def _write_h5(path: Path, data: np.ndarray, label: np.ndarray, mask: np.ndarray, attrs: dict) -> None:
    """Write one split atomically (:func:`pointcoc._files.atomic_write`)."""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=label)
            f.create_dataset("mask", data=mask)
            f.attrs.update(attrs)

    atomic_write(path, write)


def _demo_attrs(per_class: int, seed: int) -> dict:
    return {"pointcoc_demo_version": DEMO_FORMAT_VERSION, "per_class": per_class, "seed": seed}


def write_demo_dataset(
    root: Union[str, Path], train_per_class: int, test_per_class: int, seed: int = 0, progress: bool = True
) -> Path:
    """Generate the demo set and write it under ``root`` in the PB_T50_RS layout; returns ``root``."""
    root = Path(root)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        data, label, mask = generate_split(per_class, seed, split, progress=progress)
        _write_h5(dataset_file(root, "PB_T50_RS", split), data, label, mask, _demo_attrs(per_class, seed))
    return root


def _matches(path: Path, attrs: dict) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return all(f.attrs.get(k) == v for k, v in attrs.items())
    except OSError:
        return False


def ensure_demo_dataset(
    root: Union[str, Path], train_per_class: int, test_per_class: int, seed: int = 0, progress: bool = True
) -> bool:
    """Make sure the demo set with these settings exists under ``root``.

    Files written earlier with the same generator version, counts and seed are
    reused. Returns True when the files were (re)generated, False when reused.
    """
    root = Path(root)
    wanted = {
        "train": _demo_attrs(train_per_class, seed),
        "test": _demo_attrs(test_per_class, seed),
    }
    for split in wanted:
        remove_stray_temporaries(dataset_file(root, "PB_T50_RS", split).parent)
    if all(_matches(dataset_file(root, "PB_T50_RS", s), a) for s, a in wanted.items()):
        return False
    write_demo_dataset(root, train_per_class, test_per_class, seed, progress)
    return True
