"""PointMLP and PointMLP-CoC in the released layout: the reference point-cloud models.

Written plainly from the architecture (docs/design.md §9) as the released code lays it out:
``Conv1d`` layers on ``[B * S, C, k]`` groups, the grouped tensor ``[B, S, k, 2C]`` built
explicitly (normalised neighbours next to the repeated anchor), ``torch.cdist`` + ``topk``
neighbours and a plain farthest-point-sampling loop from index 0 (the released CUDA kernel's
start). Parameter names are the released checkpoints' (``fc1`` / ``fc_v`` / ``fc2`` in the
context clusters, 1x1 weights ``[out, in, 1]``), so a released state dict loads as is.

It is the oracle :class:`pointcoc.models.PointMLP` is tested against, and the side-by-side
baseline of ``benchmarks/pointmlp.py``. A leaf: nothing in the library imports it.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ARCHITECTURES", "ReferencePointMLP", "fps_from_first"]

#: name -> (embed, res_expansion, dim expansion, pre_blocks, pos_blocks); ``*_coc`` adds context clusters
ARCHITECTURES: Dict[str, Tuple[int, float, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]] = {
    "pointmlp": (64, 1.0, (2, 2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2)),
    "pointmlp_elite": (32, 0.25, (2, 2, 2, 1), (1, 1, 2, 1), (1, 1, 2, 1)),
}


def _conv_bn(cin: int, cout: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.net = _conv_bn(cin, cout, True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Residual(nn.Module):
    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        self.net1 = _conv_bn(channels, int(channels * expansion), True)
        self.net2 = _conv_bn(int(channels * expansion), channels, False)

    def forward(self, x: Tensor) -> Tensor:  # [*, C, L]
        return F.relu(self.net2(self.net1(x)) + x)


class _Cluster(nn.Module):
    """One centre per group = mean of its k points; sigmoid(beta + alpha cos) similarity; own residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 32)
        self.fc1 = nn.Conv1d(channels, hidden, 1)
        self.fc_v = nn.Conv1d(channels, hidden, 1)
        self.fc2 = nn.Conv1d(hidden, channels, 1)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:  # [G, C, k]
        f, v = self.fc1(x), self.fc_v(x)
        centre, value_centre = f.mean(-1, keepdim=True), v.mean(-1)
        cos = (F.normalize(f, dim=1) * F.normalize(centre, dim=1)).sum(1)  # [G, k]
        s = torch.sigmoid(self.sim_beta + self.sim_alpha * cos)
        agg = (value_centre + (s[:, None, :] * v).sum(-1)) / (1.0 + s.sum(-1, keepdim=True))  # [G, h]
        return x + self.fc2(s[:, None, :] * agg[:, :, None])


class _Grouper(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.affine_alpha = nn.Parameter(torch.ones(1, 1, 1, channels))
        self.affine_beta = nn.Parameter(torch.zeros(1, 1, 1, channels))


class _Pre(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, expansion: float, coc: bool) -> None:
        super().__init__()
        self.transfer = _ConvBNReLU(2 * cin, cout)
        ops = []
        for _ in range(blocks):
            ops += ([_Cluster(cout)] if coc else []) + [_Residual(cout, expansion)]
        self.operation = nn.ModuleList(ops)

    def forward(self, grouped: Tensor) -> Tensor:  # [B, S, k, 2C] -> [B, O, S]
        B, S, k, d = grouped.shape
        x = self.transfer(grouped.permute(0, 1, 3, 2).reshape(B * S, d, k))
        for op in self.operation:
            x = op(x)
        return x.max(-1).values.view(B, S, -1).permute(0, 2, 1)


class _Pos(nn.Module):
    def __init__(self, channels: int, blocks: int, expansion: float) -> None:
        super().__init__()
        self.operation = nn.Sequential(*(_Residual(channels, expansion) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:  # [B, O, S]
        return self.operation(x)


def fps_from_first(xyz: Tensor, num: int) -> Tensor:
    """Farthest point sampling from index 0 on ``xyz: [B, n, 3]`` -> ``[B, num]`` (ties: lowest index)."""
    B, n, _ = xyz.shape
    rows = torch.arange(B, device=xyz.device)
    picked = torch.zeros(B, num, dtype=torch.long, device=xyz.device)
    nearest = torch.full((B, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    current = torch.zeros(B, dtype=torch.long, device=xyz.device)
    for i in range(num):
        picked[:, i] = current
        nearest = torch.minimum(nearest, ((xyz - xyz[rows, current][:, None]) ** 2).sum(-1))
        current = nearest.argmax(-1)
    return picked


class ReferencePointMLP(nn.Module):
    """PointMLP (``name`` in :data:`ARCHITECTURES`) or its ``*_coc`` variant, in the released layout.

    ``forward(x: [B, 3, n]) -> [B, num_classes]``; stage ``s`` keeps ``n / 2 ** (s + 1)`` anchors
    and groups ``k`` neighbours around each.
    """

    def __init__(self, name: str, num_classes: int = 15, points: int = 1024, k: int = 24) -> None:
        super().__init__()
        base = name[: -len("_coc")] if name.endswith("_coc") else name
        if base not in ARCHITECTURES:
            raise ValueError(f"name must be one of {sorted(ARCHITECTURES)} or their '_coc' variants, got {name!r}")
        embed, expansion, dims, pre, pos = ARCHITECTURES[base]
        self.k = k
        self.embedding = _ConvBNReLU(3, embed)
        self.local_grouper_list = nn.ModuleList()
        self.pre_blocks_list = nn.ModuleList()
        self.pos_blocks_list = nn.ModuleList()
        self.anchors = []
        channels = embed
        for s in range(4):
            points //= 2
            self.anchors.append(points)
            self.local_grouper_list.append(_Grouper(channels))
            self.pre_blocks_list.append(_Pre(channels, channels * dims[s], pre[s], expansion, base != name))
            channels *= dims[s]
            self.pos_blocks_list.append(_Pos(channels, pos[s], expansion))
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )  # fmt: skip

    def _group(self, s: int, xyz: Tensor, points: Tensor) -> Tuple[Tensor, Tensor]:
        """Stage ``s``'s anchor positions ``[B, S, 3]`` and grouped tensor ``[B, S, k, 2C]``."""
        rows = torch.arange(xyz.size(0), device=xyz.device)[:, None]
        anchor_idx = fps_from_first(xyz, self.anchors[s])
        anchor_xyz, anchor = xyz[rows, anchor_idx], points[rows, anchor_idx]
        dist = torch.cdist(anchor_xyz, xyz, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        nbr = dist.topk(self.k, dim=-1, largest=False).indices  # [B, S, k]
        diff = points[rows[:, :, None], nbr] - anchor[:, :, None, :]
        std = diff.reshape(xyz.size(0), -1).std(dim=-1).view(-1, 1, 1, 1)
        grouper = self.local_grouper_list[s]
        normed = grouper.affine_alpha * diff / (std + 1e-5) + grouper.affine_beta
        return anchor_xyz, torch.cat([normed, anchor[:, :, None, :].expand_as(normed)], dim=-1)

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, n]
        xyz = x.permute(0, 2, 1)
        h = self.embedding(x)  # [B, C, n]
        for s in range(4):
            xyz, grouped = self._group(s, xyz, h.permute(0, 2, 1))
            h = self.pos_blocks_list[s](self.pre_blocks_list[s](grouped))
        return self.classifier(h.max(-1).values)
