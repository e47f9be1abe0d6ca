"""Draw which centre every point joins in a CoC model (the paper's clustering maps).

    python examples/visualize_clusters.py --image photo.jpg --model coc_tiny --stage 0 --block 0 --head 0 --out map.png
    python examples/visualize_clusters.py --image photo.jpg --all-heads --alpha 0.6 --out heads.png
    python examples/visualize_clusters.py --image photo.jpg --keep 0.3 --out discrete.png   # 30% of the pixels
    python examples/visualize_clusters.py --image photo.jpg --mask mask.png --out masked.png
    python examples/visualize_clusters.py --points outputs/rgbd/cloud.ply --stage 1 --out cloud.png
    python examples/visualize_clusters.py --checkpoint coc_tiny.pth.tar --image photo.jpg --out map.png
    python examples/visualize_clusters.py                # the synthetic RGB-D colour frame of rgbd.py

For an image the map has the image's own size (no resizing, any H x W): every pixel takes
the colour of its cluster (the cluster of the nearest point of the chosen stage, by
position), optionally blended over the image (``--alpha`` < 1); pixels that are not points
(``--keep`` / ``--mask``) are black. ``--all-heads`` tiles one map per head, ``--with-input``
puts the input (as the model sees it, absent pixels black) first. For a point
cloud (``--points``: ASCII PLY, ``.npy`` or text with columns ``x y z [r g b]``) the output
is a 3-D scatter coloured by cluster.

The model is untrained (seeded) unless ``--checkpoint`` is given: a released CoC checkpoint
or a state dict of the same variant, loaded through ``pc.convert_official_state_dict``
(input channels and classes are read from it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from torch_geometric.data import Batch

try:
    import pointcoc  # noqa: F401
except ModuleNotFoundError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pointcoc as pc
from pointcoc import viz

__all__ = ["load_model", "image_points", "cloud_points", "build_parser", "main"]


def load_model(name: str, checkpoint: Optional[Path], in_chans: int, pos_dim: int, mode: str) -> torch.nn.Module:
    """An untrained model, or one with a checkpoint's weights (its ``in_chans`` and classes win)."""
    num_classes = 1000
    if checkpoint is not None:
        state = pc.convert_official_state_dict(name, torch.load(checkpoint, map_location="cpu", weights_only=True))
        if "patch_embed.proj.weight" in state:
            in_chans = state["patch_embed.proj.weight"].shape[1] - pos_dim
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = pc.create_model(name, num_classes=num_classes, in_chans=in_chans, pos_dim=pos_dim, mode=mode)
    if checkpoint is not None:
        model.load_state_dict(state)
    return model.eval()


def image_points(image: Image.Image, channels: int, keep: Optional[float], mask_path: Optional[Path],
                 seed: int) -> Batch:
    """The image (gray for 1 channel, else RGB) as points, optionally masked and/or subsampled."""
    array = np.array(image.convert("L" if channels == 1 else "RGB"))  # a writable copy
    mask = None
    if mask_path is not None:
        mask = np.asarray(Image.open(mask_path).convert("L")) > 0
        if mask.shape != array.shape[:2]:
            raise SystemExit(f"error: --mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                             f"{array.shape[1]}x{array.shape[0]}")
    points = pc.image_to_points(array, mask=mask)
    if keep is not None:
        points = pc.sample_pixels(points, ratio=keep, generator=torch.Generator().manual_seed(seed))
    return points


def cloud_points(path: Path) -> Batch:
    """A point-cloud file as a one-sample point batch; ``x`` = colours in [0, 1] (or ones)."""
    if path.suffix.lower() == ".ply":
        pos, colours = viz.read_ply(path)
        table = pos if colours is None else np.concatenate([pos, colours / 255.0], 1)
    elif path.suffix.lower() == ".npy":
        table = np.load(path)
    else:
        table = np.loadtxt(path, ndmin=2, delimiter="," if path.suffix.lower() == ".csv" else None)
    if table.ndim != 2 or table.shape[1] not in (3, 6):
        raise SystemExit(f"error: --points must hold columns x y z [r g b], got an array of shape {table.shape}")
    if table.shape[1] == 6:  # colours as 0..255 or 0..1
        features = table[:, 3:] / (255.0 if table[:, 3:].max() > 1 else 1.0)
    else:
        features = np.ones((len(table), 1))
    pos = torch.tensor(table[:, :3], dtype=torch.float32)
    return Batch(x=torch.tensor(features, dtype=torch.float32), pos=pos, batch=torch.zeros(len(pos), dtype=torch.long))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", type=Path,
                        help="PNG/JPEG image (default: the synthetic RGB-D colour frame, 320x240)")
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
    parser.add_argument("--mode", choices=("auto", "grid", "point"), default="auto",
                        help="auto: grid mode on full images, point mode (FPS + kNN) otherwise; grid: also on "
                             "masked / discrete images (sparse convolutions on the pixel lattice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of untrained weights and --keep")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; more only pay off on large inputs and idle cores)")
    parser.add_argument("--out", type=Path, default=Path("cluster_map.png"), help="output PNG")
    return parser


def main(argv: Optional[List[str]] = None) -> Path:
    """Write the map; returns its path."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.points is not None:
        points = cloud_points(args.points)
        model = load_model(args.model, args.checkpoint, points.x.size(1), 3, "point")
        if model.in_chans != points.x.size(1):
            raise SystemExit(f"error: the checkpoint expects {model.in_chans} feature channels, the cloud has "
                             f"{points.x.size(1)}")
    else:
        if args.image is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from rgbd import synthetic_frame

            image = Image.fromarray(synthetic_frame(240, 320)[0])
        else:
            image = Image.open(args.image)
        model = load_model(args.model, args.checkpoint, 1 if args.gray else 3, 2, args.mode)
        points = image_points(image, model.in_chans, args.keep, args.mask, args.seed)
    record = viz.record_assignments(model, points, args.stage, args.block)
    heads = list(range(record.heads)) if args.all_heads else [args.head]
    if args.points is not None:
        pos = points.pos.numpy()
        pictures = [viz.point_cloud_image(pos, viz.cluster_colors(record, points, h), size=(480, 400),
                                          title=f"head {h}")[0] for h in heads]
    else:
        pictures = [viz.cluster_map(record, points, head=h, alpha=args.alpha) for h in heads]
        if args.with_input:
            pictures.insert(0, viz.input_image(points))
    picture = viz.head_grid(pictures, columns=min(4, len(pictures))) if len(pictures) > 1 else pictures[0]
    viz.save_png(picture, args.out)
    height, width = picture.shape[:2]
    print(f"{args.model} stage {args.stage} block {args.block} head(s) {heads}: {record.pos.size(0)} stage points, "
          f"{record.clusters_per_sample} cluster ids per sample; wrote {args.out} ({width}x{height})")
    return args.out


if __name__ == "__main__":
    main()
