"""An RGB-D frame as a coloured 3-D point set, through a CoC backbone, with its clusters.

    python examples/rgbd.py                                   # synthetic frame rendered here
    python examples/rgbd.py --rgb color.png --depth depth.png --fx 525 --fy 525 --cx 319.5 --cy 239.5 \\
        --depth-scale 1000 --output outputs/my_frame

Every pixel with a valid depth (finite, > 0) becomes one point, back-projected with the
pinhole intrinsics (``X = (u - cx) z / fx``, ``Y = (v - cy) z / fy``, ``Z = z``; metres =
raw depth / ``--depth-scale``) and coloured by its RGB value (``pc.rgbd_to_points``). A
CoC backbone (``pos_dim=3``, point mode: FPS anchors, kNN reducers, FPS centres) runs on
the cloud; the stage-``--stage`` clustering is drawn.

Without ``--rgb``/``--depth`` the example renders a synthetic frame by ray casting in
numpy (``pointcoc.data.rgbd_frames``): a box, a sphere and a cylinder standing on a checkered floor, seen by a camera
tilted down; rays that leave the floor's extent hit nothing and get depth 0 (invalid),
so the cloud has holes like a real sensor's.

Writes into ``--output`` (default ``outputs/rgbd``):

* ``cloud.ply``: ASCII PLY, one ``x y z red green blue`` line per point (camera frame, metres);
* ``clusters_3d.png``: the cloud coloured by cluster (matplotlib 3-D scatter, or a PIL
  orthographic projection when matplotlib is missing);
* ``clusters_image.png``: the same clusters on the image grid (pixels without depth black);
* ``rgb.png`` and ``depth.png`` (16-bit, millimetres) of the synthetic frame, when rendered.

The backbone is untrained unless ``--checkpoint`` gives weights for the same variant with
``in_chans=3, pos_dim=3``; untrained clusters group points by position and colour.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

try:
    import pointcoc  # noqa: F401
except ModuleNotFoundError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pointcoc as pc
from pointcoc import viz
from pointcoc.data import rgbd_frames as frames
from pointcoc.data.demo_objects import Shape

__all__ = ["synthetic_frame", "build_parser", "main"]

SYNTHETIC_DEPTH_SCALE = 1000.0
"""Raw units per metre of the synthetic 16-bit depth PNG (millimetres)."""


# ----------------------------------------------------------------------------------------------
# the synthetic frame: ray casting in numpy with pointcoc.data.rgbd_frames (world frame: y up, floor y = 0)
# ----------------------------------------------------------------------------------------------
def synthetic_frame(
    height: int = 120, width: int = 160
) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float, float, float], float]:
    """Render the demo scene.

    Returns ``rgb uint8 [H, W, 3]``, ``depth uint16 [H, W]`` (millimetres, 0 = no
    surface), intrinsics ``(fx, fy, cx, cy)`` in pixels and the depth scale (raw units per metre).
    """
    fx = fy = 0.9 * width
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    pitch = np.deg2rad(24.0)
    # columns: the camera's x (right), y (down), z (forward) axes in world coordinates (y up)
    cam_to_world = np.array([[1.0, 0.0, 0.0],
                             [0.0, -np.cos(pitch), -np.sin(pitch)],
                             [0.0, -np.sin(pitch), np.cos(pitch)]]).T
    camera = frames.Camera(fx, fy, cx, cy, height, width, cam_to_world, np.array([0.0, 1.5, 0.0]))
    shapes = [
        Shape("cuboid", dict(center=np.array([-0.8, 0.4, 3.35]), size=np.array([0.9, 0.8, 0.9]), open_faces=())),
        Shape("ellipsoid", dict(center=np.array([0.55, 0.45, 2.9]), radii=np.full(3, 0.45), lower_half=False)),
        Shape("cylinder", dict(center=np.array([0.35, 0.0, 4.6]), radius=0.4, height=1.3, bottom=False, top=True)),
    ]
    colours = np.array([(0.85, 0.25, 0.20), (0.20, 0.40, 0.90), (0.25, 0.75, 0.30)])
    d = camera.rays()  # t along d is the camera-frame depth z (the rays have camera z = 1)
    t, normal, which = frames.cast_rays(camera.origin, d, shapes)
    point = camera.origin + np.where(np.isfinite(t), t, 0)[:, None] * d
    off_floor = (which == 0) & ((np.abs(point[:, 0]) >= 2.2) | (point[:, 2] >= 6.5))  # the floor ends there
    t = np.where(off_floor, np.inf, t)
    checker = ((np.floor(point[:, 0] * 2) + np.floor(point[:, 2] * 2)) % 2)[:, None]
    albedo = np.where(checker > 0, 0.80, 0.55) * np.ones((1, 3))
    albedo = np.where((which >= 1)[:, None], colours[np.maximum(which - 1, 0)], albedo)
    light = np.array([0.5, 1.0, -0.6]) / np.linalg.norm([0.5, 1.0, -0.6])
    shade = 0.35 + 0.65 * np.clip(normal @ light, 0.0, 1.0)
    sky = np.array([0.75, 0.85, 0.95])
    valid = np.isfinite(t)
    colour = np.where(valid[:, None], albedo * shade[:, None], sky)
    rgb = np.rint(colour * 255).clip(0, 255).astype(np.uint8).reshape(height, width, 3)
    depth = np.where(valid, np.rint(t * SYNTHETIC_DEPTH_SCALE), 0).clip(0, 65535).astype(np.uint16)
    return rgb, depth.reshape(height, width), (fx, fy, cx, cy), SYNTHETIC_DEPTH_SCALE


# ----------------------------------------------------------------------------------------------
# the example
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rgb", type=Path, help="colour image (PNG/JPEG); omit for the synthetic frame")
    parser.add_argument("--depth", type=Path, help="depth image (16-bit PNG of raw units)")
    for name in ("fx", "fy", "cx", "cy"):
        parser.add_argument(f"--{name}", type=float, help=f"intrinsics {name} in pixels (needed with --rgb)")
    parser.add_argument("--depth-scale", type=float, default=None,
                        help="raw depth units per metre (default 1000 = millimetres)")
    parser.add_argument("--output", type=Path, default=Path("outputs/rgbd"), help="output folder")
    parser.add_argument("--model", default="coc_tiny", help="CoC variant (pc.list_models('coc*'))")
    parser.add_argument("--checkpoint", type=Path, help="weights of the variant with in_chans=3, pos_dim=3")
    parser.add_argument("--stage", type=int, default=1, help="stage whose clustering is drawn")
    parser.add_argument("--block", type=int, default=0, help="block of that stage")
    parser.add_argument("--head", type=int, default=0, help="head of that block")
    parser.add_argument("--height", type=int, default=120, help="synthetic frame height")
    parser.add_argument("--width", type=int, default=160, help="synthetic frame width")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained weights")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; more only pay off on large inputs and idle cores)")
    return parser


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    if args.checkpoint is None:
        return pc.create_model(args.model, num_classes=0, in_chans=3, pos_dim=3, mode="point").eval()
    state = pc.convert_official_state_dict(args.model, torch.load(args.checkpoint, map_location="cpu",
                                                                  weights_only=True))
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = pc.create_model(args.model, num_classes=num_classes, in_chans=3, pos_dim=3, mode="point")
    model.load_state_dict(state)
    return model.eval()


def _save_depth_png(depth: np.ndarray, path: Path) -> Path:
    """Write a ``uint16 [H, W]`` depth map as a 16-bit gray PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(depth.astype(np.uint16)).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Run the example; returns a summary (point count, feature shape, written files)."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = args.output
    written: Dict[str, Path] = {}
    if args.rgb is None and args.depth is None:
        rgb, depth, intrinsics, depth_scale = synthetic_frame(args.height, args.width)
        written["rgb"] = viz.save_png(rgb, out / "rgb.png")
        written["depth"] = out / "depth.png"
        _save_depth_png(depth, written["depth"])
        rgb_in, depth_in = written["rgb"], written["depth"]  # read back through the file path, as real data
        print(f"synthetic frame {args.width}x{args.height}: fx={intrinsics[0]:.1f} fy={intrinsics[1]:.1f} "
              f"cx={intrinsics[2]:.1f} cy={intrinsics[3]:.1f}, depth scale {depth_scale:g}")
    else:
        missing = [n for n in ("rgb", "depth", "fx", "fy", "cx", "cy") if getattr(args, n) is None]
        if missing:
            raise SystemExit(f"error: with real files give --{' --'.join(missing)}")
        rgb_in, depth_in = np.array(Image.open(args.rgb).convert("RGB")), args.depth  # gray / RGBA -> RGB
        intrinsics, depth_scale = (args.fx, args.fy, args.cx, args.cy), args.depth_scale or 1000.0
    points = pc.rgbd_to_points(rgb_in, depth_in, intrinsics=intrinsics, depth_scale=depth_scale, mode="xyz")
    height, width = points.grid_size[0].tolist()
    print(f"{points.num_nodes} points with valid depth out of {height * width} pixels; "
          f"z in [{points.pos[:, 2].min():.2f}, {points.pos[:, 2].max():.2f}] m")
    colours = (points.x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    written["ply"] = viz.write_ply(out / "cloud.ply", points.pos, colours)

    model = _load_model(args)
    with torch.no_grad():
        features = model(points)
    print(f"{args.model} (point mode, pos_dim=3): pooled features {tuple(features.shape)}")
    record = viz.record_assignments(model, points, args.stage, args.block)
    cluster_rgb = viz.cluster_colors(record, points, args.head)
    used = len(np.unique(viz.point_clusters(record, points, args.head).numpy()))
    pos = points.pos.numpy()
    upright = np.stack([pos[:, 0], pos[:, 2], -pos[:, 1]], 1)  # camera frame -> x right, depth, up
    written["clusters_3d"] = out / "clusters_3d.png"
    backend = viz.render_point_cloud(
        upright, cluster_rgb, written["clusters_3d"], elev=12, azim=-100,
        title=f"{args.model} stage {args.stage} block {args.block} head {args.head}: {used} clusters",
    )
    written["clusters_image"] = viz.save_png(viz.cluster_map(record, points, args.head), out / "clusters_image.png")
    elapsed = time.perf_counter() - start
    for name, path in written.items():
        print(f"wrote {path} ({name})")
    print(f"3-D view drawn with {backend}; done in {elapsed:.1f} s")
    return dict(num_points=points.num_nodes, features=tuple(features.shape), clusters=used, files=written)


if __name__ == "__main__":
    main()
