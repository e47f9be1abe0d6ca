"""Turn visual inputs (images, masked images, discrete pixels, RGB-D) into point sets.

Every converter returns a ``torch_geometric.data.Batch`` holding

* ``x: [N, C]`` point features (channel values; RGB-D may add depth),
* ``pos: [N, P]`` positions (``P = 2`` image coordinates, ``P = 3`` back-projected xyz),
* ``batch: [N]`` int64 sorted sample ids and ``ptr: [B + 1]`` sample offsets,
* ``pixel: [N, 2]`` int64 ``(row, col)`` of every point in its own image,
* ``grid_size: [B, 2]`` int64 ``(H, W)`` of every sample's full image.

Image coordinates follow the reference models (docs/design.md §3.1, rows first): the
pixel at row ``i``, column ``j`` of an ``H x W`` image has
``pos = (i / (H - 1) - 0.5, j / (W - 1) - 0.5)``. An axis of length 1 has no
spread to normalise, so its coordinate is ``0.0`` (the centre) instead of a
division by zero. Points of a sample are in row-major pixel order.

:func:`points_to_image` scatters per-point values back onto the pixel grid and
inverts :func:`image_to_points` exactly.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ._checks import check_batch, check_finite, check_k, check_ratio, check_tensor, limit
from .ops.batch import batch_counts, batch_ptr
from .ops.sampling import random_sample

if TYPE_CHECKING:
    from torch_geometric.data import Batch

__all__ = ["image_to_points", "sample_pixels", "rgbd_to_points", "points_to_image", "pixel_positions"]

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[Tensor, np.ndarray, Image.Image, PathLike]
ImagesInput = Union[ImageLike, Sequence[ImageLike]]
MaskLike = Union[Tensor, np.ndarray]

# attributes that hold one row per sample rather than one row per point
_PER_SAMPLE_KEYS = ("ptr", "grid_size")

# PIL modes converted before decoding; every other mode is read with its own channels
_PIL_CONVERT = {
    "1": "L",
    "PA": "RGBA",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
_PIL_DIRECT = ("L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _batch(**attrs) -> Batch:
    """A PyG ``Batch`` of ``attrs``.

    torch_geometric is imported here, on first use, not with pointcoc: it imports
    ``torch._dynamo``, about 100 MB of resident memory a model run on tensors does not need.
    """
    from torch_geometric.data import Batch

    return Batch(**attrs)


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------
def _open_image_file(path: PathLike, name: str) -> Image.Image:
    """Open and fully decode an image file; missing, corrupt or oversized files raise ``ValueError``.

    The pixel count is read from the header and checked against the limit
    ``POINTCOC_MAX_IMAGE_PIXELS`` (environment variable, default 2**24) before
    anything is decoded, so a small file that expands to gigabytes is refused.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{name}: image file not found: {path!r}")
    allowed = limit("POINTCOC_MAX_IMAGE_PIXELS")
    try:
        with warnings.catch_warnings():  # our own limit replaces PIL's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                pixels = img.width * img.height
                if pixels <= allowed:
                    img.load()
                    return img.copy()
    except Image.DecompressionBombError as err:
        pixels, reason = None, " ".join(str(err).split())
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ValueError(f"{name}: cannot read image file {path!r} ({' '.join(str(err).split())})") from None
    else:
        reason = f"{pixels} pixels"
    raise ValueError(
        f"{name}: image file {path!r} is too large to decode ({reason}); the limit is "
        f"POINTCOC_MAX_IMAGE_PIXELS={allowed} pixels (raise it with that environment variable"
        f"{'' if pixels is not None else ' and PIL.Image.MAX_IMAGE_PIXELS'})"
    )


def _pil_to_array(img: Image.Image, name: str) -> np.ndarray:
    """PIL image -> ``H x W`` or ``H x W x C`` array in the image's own value type.

    Palette images become RGB (RGBA when they carry transparency), bilevel images 8-bit
    gray, CMYK / YCbCr / LAB / HSV images RGB; 16-bit gray stays ``uint16``, 32-bit
    integer gray stays ``int32`` and float gray stays ``float32``.
    """
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in _PIL_CONVERT:
        img = img.convert(_PIL_CONVERT[mode])
    elif mode not in _PIL_DIRECT:
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as err:
            raise ValueError(f"{name}: unsupported PIL image mode {mode!r}") from err
    arr = np.array(img)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _array_to_unit_float(arr: np.ndarray, name: str) -> Tensor:
    """Image array -> float tensor with uint8 / uint16 values scaled to ``[0, 1]``."""
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
    if arr.dtype == np.uint16:
        return torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32)).div_(65535.0)
    if arr.dtype == np.int32:  # 32-bit integer gray (PIL mode "I"): only 16-bit content has a scale
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise ValueError(f"{name}: 32-bit integer image values must lie in [0, 65535] to be scaled")
        return torch.from_numpy(arr.astype(np.float32)).div_(65535.0)
    if arr.dtype == np.float64:
        return torch.from_numpy(np.ascontiguousarray(arr))
    if np.issubdtype(arr.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    raise TypeError(f"{name}: image arrays must be uint8, uint16 or floating point, got dtype {arr.dtype}")


def _hwc_to_group(arr: np.ndarray, name: str) -> Tensor:
    """``H x W`` / ``H x W x C`` array -> ``[1, C, H, W]`` float tensor."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{name}: image arrays must be H x W or H x W x C, got shape {arr.shape}")
    t = _array_to_unit_float(arr, name)
    return t.permute(2, 0, 1).unsqueeze(0)


def _tensor_to_group(t: Tensor, name: str) -> Tensor:
    """``[C, H, W]`` / ``[B, C, H, W]`` tensor -> ``[B, C, H, W]`` float tensor."""
    if t.dim() not in (3, 4):
        raise ValueError(f"{name}: image tensors must be [C, H, W] or [B, C, H, W], got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float().div(255.0)
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    elif not t.is_floating_point():
        raise TypeError(f"{name}: image tensors must be uint8 or floating point, got dtype {t.dtype}")
    return t if t.dim() == 4 else t.unsqueeze(0)


def _to_group(item: object, name: str) -> Tensor:
    """Any single image input -> ``[b, C, H, W]`` float tensor (CPU unless it was a tensor)."""
    if isinstance(item, Tensor):
        return _tensor_to_group(item, name)
    if isinstance(item, np.ndarray):
        return _hwc_to_group(item, name)
    if isinstance(item, Image.Image):
        return _hwc_to_group(_pil_to_array(item, name), name)
    if isinstance(item, (str, os.PathLike)):
        return _hwc_to_group(_pil_to_array(_open_image_file(item, name), name), name)
    raise TypeError(
        f"{name} must be a tensor, numpy array, PIL image, file path, or a list of these; got {type(item).__name__}"
    )


def _items(obj: object) -> List[object]:
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def _common_device(groups: Sequence[object], name: str) -> torch.device:
    devices = {g.device for g in groups if isinstance(g, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"{name}: all image tensors must be on one device, got {sorted(map(str, devices))}")
    return devices.pop() if devices else torch.device("cpu")


def _load_images(images: object, name: str = "images") -> List[Tensor]:
    """Decode ``images`` into groups ``[b, C, H, W]`` sharing one float dtype and device."""
    items = _items(images)
    if not items:
        raise ValueError(f"{name} is an empty list: give at least one image")
    for item in items:
        if isinstance(item, (list, tuple)):
            raise TypeError(f"{name}: nested lists are not supported; give one flat list of images")
    device = _common_device(items, name)
    groups = [_to_group(item, name) for item in items]
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in groups) else torch.float32
    channels = groups[0].size(1)
    for g in groups:
        if g.numel() == 0:
            raise ValueError(f"{name}: images must be non-empty, got an image batch of shape {tuple(g.shape)}")
        if g.size(1) != channels:
            raise ValueError(
                f"{name}: all images must have the same number of channels, got {channels} and {g.size(1)}"
            )
    return [g.to(device=device, dtype=dtype) for g in groups]


def _grid_sizes(groups: Sequence[Tensor]) -> List[Tuple[int, int]]:
    """``(H, W)`` of every sample, in sample order."""
    return [(g.size(2), g.size(3)) for g in groups for _ in range(g.size(0))]


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
def _bool_tensor(m: object, name: str, device: torch.device) -> Tensor:
    if isinstance(m, np.ndarray):
        if m.dtype != np.bool_:
            raise TypeError(f"{name} must be a bool array, got dtype {m.dtype}")
        m = torch.from_numpy(np.ascontiguousarray(m))
    if not isinstance(m, Tensor):
        raise TypeError(f"{name} must be a bool tensor or numpy array, got {type(m).__name__}")
    if m.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {m.dtype}")
    return m.to(device)


def _flat_mask(mask: object, sizes: Sequence[Tuple[int, int]], device: torch.device, name: str = "mask") -> Tensor:
    """Normalise a mask into one flat ``[sum H_b * W_b]`` bool tensor in point order.

    ``mask`` is ``[H, W]`` (same mask for every sample), ``[B, H, W]``, or a list with one
    entry per sample (``[H_b, W_b]``, or ``None`` to keep all of that sample's pixels).
    """
    B = len(sizes)
    if isinstance(mask, (list, tuple)):
        if len(mask) != B:
            raise ValueError(f"{name} must have one entry per image ({B}), got {len(mask)}")
        parts = []
        for b, (m, (H, W)) in enumerate(zip(mask, sizes)):
            if m is None:
                parts.append(torch.ones(H * W, dtype=torch.bool, device=device))
                continue
            m = _bool_tensor(m, name, device)
            if tuple(m.shape) != (H, W):
                raise ValueError(f"{name}[{b}] must have shape {(H, W)} to match its image, got {tuple(m.shape)}")
            parts.append(m.reshape(-1))
        return torch.cat(parts)
    m = _bool_tensor(mask, name, device)
    if m.dim() not in (2, 3):
        raise ValueError(f"{name} must be [H, W] or [B, H, W], got shape {tuple(m.shape)}")
    if len(set(sizes)) != 1:
        raise ValueError(f"{name}: images of different sizes need a list of per-image masks")
    H, W = sizes[0]
    expected = (B, H, W) if m.dim() == 3 else (H, W)
    if tuple(m.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} to match the images, got {tuple(m.shape)}")
    return m.expand(B, H, W).reshape(-1)


# ----------------------------------------------------------------------------------------------
# point construction
# ----------------------------------------------------------------------------------------------
def pixel_positions(pixel: Tensor, size: Tensor, dtype: torch.dtype) -> Tensor:
    """Image coordinates of pixels (docs/design.md §3.1): ``i / (L - 1) - 0.5`` per axis, 0 where ``L == 1``.

    ``pixel``: integer indices (e.g. ``[N, 2]`` rows and columns); ``size``: the lengths ``L``
    of their axes, broadcastable to ``pixel``. Returns ``pixel``'s shape in ``dtype``.
    """
    denom = (size - 1).to(dtype)
    return torch.where(denom > 0, pixel.to(dtype) / denom.clamp(min=1) - 0.5, torch.zeros_like(denom))


def _axis_coordinates(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`pixel_positions` of ``0 .. L - 1`` on an axis of length ``L``."""
    return pixel_positions(torch.arange(length, device=device), torch.tensor(length, device=device), dtype)


def _cat(parts: List[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _points_from_groups(
    groups: Sequence[Tensor], keep: Optional[Tensor], keep_name: str, image_name: str = "images"
) -> Tuple[dict, Optional[Tensor]]:
    """Build point attributes from decoded image groups ``[b, C, H, W]``.

    Pixel and position tables are built once per group on its ``H x W`` grid and repeated
    over the group's samples. ``keep`` is an optional flat bool tensor over all pixels
    (row-major per sample, samples in order). Returns the attribute dict and the kept flat
    pixel indices (``None`` = all).
    """
    device, dtype = groups[0].device, groups[0].dtype
    channels = groups[0].size(1)
    xs, pixels, poss, batches = [], [], [], []
    first = 0
    for g in groups:
        b, _, H, W = g.shape
        rows, cols = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
        pos_rows, pos_cols = torch.meshgrid(
            _axis_coordinates(H, dtype, device), _axis_coordinates(W, dtype, device), indexing="ij"
        )
        xs.append(g.permute(0, 2, 3, 1).reshape(b * H * W, channels))
        pixels.append(torch.stack([rows, cols], dim=-1).reshape(H * W, 2).repeat(b, 1))
        poss.append(torch.stack([pos_rows, pos_cols], dim=-1).reshape(H * W, 2).repeat(b, 1))
        batches.append(torch.arange(first, first + b, device=device).repeat_interleave(H * W))
        first += b
    sizes = _grid_sizes(groups)
    grid_size = torch.tensor(sizes, dtype=torch.long, device=device).reshape(len(sizes), 2)
    x, pixel, pos, batch = _cat(xs), _cat(pixels), _cat(poss), _cat(batches)
    kept = None
    if keep is not None:
        kept = keep.nonzero().squeeze(1)
        x, pixel, pos, batch = x[kept], pixel[kept], pos[kept], batch[kept]
    counts = batch_counts(batch, len(sizes))
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero().squeeze(1).tolist()
        raise ValueError(f"{keep_name} removes every pixel of sample(s) {empty}; each sample needs at least one point")
    check_finite(x, image_name)
    attrs = dict(x=x, pos=pos, batch=batch, ptr=batch_ptr(counts), pixel=pixel, grid_size=grid_size)
    return attrs, kept


def image_to_points(images: ImagesInput, mask: Optional[Union[MaskLike, Sequence[Optional[MaskLike]]]] = None) -> Batch:
    """Turn images into a batch of point sets, one point per (kept) pixel.

    Args:
        images: a tensor ``[C, H, W]`` or ``[B, C, H, W]`` (float kept, uint8 scaled to
            ``[0, 1]``); a numpy array ``H x W x C`` or ``H x W`` (uint8 / 255, uint16 / 65535,
            float kept); a PIL image; a file path (``str`` or ``pathlib.Path``; PNG, JPEG, ...
            read with the channels the file has: gray -> 1, RGB -> 3, RGBA -> 4, 16-bit gray
            scaled by 1/65535); or a list/tuple of these with any sizes (one ragged batch).
        mask: optional bool ``[H, W]`` (applied to every sample), ``[B, H, W]``, or a list with
            one ``[H_b, W_b]`` mask (or ``None``) per sample. Only pixels where it is True
            become points; every sample must keep at least one pixel.

    Returns:
        ``Batch`` with ``x: [N, C]``, ``pos: [N, 2]`` (docs/design.md §3.1 image coordinates; an axis of
        length 1 gets ``0.0``), ``batch: [N]``, ``ptr: [B + 1]``, ``pixel: [N, 2]`` int64
        ``(row, col)`` and ``grid_size: [B, 2]`` int64 ``(H, W)``. Points are row-major within
        each sample. ``x``/``pos`` are float64 when an input is float64, float32 otherwise,
        on the device of the input tensors (CPU for arrays, PIL images and files).
        NaN / inf values in kept pixels raise ``ValueError``.
    """
    return _batch(**image_point_attributes(images, mask))


def image_point_attributes(
    images: ImagesInput, mask: Optional[Union[MaskLike, Sequence[Optional[MaskLike]]]] = None
) -> dict:
    """The attributes of :func:`image_to_points`'s ``Batch`` as a dict (no PyG object built)."""
    groups = _load_images(images)
    keep = None if mask is None else _flat_mask(mask, _grid_sizes(groups), groups[0].device)
    attrs, _ = _points_from_groups(groups, keep, "mask")
    return attrs


# ----------------------------------------------------------------------------------------------
# discrete pixels
# ----------------------------------------------------------------------------------------------
def _check_points(points: object, name: str = "points") -> Tuple[Tensor, int, int]:
    """Return ``(batch [N], N, B)`` of a point Batch/Data."""
    data = sys.modules.get("torch_geometric.data.data")  # not loaded: no Data/Batch exists yet
    if data is None or not isinstance(points, data.BaseData):
        raise TypeError(f"{name} must be a torch_geometric Data/Batch, got {type(points).__name__}")
    ref = next((points[k] for k in ("batch", "pixel", "pos", "x") if isinstance(points.get(k), Tensor)), None)
    if ref is None:
        raise ValueError(f"{name} must carry at least one of batch, pixel, pos or x")
    batch, num_samples = check_batch(points.get("batch"), ref.size(0), ref.device, f"{name}.batch")
    if isinstance(points.get("grid_size"), Tensor):
        num_samples = max(num_samples, points.grid_size.size(0))
    elif isinstance(points.get("ptr"), Tensor):
        num_samples = max(num_samples, points.ptr.numel() - 1)
    return batch, batch.numel(), num_samples


def sample_pixels(
    points: Batch,
    ratio: float = 0.5,
    generator: Optional[torch.Generator] = None,
    index: Optional[Tensor] = None,
) -> Batch:
    """Keep a subset of the points of every sample (discrete pixels).

    Args:
        points: point ``Batch`` (e.g. from :func:`image_to_points`).
        ratio: keep ``ceil(ratio * n_b)`` uniformly random points of each sample (in their
            original, row-major order). Ignored when ``index`` is given.
        generator: ``torch.Generator`` (on the points' device) for reproducible draws.
        index: ``[M]`` LongTensor of global point indices to keep instead: no duplicates,
            grouped by sample in sample order, and every sample must keep a point.

    Returns:
        A new ``Batch`` in which every per-point tensor (``x``, ``pos``, ``batch``, ``pixel``
        and any other tensor with one row per point, i.e. ``N`` rows) is subset the same way,
        ``ptr`` is recomputed and ``grid_size`` (and non-tensor attributes) are kept.
    """
    batch, n, num_samples = _check_points(points)
    if index is None:
        ratio = check_ratio(ratio)
        index = random_sample(batch, ratio=ratio, generator=generator, sort=True)
    else:
        index = check_tensor(index, "index", ndim=1)
        if index.is_floating_point() or index.dtype == torch.bool or index.is_complex():
            raise TypeError(f"index must be an integer tensor of point indices, got dtype {index.dtype}")
        index = index.long().to(batch.device)
        if index.numel() == 0:
            raise ValueError("index is empty: keep at least one point per sample")
        if int(index.min()) < 0 or int(index.max()) >= n:
            raise ValueError(f"index values must lie in [0, {n}), got [{int(index.min())}, {int(index.max())}]")
        if torch.unique(index).numel() != index.numel():
            raise ValueError("index must not repeat a point")
        picked = batch[index]
        if index.numel() > 1 and bool((picked[1:] < picked[:-1]).any()):
            raise ValueError("index must keep the points grouped by sample, samples in order")
    new_batch = batch[index]
    counts = batch_counts(new_batch, num_samples)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero().squeeze(1).tolist()
        raise ValueError(f"index keeps no point of sample(s) {empty}; each sample needs at least one point")
    out = {}
    for key in points.keys():
        value = points[key]
        if key == "batch":
            out[key] = new_batch
        elif key == "ptr":
            out[key] = batch_ptr(counts)
        elif key not in _PER_SAMPLE_KEYS and isinstance(value, Tensor) and value.dim() > 0 and value.size(0) == n:
            out[key] = value[index.to(value.device)]
        else:
            out[key] = value
    out.setdefault("batch", new_batch)
    out.setdefault("ptr", batch_ptr(counts))
    return _batch(**out)


# ----------------------------------------------------------------------------------------------
# RGB-D
# ----------------------------------------------------------------------------------------------
def _depth_item(item: object) -> Tensor:
    """One depth input -> ``[b, H, W]`` tensor of raw values (CPU unless it was a tensor)."""
    if isinstance(item, (str, os.PathLike)):
        item = _open_image_file(item, "depth")
    if isinstance(item, Image.Image):
        item = _pil_to_array(item, "depth")
        if item.ndim != 2:
            raise ValueError(f"depth images must have one channel, got shape {item.shape}")
    if isinstance(item, np.ndarray):
        numeric = np.issubdtype(item.dtype, np.integer) or np.issubdtype(item.dtype, np.floating)
        if item.dtype == np.bool_ or not numeric:
            raise TypeError(f"depth arrays must be integer or floating point, got dtype {item.dtype}")
        item = torch.from_numpy(np.ascontiguousarray(item))
    if not isinstance(item, Tensor):
        raise TypeError(
            f"depth must be a tensor, numpy array, 16-bit PNG path, or a list of these; got {type(item).__name__}"
        )
    if item.dtype == torch.bool or item.is_complex():
        raise TypeError(f"depth must hold real numbers, got dtype {item.dtype}")
    if item.dim() == 4:
        if item.size(1) != 1:
            raise ValueError(f"depth as a 4-D tensor must be [B, 1, H, W], got shape {tuple(item.shape)}")
        item = item[:, 0]
    if item.dim() == 2:
        item = item.unsqueeze(0)
    if item.dim() != 3:
        raise ValueError(f"depth must be [H, W], [B, H, W] or [B, 1, H, W], got shape {tuple(item.shape)}")
    return item


def _depth_sources(depth: object) -> List[Optional[str]]:
    """The file of every depth map (None for in-memory inputs), in sample order."""
    sources: List[Optional[str]] = []
    for item in _items(depth):
        is_file = isinstance(item, (str, os.PathLike))
        count = 1 if is_file or isinstance(item, Image.Image) or getattr(item, "ndim", 2) == 2 else len(item)
        sources += [os.fspath(item) if is_file else None] * count
    return sources


def _check_positions_finite(pos: Tensor, z: Tensor, batch: Tensor, pixel: Tensor, depth: object) -> None:
    """Refuse back-projected positions that overflow the dtype, naming the sample, pixel and file."""
    bad = ~torch.isfinite(pos).all(dim=1)
    if not bool(bad.any()):
        return
    i = int(bad.nonzero()[0])
    b, (row, col) = int(batch[i]), pixel[i].tolist()
    sources = _depth_sources(depth)
    source = f" (file {sources[b]!r})" if b < len(sources) and sources[b] else ""
    raise ValueError(
        f"depth of sample {b}{source} at pixel ({row}, {col}) is {float(z[i]):.3g} m after depth_scale: its "
        f"back-projected position is not finite in {pos.dtype} ({int(bad.sum())} such pixels); check the "
        f"depth values and depth_scale"
    )


def _flat_depth(depth: object, sizes: Sequence[Tuple[int, int]], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Depth inputs -> flat ``[sum H_b * W_b]`` raw values in point order, checked against the RGB sizes."""
    parts = [_depth_item(item) for item in _items(depth)]
    total = sum(p.size(0) for p in parts)
    if total != len(sizes):
        raise ValueError(f"depth has {total} depth map(s) but rgb has {len(sizes)} image(s)")
    b = 0
    for p in parts:
        for _ in range(p.size(0)):
            if tuple(p.shape[1:]) != sizes[b]:
                raise ValueError(f"depth map {b} has size {tuple(p.shape[1:])} but its rgb image is {sizes[b]}")
            b += 1
    return torch.cat([p.to(device=device, dtype=dtype).reshape(-1) for p in parts])


def _pinhole(intrinsics: object, num_samples: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Intrinsics -> ``[B, 4]`` rows ``(fx, fy, cx, cy)``.

    Accepts ``(fx, fy, cx, cy)``, a 3x3 pinhole matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``,
    or per-sample ``[B, 4]`` / ``[B, 3, 3]``.
    """
    if isinstance(intrinsics, Tensor):
        k = intrinsics.detach().to(device=device, dtype=torch.float64)
    else:
        try:
            k = torch.as_tensor(np.asarray(intrinsics, dtype=np.float64), device=device)
        except (TypeError, ValueError) as err:
            kind = type(intrinsics).__name__
            raise TypeError(f"intrinsics must be a 3x3 matrix or (fx, fy, cx, cy), got {kind}") from err
    shape = tuple(k.shape)
    if shape in ((3, 3), (num_samples, 3, 3)):
        k = k.reshape(-1, 3, 3)
        pinhole = (k[:, 0, 1] == 0) & (k[:, 1, 0] == 0) & (k[:, 2, 0] == 0) & (k[:, 2, 1] == 0) & (k[:, 2, 2] == 1)
        if not bool(pinhole.all()):
            raise ValueError("intrinsics must be a pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew)")
        k = torch.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]], dim=1)
    elif shape in ((4,), (num_samples, 4)):
        k = k.reshape(-1, 4)
    else:
        raise ValueError(
            f"intrinsics must have shape (3, 3), (4,), ({num_samples}, 3, 3) or ({num_samples}, 4), got {shape}"
        )
    if not bool(torch.isfinite(k).all()):
        raise ValueError("intrinsics must be finite")
    if bool((k[:, :2] <= 0).any()):
        raise ValueError("intrinsics: focal lengths fx, fy must be positive")
    return k.to(dtype).expand(num_samples, 4)


def rgbd_to_points(
    rgb: ImagesInput,
    depth: object,
    intrinsics: Optional[object] = None,
    depth_scale: float = 1.0,
    mode: str = "xyz",
) -> Batch:
    """Turn RGB-D images into point sets, one point per pixel with valid depth.

    Args:
        rgb: anything :func:`image_to_points` takes (a single image, a batch or a list).
        depth: ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` tensor / numpy array, a depth
            image path (16-bit PNG: raw uint16 values), or a list of these (one per rgb image).
            Metres are ``value / depth_scale``. Pixels whose depth is 0, negative, NaN or inf
            are dropped; a depth so large that its back-projected position overflows the
            dtype raises ``ValueError`` naming the sample, the pixel and the file.
        intrinsics: pinhole camera, a 3x3 matrix or ``(fx, fy, cx, cy)`` (or per sample
            ``[B, 3, 3]`` / ``[B, 4]``), in pixels. Required for ``mode="xyz"``.
        depth_scale: raw depth units per metre (e.g. 1000 for millimetre PNGs), > 0.
        mode: ``"xyz"``: ``pos: [N, 3]`` back-projected ``X = (u - cx) z / fx``,
            ``Y = (v - cy) z / fy``, ``Z = z`` (u = column, v = row) and ``x: [N, C]`` colour;
            ``"uvd"``: ``pos: [N, 2]`` image coordinates (docs/design.md §3.3) and ``x: [N, C + 1]`` =
            ``[colour, depth]``.

    Returns:
        ``Batch`` with ``x``, ``pos``, ``batch``, ``ptr``, ``pixel: [N, 2]`` and
        ``grid_size: [B, 2]`` as in :func:`image_to_points`, in rgb's float dtype and device.
    """
    if mode not in ("xyz", "uvd"):
        raise ValueError(f"mode must be 'xyz' or 'uvd', got {mode!r}")
    if isinstance(depth_scale, bool) or not isinstance(depth_scale, (int, float)):
        raise TypeError(f"depth_scale must be a positive number, got {type(depth_scale).__name__}")
    if not (math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a finite number > 0, got {depth_scale}")
    if mode == "xyz" and intrinsics is None:
        raise ValueError("intrinsics are required for mode='xyz' (a 3x3 matrix or (fx, fy, cx, cy))")
    groups = _load_images(rgb, "rgb")
    dtype, device = groups[0].dtype, groups[0].device
    sizes = _grid_sizes(groups)
    camera = None if intrinsics is None else _pinhole(intrinsics, len(sizes), dtype, device)
    z_all = _flat_depth(depth, sizes, dtype, device) / depth_scale
    valid = torch.isfinite(z_all) & (z_all > 0)
    attrs, kept = _points_from_groups(groups, valid, "depth", "rgb")
    z = z_all[kept]
    if mode == "uvd":
        attrs["x"] = torch.cat([attrs["x"], z.unsqueeze(1)], dim=1)
        return _batch(**attrs)
    fx, fy, cx, cy = camera[attrs["batch"]].unbind(1)
    u = attrs["pixel"][:, 1].to(dtype)
    v = attrs["pixel"][:, 0].to(dtype)
    attrs["pos"] = torch.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], dim=1)
    _check_positions_finite(attrs["pos"], z, attrs["batch"], attrs["pixel"], depth)
    return _batch(**attrs)


# ----------------------------------------------------------------------------------------------
# back to the grid
# ----------------------------------------------------------------------------------------------
def _size_arg(value: Optional[int], name: str) -> Optional[int]:
    return None if value is None else check_k(value, name)


def _pixels_of(
    points: Batch, batch: Tensor, grid_size: Optional[Tensor], height: Optional[int], width: Optional[int]
) -> Tensor:
    """``points.pixel`` as int64 ``[N, 2]``, or the pixels recovered from ``pos`` (inverting
    :func:`pixel_positions`) with each sample's ``grid_size``, or else ``height`` / ``width``."""
    pixel = points.get("pixel")
    if pixel is not None:
        pixel = check_tensor(pixel, "points.pixel", ndim=2)
        if pixel.size(1) != 2 or pixel.is_floating_point():
            raise ValueError(f"points.pixel must be an integer [N, 2] tensor, got {pixel.dtype} {tuple(pixel.shape)}")
        return pixel.long()
    pos = points.get("pos")
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.size(1) != 2:
        raise ValueError("points needs pixel [N, 2], or pos [N, 2] image coordinates to recover pixels from")
    if grid_size is not None:
        lengths = grid_size.to(pos.device)[batch].to(torch.float64)
    elif height is not None and width is not None:
        lengths = torch.tensor([[height, width]], dtype=torch.float64, device=pos.device)
    else:
        raise ValueError("height and width are required to recover pixels from pos when points has no grid_size")
    return torch.round((pos.detach().to(torch.float64) + 0.5) * (lengths - 1)).long()


def points_to_image(
    values: Tensor,
    points: Batch,
    height: Optional[int] = None,
    width: Optional[int] = None,
    fill_value: float = 0.0,
) -> Tensor:
    """Scatter per-point values back onto the pixel grid.

    Args:
        values: ``[N, C]`` or ``[N]`` per-point values (any dtype; gradients flow through).
        points: the point ``Batch`` the values belong to. Pixels come from ``points.pixel``;
            without it they are recovered from ``pos`` as ``round((pos + 0.5) * (L - 1))``
            with ``L`` each sample's ``grid_size`` or else the given ``height`` / ``width``.
        height, width: canvas size; default the largest ``grid_size`` of the batch.
        fill_value: value of pixels that have no point.

    Returns:
        ``[B, C, H, W]`` tensor (``C = 1`` for ``[N]`` values), in the values' dtype and
        device. Sample ``b`` fills the top-left ``H_b x W_b`` corner of its canvas. If two
        points share a pixel, one of them (unspecified which) is written.
    """
    values = check_tensor(values, "values")
    if values.dim() not in (1, 2):
        raise ValueError(f"values must be [N, C] or [N], got shape {tuple(values.shape)}")
    if values.dim() == 1:
        values = values.unsqueeze(1)
    height, width = _size_arg(height, "height"), _size_arg(width, "width")
    batch, n, num_samples = _check_points(points)
    if values.size(0) != n:
        raise ValueError(f"values must have one row per point ({n}), got {values.size(0)}")
    grid_size = points.get("grid_size")
    if grid_size is not None:
        grid_size = check_tensor(grid_size, "points.grid_size", ndim=2)
        if grid_size.size(1) != 2:
            raise ValueError(f"points.grid_size must be [B, 2], got shape {tuple(grid_size.shape)}")
    pixel = _pixels_of(points, batch, grid_size, height, width)
    if height is None or width is None:
        if grid_size is None:
            raise ValueError("height and width are required when points has no grid_size")
        largest = grid_size.max(dim=0).values.tolist()
        height = largest[0] if height is None else height
        width = largest[1] if width is None else width
    pixel = pixel.to(values.device)
    if bool((pixel < 0).any()):
        raise ValueError("points.pixel (or the pixels recovered from pos) must be non-negative")
    if bool((pixel[:, 0] >= height).any()):
        raise ValueError(f"height={height} is too small: a point lies in row {int(pixel[:, 0].max())}")
    if bool((pixel[:, 1] >= width).any()):
        raise ValueError(f"width={width} is too small: a point lies in column {int(pixel[:, 1].max())}")
    flat = (batch.to(values.device) * height + pixel[:, 0]) * width + pixel[:, 1]
    canvas = values.new_full((num_samples * height * width, values.size(1)), fill_value)
    canvas = canvas.index_put((flat,), values)
    return canvas.reshape(num_samples, height, width, values.size(1)).permute(0, 3, 1, 2).contiguous()
