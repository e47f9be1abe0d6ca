"""Shared test utilities (devices, grid-image point batches)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples may import each other)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def grid_points(images: torch.Tensor) -> SimpleNamespace:
    """Hand-built pixels-as-points batch of ``images: [B, C, H, W]`` (row-major, docs/design.md §3.1)."""
    B, C, H, W = images.shape
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pixel = torch.stack((rows.reshape(-1), cols.reshape(-1)), 1).repeat(B, 1).to(images.device)
    pos = torch.stack((rows.reshape(-1) / (H - 1) - 0.5, cols.reshape(-1) / (W - 1) - 0.5), 1).to(images)
    return SimpleNamespace(
        x=images.permute(0, 2, 3, 1).reshape(-1, C),
        pos=pos.repeat(B, 1),
        batch=torch.arange(B, device=images.device).repeat_interleave(H * W),
        pixel=pixel,
        grid_size=torch.tensor([[H, W]] * B, device=images.device),
    )
