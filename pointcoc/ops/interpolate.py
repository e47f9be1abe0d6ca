"""k-NN feature interpolation (PyG's ``knn_interpolate``): the feature-propagation step of
point-cloud decoders."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._checks import check_tensor
from .knn import knn_padded

__all__ = ["knn_interpolate"]


def knn_interpolate(
    x: Tensor,
    pos_x: Tensor,
    pos_y: Tensor,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    k: int = 3,
    num_workers: int = 1,
) -> Tensor:
    """Features at ``pos_y`` as the inverse-squared-distance weighted mean over the ``k`` nearest ``pos_x``.

    ``y_i = sum_j w_ij x_j / sum_j w_ij`` with ``w_ij = 1 / max(|pos_y[i] - pos_x[j]|^2, 1e-16)``
    over the k nearest points ``j`` of the same sample (exact neighbours, as
    :func:`pointcoc.ops.knn`; all of them when a sample has fewer than ``k``). Gradients flow to
    ``x`` (not to the positions), as in PyG.

    Args:
        x: ``[N, C]`` features at ``pos_x: [N, D]``; pos_y: ``[M, D]`` target positions.
        batch_x, batch_y: sorted sample ids (``None``: one sample).
        k: neighbours per target point.
        num_workers: accepted for PyG compatibility.

    Returns:
        ``[M, C]`` interpolated features (dtype of ``x``).
    """
    x = check_tensor(x, "x", ndim=2)
    pos_x = check_tensor(pos_x, "pos_x", ndim=2)
    pos_y = check_tensor(pos_y, "pos_y", ndim=2)
    if x.size(0) != pos_x.size(0):
        raise ValueError(f"x must have one row per point of pos_x ({pos_x.size(0)}), got {x.size(0)}")
    if pos_y.dtype != pos_x.dtype or pos_y.size(1) != pos_x.size(1):
        raise ValueError(
            f"pos_y must match pos_x in dtype and coordinates ({pos_x.dtype}, {pos_x.size(1)}), "
            f"got {pos_y.dtype}, {pos_y.size(1)}"
        )
    index, dist = knn_padded(pos_x, pos_y, k, batch_x, batch_y)
    if bool((index[:, 0] < 0).any()):
        raise ValueError("every sample holding points of pos_y needs at least one point of pos_x")
    weight = 1.0 / dist.double().clamp(min=1e-16)  # [M, k]; padding (inf distance) weighs 0
    weight = (weight / weight.sum(1, keepdim=True)).to(x.dtype)
    neighbours = x[index.clamp(min=0)]  # [M, k, C]
    return (neighbours * weight[..., None]).sum(1)
