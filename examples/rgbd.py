"""An RGB-D frame as a coloured 3-D point set, through a CoC backbone, with its clusters;
and (``--train``) one CoC network trained on RGB-D frames fed four ways.

    python examples/rgbd.py                                   # synthetic frame rendered here
    python examples/rgbd.py --rgb color.png --depth depth.png --fx 525 --fy 525 --cx 319.5 --cy 239.5 \\
        --depth-scale 1000 --output outputs/my_frame
    python examples/rgbd.py --train                           # the four-input table (minutes)

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

``--train`` renders frames of the 15 demo object classes (``pointcoc.data.rgbd_frames``:
random colours, pose and distance, a floor, partial views, sensor depth noise; a training
set and held-out test frames, seeded) and trains the same CoC network (``coc_mini``) from
scratch on four inputs: (i) RGB as grid-image points; (ii) RGB-D as image points with depth
(metres) as a fourth channel, pixels without a reading absent; (iii) RGB-D back-projected to
a coloured xyz cloud (point mode, ``pos_dim=3``); (iv) depth only, the xyz cloud with a
constant feature. AdamW, warm-up then cosine, label smoothing 0.1, random horizontal flips.
It prints test OA / mAcc per input and writes ``<input>.pt`` (weights and how to build the
model), ``results.json`` and ``clusters.png`` (the xyz-cloud model's clusters on a held-out
frame, on the image and in 3-D) into ``--output`` (default ``outputs/rgbd_train``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch_geometric.data import Batch
from tqdm.auto import tqdm

import pointcoc as pc
from pointcoc import viz
from pointcoc._files import atomic_write
from pointcoc.data import CLASS_NAMES, rgbd_frames
from pointcoc.data.demo_objects import Shape
from pointcoc.points import _open_image_file

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
    cam_to_world = np.array(
        [[1.0, 0.0, 0.0], [0.0, -np.cos(pitch), -np.sin(pitch)], [0.0, -np.sin(pitch), np.cos(pitch)]]
    ).T
    camera = rgbd_frames.Camera(fx, fy, cx, cy, height, width, cam_to_world, np.array([0.0, 1.5, 0.0]))
    shapes = [
        Shape("cuboid", dict(center=np.array([-0.8, 0.4, 3.35]), size=np.array([0.9, 0.8, 0.9]), open_faces=())),
        Shape("ellipsoid", dict(center=np.array([0.55, 0.45, 2.9]), radii=np.full(3, 0.45), lower_half=False)),
        Shape("cylinder", dict(center=np.array([0.35, 0.0, 4.6]), radius=0.4, height=1.3, bottom=False, top=True)),
    ]
    colours = np.array([(0.85, 0.25, 0.20), (0.20, 0.40, 0.90), (0.25, 0.75, 0.30)])
    d = camera.rays()  # t along d is the camera-frame depth z (the rays have camera z = 1)
    t, normal, which = rgbd_frames.cast_rays(camera.origin, d, shapes)
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
# --train: one CoC network, four inputs, rendered frames of the demo classes
# ----------------------------------------------------------------------------------------------
class InputKind(NamedTuple):
    """How a frame is fed to the network."""

    title: str
    in_chans: int
    pos_dim: int
    mode: str  # the CoC mode: image lattice or point cloud


INPUTS: Dict[str, InputKind] = {
    "rgb": InputKind("(i) RGB, image points", 3, 2, "lattice"),
    "rgbd": InputKind("(ii) RGB-D, image points + depth channel", 4, 2, "lattice"),
    "xyz_rgb": InputKind("(iii) RGB-D, coloured xyz cloud", 3, 3, "point"),
    "xyz": InputKind("(iv) depth only, xyz cloud", 1, 3, "point"),
}
"""The four inputs of ``--train``, in table order."""

TRAIN_MODEL = "coc_mini"


def frame_points(rgb: Tensor, depth: Tensor, intrinsics: Tuple[float, float, float, float], kind: str) -> Batch:
    """A batch of frames as the network input ``kind`` (see :data:`INPUTS`).

    ``rgb: [B, 3, H, W]`` in [0, 1], ``depth: [B, H, W]`` metres (0 = no reading). Image inputs
    keep the image-point coordinates (docs/design.md §3.1); ``"rgbd"`` keeps only pixels with a depth reading and adds
    depth (metres) as a fourth channel. Clouds are back-projected pixels with a reading,
    positions in metres relative to the cloud's centroid (the camera's axes); their features
    are the colour (``"xyz_rgb"``) or a constant 1 (``"xyz"``).
    """
    if kind == "rgb":
        return pc.image_to_points(rgb)
    if kind == "rgbd":
        return pc.rgbd_to_points(rgb, depth, mode="uvd")
    if kind not in INPUTS:
        raise ValueError(f"kind must be one of {', '.join(INPUTS)}, got {kind!r}")
    points = pc.rgbd_to_points(rgb, depth, intrinsics=intrinsics, mode="xyz")
    counts = torch.bincount(points.batch, minlength=rgb.size(0)).clamp(min=1).unsqueeze(1).to(points.pos.dtype)
    centroid = torch.zeros(rgb.size(0), 3, dtype=points.pos.dtype).index_add_(0, points.batch, points.pos) / counts
    points.pos = points.pos - centroid[points.batch]
    if kind == "xyz":
        points.x = torch.ones_like(points.x[:, :1])
    return points


def frames_as_tensors(frames: "rgbd_frames.RGBDFrames") -> Tuple[Tensor, Tensor, Tensor]:
    """``rgb [S, 3, H, W]`` in [0, 1], ``depth [S, H, W]`` metres and ``label [S]`` of a frame set."""
    rgb = torch.from_numpy(frames.rgb).permute(0, 3, 1, 2).float() / 255.0
    depth = torch.from_numpy(frames.depth.astype(np.float32)) / frames.depth_scale
    return rgb, depth, torch.from_numpy(frames.label)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: Tuple[Tensor, Tensor, Tensor], intrinsics, kind: str, batch_size: int = 64
) -> Dict[str, float]:
    """Test OA and mAcc (fractions) of ``model`` on ``data`` fed as ``kind``."""
    from pointcoc.training import confusion_matrix, mean_class_accuracy, overall_accuracy

    model.eval()
    rgb, depth, label = data
    num_classes = len(CLASS_NAMES)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for s in range(0, len(label), batch_size):
        logits = model(frame_points(rgb[s : s + batch_size], depth[s : s + batch_size], intrinsics, kind))
        conf += confusion_matrix(logits.argmax(1), label[s : s + batch_size], num_classes)
    return dict(oa=overall_accuracy(conf), macc=mean_class_accuracy(conf))


def train_input(
    kind: str,
    train: Tuple[Tensor, Tensor, Tensor],
    intrinsics,
    epochs: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> Tuple[torch.nn.Module, float]:
    """Train a fresh :data:`TRAIN_MODEL` on frames fed as ``kind``, with random horizontal flips.

    Returns the model (in eval mode) and its training accuracy over the last epoch (as it trained).
    """
    spec = INPUTS[kind]
    torch.manual_seed(seed)
    model = pc.create_model(
        TRAIN_MODEL, num_classes=len(CLASS_NAMES), in_chans=spec.in_chans, pos_dim=spec.pos_dim, mode=spec.mode
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rgb, depth, label = train
    steps = len(label) // batch_size
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps, epochs * steps))
    generator = torch.Generator().manual_seed(seed + 1)
    bar = tqdm(range(epochs), desc=f"{kind:>8}", leave=False, disable=not progress)
    for _ in bar:
        model.train()
        order = torch.randperm(len(label), generator=generator)
        running, correct = 0.0, 0
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            rgb_b = torch.where(flip[:, None, None, None], rgb[idx].flip(-1), rgb[idx])
            depth_b = torch.where(flip[:, None, None], depth[idx].flip(-1), depth[idx])
            logits = model(frame_points(rgb_b, depth_b, intrinsics, kind))
            loss = F.cross_entropy(logits, label[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item()
            correct += int((logits.argmax(1) == label[idx]).sum())
        bar.set_postfix(loss=f"{running / steps:.3f}")
    return model.eval(), correct / (steps * batch_size)


def _table(results: Dict[str, Dict[str, float]]) -> str:
    lines = ["| input | test OA | test mAcc | train OA (last epoch) | train time |", "|---|---|---|---|---|"]
    for kind, run in results.items():
        lines.append(
            f"| {INPUTS[kind].title} | {100 * run['oa']:.1f}% | {100 * run['macc']:.1f}% | "
            f"{100 * run['train_oa']:.1f}% | {run['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def cluster_picture(
    model: torch.nn.Module, points: Batch, rgb: np.ndarray, title: str, stage: int = 0, block: int = 0, head: int = 0
) -> np.ndarray:
    """One held-out frame: its colour image, the clusters on the image grid and the clusters as a 3-D cloud.

    ``points``: one frame as a coloured xyz cloud (``pixel`` and ``grid_size`` kept);
    ``rgb uint8 [H, W, 3]``: the frame; ``title`` names it. Returns ``uint8 [260, 720, 3]``.
    """
    from PIL import ImageDraw

    record = viz.record_assignments(model, points, stage, block)
    side, caption = 240, 20
    grid = viz.cluster_map(record, points, head)
    scale = side // max(grid.shape[:2])
    tiles = [np.kron(image, np.ones((scale, scale, 1), dtype=np.uint8)) for image in (rgb, grid)]
    pos = points.pos.numpy()
    upright = np.stack([pos[:, 0], pos[:, 2], -pos[:, 1]], 1)  # camera frame -> x right, depth, up
    cloud, _ = viz.point_cloud_image(
        upright, viz.cluster_colours(record, points, head), size=(side, side), elev=15, azim=-100, point_size=6
    )
    canvas = np.full((side + caption, 3 * side, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles + [cloud]):
        canvas[caption : caption + tile.shape[0], i * side : i * side + tile.shape[1]] = tile[:side, :side]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    texts = (title, f"stage {stage} clusters on the image", f"stage {stage} clusters in 3-D")
    for i, text in enumerate(texts):
        draw.text((i * side + 6, 4), text, fill=(0, 0, 0))
    return np.array(picture)


def run_training(args: argparse.Namespace) -> Dict[str, object]:
    """``--train``: render the frames, train one network per input, print the table, save models and picture."""
    start = time.perf_counter()
    size, per_class, test_per_class, epochs = (
        (12, 6, 4, 3) if args.quick else (args.frame_size, args.train_per_class, args.test_per_class, args.epochs)
    )
    train_frames = rgbd_frames.generate_frames(per_class, args.seed, "train", size, size)
    test_frames = rgbd_frames.generate_frames(test_per_class, args.seed, "test", size, size)
    intrinsics = train_frames.intrinsics
    print(
        f"RGB-D frames {size}x{size} of the {len(CLASS_NAMES)} demo classes: {len(train_frames)} train / "
        f"{len(test_frames)} held-out test frames, rendered in {time.perf_counter() - start:.0f} s; "
        f"{TRAIN_MODEL}, {epochs} epochs per input, seed {args.seed}",
        flush=True,
    )
    train, test = frames_as_tensors(train_frames), frames_as_tensors(test_frames)
    results: Dict[str, Dict[str, float]] = {}
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    for kind in args.inputs:
        begin = time.perf_counter()
        model, train_oa = train_input(
            kind, train, intrinsics, epochs, args.batch_size, args.lr, seed=args.seed, progress=not args.no_progress
        )
        seconds = time.perf_counter() - begin
        results[kind] = dict(**evaluate(model, test, intrinsics, kind), seconds=seconds, train_oa=train_oa)
        spec = INPUTS[kind]
        saved = {
            "model": TRAIN_MODEL,
            "input": kind,
            "in_chans": spec.in_chans,
            "pos_dim": spec.pos_dim,
            "mode": spec.mode,
            "state_dict": model.state_dict(),
        }
        atomic_write(out / f"{kind}.pt", lambda tmp, saved=saved: torch.save(saved, tmp))
        print(
            f"{spec.title}: test OA {100 * results[kind]['oa']:.1f}%, mAcc {100 * results[kind]['macc']:.1f}% "
            f"({seconds:.0f} s)",
            flush=True,
        )
        if kind == "xyz_rgb":
            frame = args.frame % len(test_frames)
            points = frame_points(test[0][frame : frame + 1], test[1][frame : frame + 1], intrinsics, kind)
            title = f"held-out frame {frame}: {CLASS_NAMES[int(test[2][frame])]}"
            viz.save_png(cluster_picture(model, points, test_frames.rgb[frame], title), out / "clusters.png")
    seconds = time.perf_counter() - start
    print("\n" + _table(results) + f"\n\ntotal time {seconds:.0f} s; models and results.json in {out}")
    summary = dict(
        results=results,
        seconds=seconds,
        frame_size=size,
        train_frames=len(train_frames),
        test_frames=len(test_frames),
        epochs=epochs,
        seed=args.seed,
        model=TRAIN_MODEL,
    )
    atomic_write(out / "results.json", json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------
# the example
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rgb", type=Path, help="colour image (PNG/JPEG); omit for the synthetic frame")
    parser.add_argument("--depth", type=Path, help="depth image (16-bit PNG of raw units)")
    for name in ("fx", "fy", "cx", "cy"):
        parser.add_argument(f"--{name}", type=float, help=f"intrinsics {name} in pixels (needed with --rgb)")
    parser.add_argument(
        "--depth-scale", type=float, default=None, help="raw depth units per metre (default 1000 = millimetres)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="output folder (default outputs/rgbd, with --train outputs/rgbd_train)",
    )
    parser.add_argument("--model", default="coc_tiny", help="CoC variant (pc.list_models('coc*'))")
    parser.add_argument("--checkpoint", type=Path, help="weights of the variant with in_chans=3, pos_dim=3")
    parser.add_argument("--stage", type=int, default=1, help="stage whose clustering is drawn")
    parser.add_argument("--block", type=int, default=0, help="block of that stage")
    parser.add_argument("--head", type=int, default=0, help="head of that block")
    parser.add_argument("--height", type=int, default=120, help="synthetic frame height")
    parser.add_argument("--width", type=int, default=160, help="synthetic frame width")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained weights")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1; more only pay off on large inputs and idle cores)",
    )
    train = parser.add_argument_group("--train: one CoC network on four inputs of rendered RGB-D frames")
    train.add_argument("--train", action="store_true", help="train and test on rendered frames, print the table")
    train.add_argument("--quick", action="store_true", help="with --train: tiny frames, few epochs (tests)")
    train.add_argument("--inputs", nargs="+", choices=list(INPUTS), default=list(INPUTS), help="inputs to train")
    train.add_argument("--frame-size", type=int, default=20, help="frame height and width in pixels")
    train.add_argument("--train-per-class", type=int, default=40, help="training frames per class")
    train.add_argument("--test-per-class", type=int, default=20, help="held-out test frames per class")
    train.add_argument("--epochs", type=int, default=6, help="training epochs per input")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (warm-up, then cosine)")
    train.add_argument("--frame", type=int, default=0, help="held-out frame whose clusters are drawn")
    train.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    return parser


class ExampleError(Exception):
    """A bad file or argument, reported as one ``error:`` line (exit code 2)."""


def _read_checkpoint(path: Path) -> object:
    """``torch.load`` with ``weights_only=True``; unreadable files raise :class:`ExampleError` naming the file."""
    if not path.is_file():
        raise ExampleError(f"checkpoint {path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise ExampleError(f"checkpoint {path}: cannot be loaded ({type(exc).__name__}: {exc})") from None


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    if args.checkpoint is None:
        return pc.create_model(args.model, num_classes=0, in_chans=3, pos_dim=3, mode="point").eval()
    raw = _read_checkpoint(args.checkpoint)
    try:
        state = pc.convert_official_state_dict(args.model, raw)
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        model = pc.create_model(args.model, num_classes=num_classes, in_chans=3, pos_dim=3, mode="point")
        model.load_state_dict(state)
    except (ValueError, TypeError, RuntimeError) as exc:  # RuntimeError: missing / unexpected keys, shapes
        raise ExampleError(
            f"checkpoint {args.checkpoint} does not fit {args.model} (in_chans=3, pos_dim=3): {exc}"
        ) from None
    return model.eval()


def _save_depth_png(depth: np.ndarray, path: Path) -> Path:
    """Write a ``uint16 [H, W]`` depth map as a 16-bit gray PNG, atomically."""
    return atomic_write(path, lambda tmp: Image.fromarray(depth.astype(np.uint16)).save(tmp, format="PNG"))


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Run the example; returns a summary (point count, feature shape, written files).

    Bad files and arguments end the run with one ``error:`` line on stderr and exit code 2.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ExampleError, ValueError, TypeError, OSError, IndexError) as exc:
        print("error: " + (" ".join(str(exc).split()) or type(exc).__name__), file=sys.stderr)
        raise SystemExit(2) from None


def _run(args: argparse.Namespace) -> Dict[str, object]:
    torch.set_num_threads(args.threads)
    if args.output is None:
        args.output = Path("outputs/rgbd_train" if args.train else "outputs/rgbd")
    if args.train:
        return run_training(args)
    start = time.perf_counter()
    out = args.output
    written: Dict[str, Path] = {}
    if args.rgb is None and args.depth is None:
        rgb, depth, intrinsics, depth_scale = synthetic_frame(args.height, args.width)
        written["rgb"] = viz.save_png(rgb, out / "rgb.png")
        written["depth"] = out / "depth.png"
        _save_depth_png(depth, written["depth"])
        rgb_in, depth_in = written["rgb"], written["depth"]  # read back through the file path, as real data
        print(
            f"synthetic frame {args.width}x{args.height}: fx={intrinsics[0]:.1f} fy={intrinsics[1]:.1f} "
            f"cx={intrinsics[2]:.1f} cy={intrinsics[3]:.1f}, depth scale {depth_scale:g}"
        )
    else:
        missing = [n for n in ("rgb", "depth", "fx", "fy", "cx", "cy") if getattr(args, n) is None]
        if missing:
            raise ExampleError(f"with real files give --{' --'.join(missing)}")
        rgb_in, depth_in = np.array(_open_image_file(args.rgb, "--rgb").convert("RGB")), args.depth  # gray -> RGB
        intrinsics, depth_scale = (args.fx, args.fy, args.cx, args.cy), args.depth_scale or 1000.0
    points = pc.rgbd_to_points(rgb_in, depth_in, intrinsics=intrinsics, depth_scale=depth_scale, mode="xyz")
    height, width = points.grid_size[0].tolist()
    print(
        f"{points.num_nodes} points with valid depth out of {height * width} pixels; "
        f"z in [{points.pos[:, 2].min():.2f}, {points.pos[:, 2].max():.2f}] m"
    )
    colours = (points.x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    written["ply"] = viz.write_ply(out / "cloud.ply", points.pos, colours)

    model = _load_model(args)
    with torch.no_grad():
        features = model(points)
    print(f"{args.model} (point mode, pos_dim=3): pooled features {tuple(features.shape)}")
    record = viz.record_assignments(model, points, args.stage, args.block)
    cluster_rgb = viz.cluster_colours(record, points, args.head)
    used = len(np.unique(viz.point_clusters(record, points, args.head).numpy()))
    pos = points.pos.numpy()
    upright = np.stack([pos[:, 0], pos[:, 2], -pos[:, 1]], 1)  # camera frame -> x right, depth, up
    written["clusters_3d"] = out / "clusters_3d.png"
    backend = viz.render_point_cloud(
        upright,
        cluster_rgb,
        written["clusters_3d"],
        elev=12,
        azim=-100,
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
