"""Draw which centre every point joins in a CoC model (the paper's clustering maps).

    python examples/visualize_clusters.py --image photo.jpg --model coc_tiny --stage 0 --block 0 --head 0 --out map.png
    python examples/visualize_clusters.py --image photo.jpg --all-heads --alpha 0.6 --out heads.png
    python examples/visualize_clusters.py --image photo.jpg --all-heads --with-input --out heads.png
    python examples/visualize_clusters.py --image photo.jpg --keep 0.3 --out discrete.png   # 30% of the pixels
    python examples/visualize_clusters.py --image photo.jpg --mask mask.png --out masked.png
    python examples/visualize_clusters.py --points outputs/rgbd/cloud.ply --stage 1 --out cloud.png
    python examples/visualize_clusters.py --checkpoint coc_tiny.pth.tar --image photo.jpg --out map.png
    python examples/visualize_clusters.py                # the synthetic RGB-D colour frame of rgbd.py

For an image the map has the image's own size (no resizing, any H x W): every pixel takes
the colour of its cluster (the cluster of the nearest point of the chosen stage, by
position), optionally blended over the image (``--alpha`` < 1); pixels that are not points
(``--keep`` / ``--mask``) are black. ``--all-heads`` tiles one map per head (a layout with
few empty tiles, :func:`pointcoc.viz.tile_columns`); ``--with-input`` puts the input (as the
model sees it, absent pixels black) first. For a point
cloud (``--points``: ASCII PLY, ``.npy`` or text with columns ``x y z [r g b]``) the output
is a 3-D scatter coloured by cluster.

The model is untrained (seeded) unless ``--checkpoint`` is given: a released CoC checkpoint
or a state dict of the same variant, loaded through ``pc.convert_official_state_dict``
(input channels and classes are read from it).

Mistakes (a missing or unreadable file, an out-of-range ``--stage`` / ``--block`` /
``--head``, a checkpoint that is not one of the variant) print one ``error:`` line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import List, NoReturn, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch_geometric.data import Batch

import pointcoc as pc
from pointcoc import viz

__all__ = [
    "fail",
    "open_image",
    "read_checkpoint",
    "load_model",
    "image_points",
    "cloud_points",
    "read_input",
    "draw",
    "build_parser",
    "main",
]


def fail(message: str) -> NoReturn:
    """A user mistake: print one ``error:`` line (no traceback) and exit with status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def open_image(path: Path, flag: str) -> Image.Image:
    """The decoded image at ``path``; a missing or unreadable file is a one-line error."""
    if not path.is_file():
        fail(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        fail(f"{flag} {path}: not a readable image ({type(err).__name__}: {err})")


def read_checkpoint(name: str, checkpoint: Path) -> dict:
    """The checkpoint's state dict converted for ``name``; a bad file is a one-line error."""
    if not checkpoint.is_file():
        fail(f"--checkpoint {checkpoint}: no such file")
    try:
        return pc.convert_official_state_dict(name, torch.load(checkpoint, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as err:
        fail(f"--checkpoint {checkpoint}: not a {name} checkpoint ({type(err).__name__}: {err})")


def load_model(name: str, checkpoint: Optional[Path], in_chans: int, pos_dim: int, mode: str) -> torch.nn.Module:
    """An untrained model, or one with a checkpoint's weights (its ``in_chans`` and classes win)."""
    if name not in pc.list_models("coc*"):
        fail(f"--model {name!r} is not a CoC variant; choose one of {', '.join(pc.list_models('coc*'))}")
    num_classes = 1000
    if checkpoint is not None:
        state = read_checkpoint(name, checkpoint)
        if "patch_embed.proj.weight" in state:
            in_chans = state["patch_embed.proj.weight"].shape[1] - pos_dim
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = pc.create_model(name, num_classes=num_classes, in_chans=in_chans, pos_dim=pos_dim, mode=mode)
    if checkpoint is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            fail(f"--checkpoint {checkpoint}: its weights do not fit {name} ({err})")
    return model.eval()


def image_points(
    image: Image.Image, channels: int, keep: Optional[float], mask_path: Optional[Path], seed: int
) -> Batch:
    """The image (gray for 1 channel, else RGB) as points, optionally masked and/or subsampled."""
    array = np.array(image.convert("L" if channels == 1 else "RGB"))  # a writable copy
    mask = None
    if mask_path is not None:
        mask = np.asarray(open_image(mask_path, "--mask").convert("L")) > 0
        if mask.shape != array.shape[:2]:
            fail(f"--mask is {mask.shape[1]}x{mask.shape[0]} but the image is {array.shape[1]}x{array.shape[0]}")
        if not mask.any():
            fail(f"--mask {mask_path} keeps no pixel (every pixel is 0)")
    points = pc.image_to_points(array, mask=mask)
    if keep is not None:
        if not 0.0 < keep <= 1.0:
            fail(f"--keep must be a fraction in (0, 1], got {keep}")
        points = pc.sample_pixels(points, ratio=keep, generator=torch.Generator().manual_seed(seed))
    return points


def cloud_points(path: Path) -> Batch:
    """A point-cloud file as a one-sample point batch; ``x`` = colours in [0, 1] (or ones)."""
    if not path.is_file():
        fail(f"--points {path}: no such file")
    try:
        if path.suffix.lower() == ".ply":
            pos, colours = viz.read_ply(path)
            table = pos if colours is None else np.concatenate([pos, colours / 255.0], 1)
        elif path.suffix.lower() == ".npy":
            table = np.load(path)
        else:
            table = np.loadtxt(path, ndmin=2, delimiter="," if path.suffix.lower() == ".csv" else None)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        fail(f"--points {path}: not a readable point cloud ({type(err).__name__}: {err})")
    if table.ndim != 2 or table.shape[1] not in (3, 6) or len(table) == 0 or not np.isfinite(table).all():
        fail(f"--points {path} must hold finite columns x y z [r g b] (at least one row), got shape {table.shape}")
    if table.shape[1] == 6:  # colours as 0..255 or 0..1
        features = table[:, 3:] / (255.0 if table[:, 3:].max() > 1 else 1.0)
    else:
        features = np.ones((len(table), 1))
    pos = torch.tensor(table[:, :3], dtype=torch.float32)
    return Batch(x=torch.tensor(features, dtype=torch.float32), pos=pos, batch=torch.zeros(len(pos), dtype=torch.long))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--image", type=Path, help="PNG/JPEG image (default: the synthetic RGB-D colour frame, 320x240)"
    )
    source.add_argument("--points", type=Path, help="point cloud: ASCII .ply, .npy or text, columns x y z [r g b]")
    parser.add_argument("--model", default="coc_tiny", help="CoC variant (pc.list_models('coc*'))")
    parser.add_argument("--checkpoint", type=Path, help="weights (released CoC checkpoint or state dict)")
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--block", type=int, default=0)
    parser.add_argument("--head", type=int, default=0)
    parser.add_argument("--all-heads", action="store_true", help="tile the maps of every head")
    parser.add_argument("--alpha", type=float, default=1.0, help="opacity of the cluster colours over the image")
    parser.add_argument("--with-input", action="store_true", help="put the input image (its points) first")
    parser.add_argument("--keep", type=float, help="keep this random fraction of the pixels (discrete pixels)")
    parser.add_argument("--mask", type=Path, help="PNG mask of the image's size: nonzero pixels are kept")
    parser.add_argument("--gray", action="store_true", help="feed the image as one gray channel (in_chans=1)")
    parser.add_argument(
        "--mode",
        choices=("auto", "lattice", "point"),
        default="auto",
        help="auto: lattice mode on full images, point mode otherwise; lattice: also on "
        "masked / discrete images (sparse convolutions on the pixel lattice)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of untrained weights and --keep")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1; more only pay off on large inputs and idle cores)",
    )
    parser.add_argument("--out", type=Path, default=Path("cluster_map.png"), help="output PNG")
    return parser


def read_input(args: argparse.Namespace) -> Tuple[torch.nn.Module, Batch]:
    """The model and its input points from the command line."""
    if args.points is not None:
        points = cloud_points(args.points)
        model = load_model(args.model, args.checkpoint, points.x.size(1), 3, "point")
        if model.in_chans != points.x.size(1):
            fail(f"the checkpoint expects {model.in_chans} feature channels, the cloud has {points.x.size(1)}")
        return model, points
    if args.image is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from rgbd import synthetic_frame

        image = Image.fromarray(synthetic_frame(240, 320)[0])
    else:
        image = open_image(args.image, "--image")
    model = load_model(args.model, args.checkpoint, 1 if args.gray else 3, 2, args.mode)
    return model, image_points(image, model.in_chans, args.keep, args.mask, args.seed)


def draw(args: argparse.Namespace, record: viz.StageAssignment, points: Batch) -> np.ndarray:
    """The picture: one map (or 3-D view) per chosen head, tiled, with the input first if asked."""
    if not args.all_heads and not 0 <= args.head < record.heads:
        fail(f"--head must be in [0, {record.heads}) ({record.heads} heads in stage {args.stage}), got {args.head}")
    heads = list(range(record.heads)) if args.all_heads else [args.head]
    if args.points is not None:
        pos = points.pos.numpy()
        pictures = [
            viz.point_cloud_image(pos, viz.cluster_colours(record, points, h), size=(480, 400), title=f"head {h}")[0]
            for h in heads
        ]
    else:
        pictures = [viz.cluster_map(record, points, head=h, alpha=args.alpha) for h in heads]
        if args.with_input:
            pictures.insert(0, viz.input_image(points))
    return viz.head_grid(pictures) if len(pictures) > 1 else pictures[0]


def main(argv: Optional[List[str]] = None) -> Path:
    """Write the map; returns its path. User mistakes exit with status 2 and one ``error:`` line."""
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        fail(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.threads < 1:
        fail(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, points = read_input(args)
    stages = len(model.config.layers)
    if not 0 <= args.stage < stages:
        fail(f"--stage must be in [0, {stages}) ({stages} stages in {args.model}), got {args.stage}")
    try:
        record = viz.record_assignments(model, points, args.stage, args.block)
    except ValueError as err:  # --block out of range, or an input too small for the model
        fail(str(err))
    picture = draw(args, record, points)
    viz.save_png(picture, args.out)
    height, width = picture.shape[:2]
    heads = "all" if args.all_heads else args.head
    print(
        f"{args.model} stage {args.stage} block {args.block} head(s) {heads}: {record.pos.size(0)} stage points, "
        f"{record.clusters_per_sample} cluster ids per sample; wrote {args.out} ({width}x{height})"
    )
    return args.out


if __name__ == "__main__":
    main()
