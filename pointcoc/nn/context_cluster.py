"""The context-cluster operation on point sets (docs/design.md §5).

One code path serves point clouds, discrete or masked pixels, RGB-D points and
grid images: the geometry lives in a :class:`~pointcoc.nn.cluster_plan.ClusterPlan`,
the features flow through scatter-add and gather over centre ids. Nothing of
size points x centres x channels is allocated: the hard assignment is an argmax
computed without gradient (chunked), and only the assigned similarity is
recomputed with gradient, which gives the reference's values and gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float, check_tensor
from .cluster_plan import PROPOSALS, ClusterPlan, make_plan

__all__ = ["context_cluster", "assign_centres", "ContextCluster", "NORMALIZATIONS"]

#: ``"similarity"``: divide the aggregate by ``1 + sum of assigned similarities`` (paper, current
#: published models); ``"count"``: divide by ``1 + number of assigned points`` (the older models).
NORMALIZATIONS = ("similarity", "count")

# largest similarity block evaluated at once by the no-grad argmax (elements)
_SIM_CHUNK = 1 << 22


class _IndexAdd(torch.autograd.Function):
    """``base.index_add(0, index, source)`` that does not keep ``source`` for the backward pass.

    Autograd's ``index_add`` saves ``source`` (only its shape is used); this one saves the
    index alone and returns the same gradients, ``grad`` and ``grad.index_select(0, index)``.
    """

    @staticmethod
    def forward(ctx, base: Tensor, index: Tensor, source: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        return base.index_add(0, index, source)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], None, Optional[Tensor]]:
        (index,) = ctx.saved_tensors
        grad_source = grad.index_select(0, index) if ctx.needs_input_grad[2] else None
        return (grad if ctx.needs_input_grad[0] else None), None, grad_source


def _index_add_rows(base: Tensor, index: Tensor, source: Tensor) -> Tensor:
    """``base.index_add(0, index, source)``; keeps only ``index`` for the backward pass."""
    return _IndexAdd.apply(base, index, source)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """``torch.bmm(a, b)`` for ``a: [G, L, H]``, ``b: [G, H, C]``; with ``H = 1`` a broadcast product
    (the same values: a one-term sum is its product), which is several times faster than ``bmm``."""
    return a * b if a.size(-1) == 1 else torch.bmm(a, b)


class _WeightedSum(torch.autograd.Function):
    """``w^T x`` per group: ``w: [G, L, H]``, ``x: [G, L, C]`` -> ``[G, H, C]`` (``torch.bmm(w.mT, x)``).

    The gradient of ``x`` is the outer product ``w g``; with one head autograd's ``bmm`` computes
    it as ``G`` products of inner size 1, here a broadcast product.
    """

    @staticmethod
    def forward(ctx, w: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(w, x)
        return torch.bmm(w.transpose(1, 2), x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        w, x = ctx.saved_tensors
        grad_w = torch.bmm(x, grad.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        return grad_w, (_outer(w, grad) if ctx.needs_input_grad[1] else None)


class _Spread(torch.autograd.Function):
    """``bias + w p`` per group: ``bias: [O]``, ``w: [G, L, H]``, ``p: [G, H, O]`` -> ``[G, L, O]``.

    The adjoint of :class:`_WeightedSum`: with one head the forward pass is a broadcast product
    instead of ``baddbmm``'s ``G`` products of inner size 1; the gradients are weighted sums.
    """

    @staticmethod
    def forward(ctx, bias: Tensor, w: Tensor, p: Tensor) -> Tensor:
        ctx.save_for_backward(w, p)
        if w.size(-1) == 1:  # product, then bias: baddbmm's rounding (addcmul's may differ)
            return torch.mul(w, p).add_(bias)
        return torch.baddbmm(bias.expand(w.size(0), w.size(1), -1), w, p)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        w, p = ctx.saved_tensors
        grad_bias = grad.sum((0, 1)) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad, p.transpose(1, 2)) if ctx.needs_input_grad[1] else None
        grad_p = torch.bmm(w.transpose(1, 2), grad) if ctx.needs_input_grad[2] else None
        return grad_bias, grad_w, grad_p


def _centre_means(feats: Tensor, plan: ClusterPlan) -> Tensor:
    """Mean of every centre's members. ``feats: [N, H, D]`` -> ``[G * c, H, D]``."""
    flat = feats.reshape(feats.size(0), -1)  # index_add is much faster on 2-D rows
    src = flat if plan.member_point is None else flat.index_select(0, plan.member_point)
    sums = _index_add_rows(flat.new_zeros(plan.num_groups * plan.num_centres, flat.size(1)), plan.member_centre, src)
    count = plan.centre_count.clamp(min=1).to(feats.dtype)
    return (sums / count.unsqueeze(1)).view((-1,) + tuple(feats.shape[1:]))


@torch.no_grad()
def assign_centres(fn: Tensor, cn: Tensor, plan: ClusterPlan, alpha: Tensor, beta: Tensor) -> Tensor:
    """Hard assignment ``a(i) = argmax_j sigmoid(beta + alpha * cos(f_i, c_j))`` per head.

    Args:
        fn: ``[N, H, d]`` L2-normalised point features.
        cn: ``[G, c, H, d]`` L2-normalised centre features.
        plan: the layer's plan.

    Returns:
        ``[N, H]`` local centre index (ties: the lowest index, as ``torch.max``).
    """
    G, c, H, d = cn.shape
    N = fn.size(0)
    if c == 1:
        return torch.zeros(N, H, dtype=torch.long, device=fn.device)
    L = plan.max_group_size
    dense = _head_major(fn, plan)  # [G, H, L, d]
    invalid = None if plan.centre_valid is None else ~plan.centre_valid  # [G, c]
    out = torch.empty(G, L, H, dtype=torch.long, device=fn.device)
    step = max(1, _SIM_CHUNK // max(1, G * H * c))
    cT = cn.permute(0, 2, 3, 1)  # [G, H, d, c]
    for s in range(0, L, step):
        sim = torch.sigmoid(beta + alpha * torch.matmul(dense[:, :, s : s + step], cT))  # [G, H, l, c]
        if invalid is not None:
            sim.masked_fill_(invalid[:, None, None, :], float("-inf"))
        out[:, s : s + step] = sim.argmax(-1).transpose(1, 2)
    out = out.view(G * L, H)
    return out if plan.dense_index is None else out.index_select(0, plan.dense_index)


def _head_major(fn: Tensor, plan: ClusterPlan) -> Tensor:
    """``fn: [N, H, d]`` in the plan's dense layout with the heads before the points, ``[G, H, L, d]``
    (padding rows zero). Without padding it is one gather, and a chunk of ``L`` is contiguous."""
    N, H, d = fn.shape
    G, L = plan.num_groups, plan.max_group_size
    if plan.dense_index is not None and plan.dense_index.numel() != G * L:  # padded groups
        dense = fn.new_zeros(G * L, H, d)
        dense[plan.dense_index] = fn
        return dense.view(G, L, H, d).transpose(1, 2)
    point = torch.arange(N, device=fn.device)  # the point in each slot
    if plan.dense_index is not None:
        point = torch.empty_like(point).index_copy_(0, plan.dense_index, point)
    rows = point.view(G, 1, L) * H + torch.arange(H, device=fn.device).view(1, H, 1)  # row of [N * H, d]
    return fn.reshape(N * H, d).index_select(0, rows.view(-1)).view(G, H, L, d)


def context_cluster(
    f: Tensor,
    v: Tensor,
    plan: ClusterPlan,
    alpha: Tensor,
    beta: Tensor,
    normalize: str = "similarity",
    centres: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """Cluster, aggregate and dispatch (docs/design.md §5, steps 2-6, before the projection).

    Args:
        f: ``[N, H, d]`` similarity-space features (``H`` heads).
        v: ``[N, H, d]`` value-space features.
        plan: segments and centre memberships (:func:`~pointcoc.nn.cluster_plan.make_plan`).
        alpha, beta: ``[1]`` similarity scale and shift.
        normalize: ``"similarity"`` (divide by ``1 + sum s``, the paper) or ``"count"``
            (``1 + #points``, the older reference).
        centres: ``(cf, vc)``, each ``[G * c, H, d]``, the centres' mean ``f`` and ``v`` if
            the caller has them (:class:`ContextCluster` projects the mean input instead of
            averaging the projections); ``None``: averaged here. Ignored on the
            one-centre-per-segment path.

    Returns:
        ``out [N, H, d]`` dispatched features and ``assignment [N, H]`` (global centre id
        ``group * c + j``).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if _is_one_centre_per_group(plan):
        return _one_centre_per_group(f, v, plan, alpha, beta, normalize)
    N, H, d = f.shape
    c = plan.num_centres
    if centres is None:
        means = _centre_means(torch.cat([f, v], dim=-1), plan)  # [G*c, H, 2d]
        centres = means[..., :d], means[..., d:]
    cf, vc = centres
    # without gradients nothing keeps the [N, H, d] tensors made here or v: each is dropped
    # (del) after its last use and products run in place on fresh gathers, a lower peak
    fn = F.normalize(f, dim=-1)
    cn = F.normalize(cf, dim=-1)
    local = assign_centres(fn.detach(), cn.detach().view(plan.num_groups, c, H, d), plan, alpha.detach(), beta.detach())
    centre = plan.group[:, None] * c + local  # [N, H]
    slot = (centre * H + torch.arange(H, device=f.device)).view(-1)  # row of [G*c*H, ...]
    cos = _product(cn.reshape(-1, d).index_select(0, slot).view(N, H, d), fn).sum(-1)
    del fn
    s = torch.sigmoid(beta + alpha * cos)  # [N, H] similarity to the assigned centre
    num = _index_add_rows(vc.reshape(-1, d), slot, (s.unsqueeze(-1) * v).view(-1, d))
    del v
    weight = s.reshape(-1) if normalize == "similarity" else torch.ones_like(s).view(-1)
    den = _index_add_rows(weight.new_ones(num.size(0)), slot, weight)
    agg = num / den.unsqueeze(-1)
    return _product(agg.index_select(0, slot).view(N, H, d), s.unsqueeze(-1)), centre


def _product(fresh: Tensor, other: Tensor) -> Tensor:
    """``fresh * other``, in place on ``fresh`` (a tensor nothing else holds) when there is no gradient."""
    return other * fresh if torch.is_grad_enabled() else fresh.mul_(other)


def _is_one_centre_per_group(plan: ClusterPlan) -> bool:
    """Whether the plan is ``G`` equal segments of consecutive points with one centre each."""
    return plan.num_centres == 1 and plan.member_point is None and plan.dense_index is None and plan.max_group_size > 0


def _one_centre_per_group(
    f: Tensor, v: Tensor, plan: ClusterPlan, alpha: Tensor, beta: Tensor, normalize: str
) -> Tuple[Tensor, Tensor]:
    """:func:`context_cluster` for equal segments: ``G`` groups of ``L`` consecutive points, one centre each.

    Every segment sum is a reduction over the ``L`` axis of ``[G, L, H, d]`` and every
    gather a broadcast, instead of ``index_add`` / indexing over centre ids (same values).
    """
    N, H, d = f.shape
    G, L = plan.num_groups, plan.max_group_size
    s, _, den = _group_similarity(f.reshape(G, L, H, d), alpha, beta, normalize)
    s, v = s.unsqueeze(-1), v.reshape(G, L, H, d)  # [G, L, H, 1], [G, L, H, d]
    agg = (v.mean(1, keepdim=True) + (s * v).sum(1, keepdim=True)) / den.view(G, 1, H, 1)  # [G, 1, H, d]
    return (s * agg).view(N, H, d), plan.group.unsqueeze(1).expand(N, H)


def _group_similarity(f: Tensor, alpha: Tensor, beta: Tensor, normalize: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Similarity of every point of ``f: [G, L, H, d]`` to its group's centre (the mean), ``s [G, L, H]``,
    with ``1 + sum s`` and the aggregate's denominator (``1 + sum s``, or ``1 + L`` for ``"count"``), ``[G, H]``."""
    cos = (F.normalize(f, dim=-1) * F.normalize(f.mean(1, keepdim=True), dim=-1)).sum(-1)
    s = torch.sigmoid(beta + alpha * cos)
    total = 1.0 + s.sum(1)
    return s, total, total if normalize == "similarity" else torch.full_like(total, 1.0 + f.size(1))


def _one_centre_per_group_projected(
    x: Tensor,
    f: Tensor,
    plan: ClusterPlan,
    alpha: Tensor,
    beta: Tensor,
    normalize: str,
    value: nn.Linear,
    proj: nn.Linear,
) -> Tensor:
    """:class:`ContextCluster` on equal segments with one centre each, ``value`` and ``proj`` applied per segment.

    With one centre, every point of a segment is dispatched the same aggregate, and both
    projections are affine: ``agg = value((mean x + sum_j s_j x_j) / den)`` up to the bias
    (``b * (1 + sum_j s_j) / den``) and ``proj(s_i * agg) = s_i * (W_proj agg) + b_proj``. So
    the similarity-weighted inputs are summed (``C`` channels per point) and projected once per
    segment instead of projecting every point's value and output (``2 * C * H * d`` per point).
    Same values as :func:`context_cluster` up to rounding; only ``f: [N, H, d]`` is per point.
    Returns ``[N, out_dim]``.
    """
    N, C = x.shape
    _, H, d = f.shape
    G, L = plan.num_groups, plan.max_group_size
    s, total, den = _group_similarity(f.reshape(G, L, H, d), alpha, beta, normalize)  # [G, L, H], [G, H], [G, H]
    # mean input (the centre) + similarity-weighted inputs, as one weighted sum
    inputs = _WeightedSum.apply(s + 1.0 / L, x.reshape(G, L, C)) / den.unsqueeze(-1)  # [G, H, C]
    agg = torch.einsum("ghc,hdc->ghd", inputs, value.weight.view(H, d, C))
    agg = agg + value.bias.view(H, d) * (total / den).unsqueeze(-1)
    projected = torch.einsum("ghd,ohd->gho", agg, proj.weight.view(-1, H, d))  # [G, H, out_dim]
    return _Spread.apply(proj.bias, s, projected).view(N, -1)


class ContextCluster(nn.Module):
    """Context-cluster token mixer on point sets.

    Args:
        dim: input channels ``C``.
        out_dim: output channels (default ``dim``).
        heads, head_dim: heads split the ``heads * head_dim`` channels of ``f``/``v``.
        proposal: ``"grid"``, ``"fps"``, ``"random"``, ``"index"`` or ``"mean"``.
        centres: centres per region (``(rows, cols)`` grid bins, or a count).
        regions: folds per axis (``1`` = the whole sample is one region).
        k: points averaged into each point-proposed centre (``None``: automatic).
        normalize: ``"similarity"`` (paper) or ``"count"`` (older reference).

    Parameters: ``f``, ``v`` (Linear ``dim -> heads*head_dim``), ``proj``
    (``heads*head_dim -> out_dim``), ``sim_alpha`` (init 1), ``sim_beta`` (init 0).

    ``forward(x [N, C], pos [N, P], batch [N], plan=...)`` returns ``[N, out_dim]``.
    """

    def __init__(
        self,
        dim: int,
        out_dim: Optional[int] = None,
        heads: int = 4,
        head_dim: int = 24,
        proposal: str = "grid",
        centres: Union[int, Tuple[int, int]] = 2,
        regions: Optional[Union[int, Sequence[int]]] = 1,
        k: Optional[int] = None,
        normalize: str = "similarity",
    ) -> None:
        super().__init__()
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        out_dim = out_dim or dim
        self.heads, self.head_dim = heads, head_dim
        self.proposal, self.centres, self.regions, self.k = proposal, centres, regions, k
        self.normalize = normalize
        self.f = nn.Linear(dim, heads * head_dim)
        self.v = nn.Linear(dim, heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, out_dim)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, head_dim={self.head_dim}, proposal={self.proposal!r}, centres={self.centres}, "
            f"regions={self.regions}, k={self.k}, normalize={self.normalize!r}"
        )

    def make_plan(
        self,
        pos: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        *,
        pixel: Optional[Tensor] = None,
        grid_size: Optional[Tensor] = None,
        index: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        random_start: bool = False,
        proposal: Optional[str] = None,
        regions: Optional[Union[int, Sequence[int]]] = None,
    ) -> ClusterPlan:
        """The plan of this layer for a point set (``proposal``/``regions`` override the layer's)."""
        return make_plan(
            pos,
            batch,
            proposal=proposal or self.proposal,
            centres=self.centres,
            regions=self.regions if regions is None else regions,
            k=self.k,
            pixel=pixel,
            grid_size=grid_size,
            index=index,
            generator=generator,
            random_start=random_start,
        )

    def forward(
        self,
        x: Tensor,
        pos: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        plan: Optional[ClusterPlan] = None,
        return_assignment: bool = False,
        **plan_kwargs,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """``x: [N, C]`` -> ``[N, out_dim]``; builds a plan from ``pos``/``batch`` unless given.

        With ``return_assignment`` also returns each point's global centre id ``[N, heads]``.
        """
        x = check_float(check_tensor(x, "x", ndim=2), "x")
        if plan is None:
            if pos is None and batch is None:
                batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
            plan = self.make_plan(pos, batch, **plan_kwargs)
        if plan.num_points != x.size(0):
            raise ValueError(f"x has {x.size(0)} points but the plan was built for {plan.num_points}")
        N, H, d = x.size(0), self.heads, self.head_dim
        f = self.f(x).view(N, H, d)
        if _is_one_centre_per_group(plan):
            args = (plan, self.sim_alpha, self.sim_beta, self.normalize, self.v, self.proj)
            out = _one_centre_per_group_projected(x, f, *args)
            return (out, plan.group.unsqueeze(1).expand(N, H)) if return_assignment else out
        # the projections are affine: projecting each centre's mean input gives its mean
        # f and v (exactly, up to rounding), and averages C channels instead of 2 * H * d
        xm = _centre_means(x, plan)
        centres = self.f(xm).view(-1, H, d), self.v(xm).view(-1, H, d)
        out, centre = context_cluster(
            f, self.v(x).view(N, H, d), plan, self.sim_alpha, self.sim_beta, self.normalize, centres
        )
        out = self.proj(out.reshape(N, H * d))
        return (out, centre) if return_assignment else out
