"""Seeing the clusters: record which centre every point joins and draw it.

A context-cluster layer assigns each point of its stage to one centre per head
(docs/design.md §5). :func:`record_assignments` runs a CoC model once and returns
that assignment for a chosen stage / block together with the stage's point
positions. :func:`point_clusters` carries it back to the *input* points (every
input point takes the cluster of its nearest stage point, by position, within
its own sample), and then

* :func:`cluster_map` paints an image at the input's own size (each pixel in
  its cluster's :func:`palette` colour, optionally blended over the input;
  pixels that are not points - masked or dropped - in the background colour),
* :func:`head_grid` tiles the maps of several heads into one picture
  (:func:`tile_columns` picks a layout with few empty tiles),
* :func:`depth_preview` turns a raw depth map (e.g. a 16-bit millimetre PNG, which
  looks black in a viewer) into a viewable colour picture,
* :func:`point_cloud_image` / :func:`render_point_cloud` draw 3-D points
  (matplotlib's 3-D scatter when matplotlib is installed, otherwise an
  orthographic z-buffered projection with PIL),
* :func:`save_png` writes a PNG atomically (:func:`pointcoc._files.atomic_write`),
* :func:`write_ply` / :func:`read_ply` store coloured point clouds as ASCII PLY
  for point-cloud viewers (MeshLab, CloudCompare, Open3D).

Cluster ids are *sample-local*: ``region * c + j`` for centre ``j`` of region
``region`` (``c`` centres per region), so the same id has the same colour in
every sample. matplotlib is optional (``pip install pointcoc[viz]``) and only
imported when a point cloud is drawn with it.
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ._files import atomic_write
from .models.coc import ContextClusterNet
from .ops.knn import knn_padded

__all__ = [
    "BACKGROUND",
    "StageAssignment",
    "palette",
    "record_assignments",
    "point_clusters",
    "cluster_colours",
    "input_image",
    "cluster_map",
    "tile_columns",
    "head_grid",
    "depth_preview",
    "save_png",
    "point_cloud_image",
    "render_point_cloud",
    "write_ply",
    "read_ply",
]

PathLike = Union[str, "os.PathLike[str]"]

BACKGROUND: Tuple[int, int, int] = (0, 0, 0)
"""Colour of pixels that are not points (no :func:`palette` colour is this one)."""

# the palette's saturation / value levels (hue follows the golden ratio); none gives black or white
_LEVELS = ((0.80, 0.95), (0.55, 0.85), (0.95, 0.70), (0.40, 0.98), (0.70, 0.55))
_GOLDEN = 0.6180339887498949


def palette(n: int) -> np.ndarray:
    """``n`` distinct colours, ``uint8 [n, 3]``; entry ``i`` is the colour of cluster id ``i``.

    Hues step by the golden ratio (neighbouring ids get far-apart hues); saturation and
    value cycle through a few levels. Every colour differs from every other one and from
    :data:`BACKGROUND`; the first ``n`` entries do not depend on ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n (number of colours) must be a non-negative int, got {n!r}")
    colours = np.empty((int(n), 3), dtype=np.uint8)
    used = {BACKGROUND}
    for i in range(int(n)):  # a loop over colours (the palette), not over points
        saturation, value = _LEVELS[i % len(_LEVELS)]
        rgb = colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, saturation, value)
        colour = tuple(int(round(255 * c)) for c in rgb)
        step = 0
        while colour in used:  # a rounding collision: nudge until unique (deterministic)
            step += 1
            colour = (colour[0], colour[1], (colour[2] + 37 * step) % 256)
        used.add(colour)
        colours[i] = colour
    return colours


@dataclass
class StageAssignment:
    """Cluster assignment of one block of one stage, recorded by :func:`record_assignments`.

    Attributes:
        assignment: ``[M, heads]`` int64 sample-local cluster id of every stage point,
            ``region * centres_per_region + j``, in ``[0, clusters_per_sample)``.
        pos: ``[M, P]`` positions of the stage points.
        batch: ``[M]`` sample of every stage point.
        num_samples: ``B``.
        regions: regions per sample.
        centres_per_region: centres per region ``c``.
        stage, block: where it was recorded.
    """

    assignment: Tensor
    pos: Tensor
    batch: Tensor
    num_samples: int
    regions: int
    centres_per_region: int
    stage: int
    block: int

    @property
    def heads(self) -> int:
        return self.assignment.size(1)

    @property
    def clusters_per_sample(self) -> int:
        """Number of cluster ids a sample can use (``regions * centres_per_region``)."""
        return self.regions * self.centres_per_region


def _check_index(value: object, name: str, size: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < size:
        raise ValueError(f"{name} must be in [0, {size}) ({size} {what}), got {value}")
    return int(value)


def record_assignments(model: nn.Module, points: Any, stage: int = 0, block: int = 0) -> StageAssignment:
    """Run ``model`` once (eval mode, no gradient) and record a block's cluster assignment.

    Args:
        model: a points-mode CoC model (:class:`pointcoc.models.coc.ContextClusterNet`, e.g.
            ``pc.create_model("coc_tiny")``), trained or not.
        points: its input (``pc.image_to_points`` output, masked / sampled pixels, RGB-D or
            any point batch the model accepts).
        stage: stage index (``0 .. len(model.config.layers) - 1``).
        block: block index inside the stage.

    Returns:
        :class:`StageAssignment` with ``assignment [M, heads]`` for the stage's ``M`` points.
        The model's training mode is restored afterwards.
    """
    if not isinstance(model, ContextClusterNet):
        raise TypeError(f"model must be a points-mode CoC model (ContextClusterNet), got {type(model).__name__}")
    layers = model.config.layers
    stage = _check_index(stage, "stage", len(layers), "stages")
    block = _check_index(block, "block", layers[stage], f"blocks in stage {stage}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            record = model.forward_intermediates(points)[stage]
    finally:
        model.train(was_training)
    geo, plan = record.geometry, record.plan
    regions = plan.num_groups // geo.num_samples
    c = plan.num_centres
    local = record.assignments[block] - (geo.batch * (regions * c)).unsqueeze(1)
    return StageAssignment(
        assignment=local,
        pos=geo.pos,
        batch=geo.batch,
        num_samples=geo.num_samples,
        regions=regions,
        centres_per_region=c,
        stage=stage,
        block=block,
    )


def _point_batch(points: Any, name: str = "points") -> Tuple[Tensor, Tensor]:
    pos = getattr(points, "pos", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2:
        raise TypeError(f"{name} must carry pos [N, P] (a point batch, e.g. from pc.image_to_points)")
    batch = getattr(points, "batch", None)
    if batch is None:
        batch = torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
    return pos, batch


def point_clusters(record: StageAssignment, points: Any, head: int = 0) -> Tensor:
    """Cluster id of every input point: the id of its nearest stage point (same sample).

    Args:
        record: from :func:`record_assignments` on these ``points``.
        points: the input point batch (``pos [N, P]``, ``batch [N]``).
        head: which head's assignment.

    Returns:
        ``[N]`` int64 sample-local cluster ids. Nearest = smallest squared distance,
        ties to the lower stage point index.
    """
    head = _check_index(head, "head", record.heads, "heads")
    pos, batch = _point_batch(points)
    if pos.size(1) != record.pos.size(1):
        raise ValueError(f"points.pos has {pos.size(1)} coordinates but the stage points have {record.pos.size(1)}")
    stage_pos = record.pos.to(device=pos.device, dtype=pos.dtype)
    nearest, _ = knn_padded(stage_pos, pos, 1, record.batch.to(pos.device), batch.long())
    return record.assignment[:, head].to(pos.device)[nearest[:, 0]]


def cluster_colours(record: StageAssignment, points: Any, head: int = 0) -> np.ndarray:
    """``uint8 [N, 3]`` :func:`palette` colour of every input point's cluster."""
    ids = point_clusters(record, points, head).cpu().numpy()
    return palette(record.clusters_per_sample)[ids]


def _as_rgb_unit(x: Tensor) -> Tensor:
    """Point features ``[N, C]`` -> ``[N, 3]`` colours in [0, 1] (gray repeated, extra channels dropped)."""
    x = x.detach().float()
    x = x.expand(-1, 3) if x.size(1) == 1 else x[:, :3]
    if x.size(1) == 2:
        x = torch.cat([x, x[:, :1]], dim=1)
    return x.clamp(0.0, 1.0)


def _sample_grid(points: Any, sample: int) -> Tuple[Tensor, int, int]:
    pixel, grid_size = getattr(points, "pixel", None), getattr(points, "grid_size", None)
    if not isinstance(pixel, Tensor) or not isinstance(grid_size, Tensor):
        raise ValueError("points must carry pixel [N, 2] and grid_size [B, 2] (image points from pc.image_to_points)")
    grid_size = grid_size.view(-1, 2)
    sample = _check_index(sample, "sample", grid_size.size(0), "samples")
    height, width = (int(v) for v in grid_size[sample].tolist())
    return pixel, height, width


def input_image(points: Any, sample: int = 0, background: Sequence[int] = BACKGROUND) -> np.ndarray:
    """The input image of one sample rebuilt from its points, ``uint8 [H, W, 3]``.

    Point features are read as colours in [0, 1] (gray repeated, channels past the third
    dropped); pixels that are not points get ``background``.
    """
    pixel, height, width = _sample_grid(points, sample)
    _, batch = _point_batch(points)
    keep = (batch == sample).cpu()
    rgb = (_as_rgb_unit(points.x).cpu()[keep] * 255.0).round().to(torch.uint8).numpy()
    return _paint(pixel.cpu()[keep].numpy(), rgb, height, width, background)


def _paint(pixel: np.ndarray, colours: np.ndarray, height: int, width: int, background: Sequence[int]) -> np.ndarray:
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = np.asarray(background, dtype=np.uint8)
    canvas[pixel[:, 0], pixel[:, 1]] = colours
    return canvas


def cluster_map(
    record: StageAssignment,
    points: Any,
    head: int = 0,
    sample: int = 0,
    alpha: float = 1.0,
    background: Sequence[int] = BACKGROUND,
) -> np.ndarray:
    """Clustering map of one image sample at the input's own size, ``uint8 [H, W, 3]``.

    Args:
        record: from :func:`record_assignments` on ``points``.
        points: image points (``pixel [N, 2]``, ``grid_size [B, 2]``; full, masked or sampled).
        head: which head.
        sample: which sample of the batch.
        alpha: opacity of the cluster colours over the input: ``1`` = pure cluster colours
            (pixel colour = ``palette(record.clusters_per_sample)[cluster id]``), ``0`` = the input.
        background: colour of pixels that are not points.
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    pixel, height, width = _sample_grid(points, sample)
    _, batch = _point_batch(points)
    keep = (batch == sample).cpu()
    colours = palette(record.clusters_per_sample)[point_clusters(record, points, head).cpu()[keep].numpy()]
    if alpha < 1.0:
        image = _as_rgb_unit(points.x).cpu()[keep].numpy() * 255.0
        colours = np.rint(alpha * colours + (1.0 - alpha) * image).clip(0, 255).astype(np.uint8)
    return _paint(pixel.cpu()[keep].numpy(), colours, height, width, background)


def tile_columns(n: int) -> int:
    """Columns of a tidy layout for ``n`` equal tiles.

    Among ``c = ceil(sqrt(n)) .. 2 * ceil(sqrt(n))`` (at most ``n``) columns, the one that
    leaves the fewest empty tiles in the last row, then the fewest columns: 4 tiles give
    2 x 2, 5 one row of 5, 9 give 3 x 3, 13 give 2 rows of 7.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of tiles) must be a positive int, got {n!r}")
    low = int(np.ceil(np.sqrt(n)))
    candidates = range(low, min(int(n), 2 * low) + 1)
    return min(candidates, key=lambda c: (-(-n // c) * c - n, c))


def head_grid(
    maps: Sequence[np.ndarray], columns: Optional[int] = None, gap: int = 2, gap_colour: Sequence[int] = (255, 255, 255)
) -> np.ndarray:
    """Tile equally sized ``uint8 [H, W, 3]`` maps row by row into one ``uint8`` picture.

    ``columns`` defaults to :func:`tile_columns` of the number of maps; tiles are separated
    by ``gap`` pixels of ``gap_colour``.
    """
    if len(maps) == 0:
        raise ValueError("maps must hold at least one map")
    shape = maps[0].shape
    if any(m.shape != shape for m in maps) or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"maps must all be [H, W, 3] of one size, got {[m.shape for m in maps]}")
    n = len(maps)
    columns = columns or tile_columns(n)
    rows = -(-n // columns)
    height, width = shape[0], shape[1]
    out = np.empty((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), dtype=np.uint8)
    out[:] = np.asarray(gap_colour, dtype=np.uint8)
    for i, m in enumerate(maps):
        r, c = divmod(i, columns)
        out[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = m
    return out


# depth colour ramp, far -> near (none of them black: black marks pixels without depth)
_DEPTH_RAMP = np.array([[25, 30, 95], [30, 110, 160], [60, 175, 120], [200, 215, 70], [255, 245, 190]], np.float64)


def depth_preview(depth: Union[Tensor, np.ndarray, PathLike], low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """A viewable colour picture of a depth map, ``uint8 [H, W, 3]``.

    A raw depth PNG (16-bit millimetres, as ``examples/rgbd.py`` writes) looks black in an
    image viewer. Here valid depths (finite, > 0) are stretched between their ``low`` and
    ``high`` percentiles (values outside clip) and coloured along a ramp from dark blue
    (far) to pale yellow (near); pixels without depth are :data:`BACKGROUND` (black), which
    no depth colour is. One valid value, or all equal, gives the nearest colour.

    Args:
        depth: ``[H, W]`` (or ``[1, H, W]``) array / tensor of any numeric dtype, or the path
            of a depth image (read as raw values).
        low, high: percentiles mapped to the far and near ends, ``0 <= low < high <= 100``.
    """
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 <= low < high <= 100):
        raise ValueError(f"low and high must be percentiles with 0 <= low < high <= 100, got {low!r}, {high!r}")
    if isinstance(depth, (str, os.PathLike)):
        with Image.open(depth) as image:
            depth = np.array(image)
    array = depth.detach().cpu().numpy() if isinstance(depth, Tensor) else np.asarray(depth)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
        raise ValueError(f"depth must be a real [H, W] array, got {array.dtype} {array.shape}")
    z = array.astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    out = np.empty(z.shape + (3,), dtype=np.uint8)
    out[:] = np.asarray(BACKGROUND, dtype=np.uint8)
    if valid.any():
        far, near = np.percentile(z[valid], [high, low])
        span = far - near
        t = np.ones(int(valid.sum())) if span <= 0 else np.clip((far - z[valid]) / span, 0.0, 1.0)
        stops = np.linspace(0.0, 1.0, len(_DEPTH_RAMP))
        ramp = np.stack([np.interp(t, stops, _DEPTH_RAMP[:, ch]) for ch in range(3)], axis=1)
        out[valid] = np.rint(ramp).astype(np.uint8)
    return out


def save_png(image: np.ndarray, path: PathLike) -> Path:
    """Write ``uint8 [H, W, 3]`` (or ``[H, W]`` gray) as a PNG, atomically. Returns the path."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image must be uint8 [H, W], [H, W, 3] or [H, W, 4], got {image.dtype} {image.shape}")
    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG", optimize=True))


def _rotation(elev: float, azim: float) -> np.ndarray:
    """World -> view rotation of a camera at elevation ``elev`` / azimuth ``azim`` (degrees), z up."""
    a, e = np.deg2rad(azim), np.deg2rad(elev)
    right = np.array([-np.sin(a), np.cos(a), 0.0])
    toward = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])  # towards the viewer
    up = np.cross(toward, right)
    return np.stack([right, up, toward])


def _render_pil(
    pos: np.ndarray,
    colours: np.ndarray,
    size: Tuple[int, int],
    elev: float,
    azim: float,
    point_size: int,
    background: Sequence[int],
) -> np.ndarray:
    """Orthographic z-buffered projection of the points (nearest point wins each pixel)."""
    width, height = size
    view = (pos - pos.mean(0)) @ _rotation(elev, azim).T  # [N, 3] (right, up, toward viewer)
    extent = max(np.ptp(view[:, 0]), np.ptp(view[:, 1]), 1e-12)
    scale = 0.9 * min(width, height) / extent
    col = np.round(width / 2 + view[:, 0] * scale).astype(np.int64)
    row = np.round(height / 2 - view[:, 1] * scale).astype(np.int64)
    offsets = np.arange(point_size) - point_size // 2
    dr, dc = (g.reshape(-1) for g in np.meshgrid(offsets, offsets, indexing="ij"))
    rows, cols = (row[:, None] + dr).reshape(-1), (col[:, None] + dc).reshape(-1)
    depth = np.repeat(-view[:, 2], dr.size)  # smaller = nearer to the viewer
    idx = np.repeat(np.arange(pos.shape[0]), dr.size)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    rows, cols, depth, idx = rows[inside], cols[inside], depth[inside], idx[inside]
    cell = rows * width + cols
    order = np.lexsort((idx, depth, cell))  # per pixel: nearest first, ties by point index
    first = order[np.unique(cell[order], return_index=True)[1]]
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = np.asarray(background, dtype=np.uint8)
    canvas[rows[first], cols[first]] = colours[idx[first]]
    return canvas


def point_cloud_image(
    pos: Union[Tensor, np.ndarray],
    colours: np.ndarray,
    size: Tuple[int, int] = (640, 480),
    elev: float = 20.0,
    azim: float = -60.0,
    point_size: int = 2,
    title: Optional[str] = None,
    backend: str = "auto",
    background: Sequence[int] = (255, 255, 255),
) -> Tuple[np.ndarray, str]:
    """Draw 3-D points ``pos [N, 3]`` in ``colours uint8 [N, 3]``; returns ``(uint8 [H, W, 3], backend)``.

    Args:
        pos, colours: the points (z is drawn up) and their colours.
        size: ``(width, height)`` in pixels.
        elev, azim: view direction in degrees (matplotlib's convention).
        point_size: marker size (pixels across for the PIL renderer).
        title: optional title (matplotlib only).
        backend: ``"matplotlib"`` (3-D scatter), ``"pil"`` (orthographic z-buffer) or ``"auto"``
            (matplotlib when installed).
        background: background colour (PIL renderer).
    """
    pos = pos.detach().cpu().double().numpy() if isinstance(pos, Tensor) else np.asarray(pos, dtype=np.float64)
    colours = np.asarray(colours)
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
        raise ValueError(f"pos must be a non-empty [N, 3] array, got shape {pos.shape}")
    if colours.dtype != np.uint8 or colours.shape != pos.shape:
        raise ValueError(f"colours must be uint8 [N, 3] matching pos {pos.shape}, got {colours.dtype} {colours.shape}")
    if backend not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"backend must be 'auto', 'matplotlib' or 'pil', got {backend!r}")
    if backend in ("auto", "matplotlib"):
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the 3-D projection)
        except ImportError:
            if backend == "matplotlib":
                raise
        else:
            fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)  # no pyplot: no global state
            canvas = FigureCanvasAgg(fig)
            ax = fig.add_subplot(projection="3d")
            ax.scatter(pos[:, 0], pos[:, 1], pos[:, 2], c=colours / 255.0, s=point_size, depthshade=False, linewidths=0)
            ax.set_box_aspect(np.maximum(np.ptp(pos, axis=0), 1e-9), zoom=1.35)
            ax.view_init(elev=elev, azim=azim)
            ax.set_axis_off()
            if title:
                ax.set_title(title, fontsize=10)
            fig.subplots_adjust(0, 0, 1, 0.93 if title else 1)
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[..., :3].copy(), "matplotlib"
    return _render_pil(pos, colours, size, elev, azim, point_size, background), "pil"


def render_point_cloud(pos: Union[Tensor, np.ndarray], colours: np.ndarray, path: PathLike, **kwargs: Any) -> str:
    """:func:`point_cloud_image` saved as a PNG (atomically); returns the backend used."""
    image, backend = point_cloud_image(pos, colours, **kwargs)
    save_png(image, path)
    return backend


def write_ply(path: PathLike, pos: Union[Tensor, np.ndarray], colours: Optional[np.ndarray] = None) -> Path:
    """Write points as an ASCII PLY, atomically: one ``x y z [red green blue]`` line per point.

    Args:
        path: output file.
        pos: ``[N, 3]`` float positions (written with 6 decimals).
        colours: optional ``uint8 [N, 3]`` colours (``property uchar red/green/blue``).
    """
    pos = pos.detach().cpu().double().numpy() if isinstance(pos, Tensor) else np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be [N, 3], got shape {pos.shape}")
    header = ["ply", "format ascii 1.0", f"element vertex {pos.shape[0]}"]
    header += [f"property float {axis}" for axis in "xyz"]
    if colours is None:
        table, fmt = pos, "%.6f %.6f %.6f"
    else:
        colours = np.asarray(colours)
        if colours.dtype != np.uint8 or colours.shape != pos.shape:
            found = f"{colours.dtype} {colours.shape}"
            raise ValueError(f"colours must be uint8 [N, 3] matching pos {pos.shape}, got {found}")
        header += [f"property uchar {name}" for name in ("red", "green", "blue")]
        table = np.concatenate([pos, colours.astype(np.float64)], axis=1)
        fmt = "%.6f %.6f %.6f %d %d %d"
    header.append("end_header")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write("\n".join(header) + "\n")
            np.savetxt(handle, table, fmt=fmt)

    return atomic_write(path, write)


def read_ply(path: PathLike) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read an ASCII PLY point cloud (vertex ``x y z`` and optional ``red green blue``).

    Returns ``pos float64 [N, 3]`` and ``colours uint8 [N, 3]`` (``None`` without colours).
    Raises ``ValueError`` for binary PLY, missing x/y/z or a vertex count that does not match.
    """
    with open(path, "r", encoding="ascii", errors="strict") as handle:
        if handle.readline().strip() != "ply":
            raise ValueError(f"path {os.fspath(path)!r} is not a PLY file (no 'ply' magic line)")
        count, properties, in_vertex = None, [], False
        for line in handle:
            words = line.split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format" and words[1] != "ascii":
                raise ValueError(f"only ASCII PLY is supported, {os.fspath(path)!r} is {words[1]}")
            if words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    count = int(words[2])
            elif words[0] == "property" and in_vertex:
                properties.append(words[-1])
            elif words[0] == "end_header":
                break
        if count is None or any(axis not in properties for axis in "xyz"):
            raise ValueError(f"PLY file {os.fspath(path)!r} needs a vertex element with x, y, z properties")
        empty = np.zeros((0, len(properties)))
        table = np.loadtxt(handle, dtype=np.float64, max_rows=count, ndmin=2) if count else empty
    if table.shape != (count, len(properties)):
        raise ValueError(
            f"PLY file {os.fspath(path)!r} declares {count} vertices with {len(properties)} "
            f"properties but holds a {table.shape} table"
        )
    pos = table[:, [properties.index(axis) for axis in "xyz"]]
    colours = None
    if all(name in properties for name in ("red", "green", "blue")):
        colours = table[:, [properties.index(name) for name in ("red", "green", "blue")]].astype(np.uint8)
    return pos, colours
