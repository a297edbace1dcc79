"""The correlation losses: STEGO's distillation terms and DepthG's depth-feature correlation (DFC) term.

Every term has one form (METHOD.md §3.2): for sampled maps (f1, z1) and (f2, z2),

    loss[b,h,w,i,j] = -clamp(Zc[b,h,w,i,j], min) * (T[b,h,w,i,j] - shift),   Zc = Corr(z1, z2)

with the target T the (optionally centred) feature correlation Corr(f1, f2) for the STEGO terms, and a depth
correlation D for the DFC term. Gradients reach only the codes z; the target is computed without them.

DFC target (DESIGN.md §3, METHOD.md §3.4 and §3.7):
* ``"reference"``: as released, D = Corr(d^, d^) of the 1-channel depth resized uniformly to S x S, which is the
  product of signs of the depth, i.e. 1 wherever depth > 0. It does not depend on depth values.
* ``"paper"``: P = 1 - |d~_hw - d~_ij| of the per-image min-max normalised depth d~ in [0, 1] sampled at the *same*
  locations as the codes (1 for patches at equal depth, falling linearly to 0 across the image's depth range),
  centred per anchor: D = P - mean_ij P. Pairs closer in depth than the anchor's average pair are pulled together,
  farther ones pushed apart (the paper's figure-1 caption, METHOD.md §3.7); the shift moves that boundary. Our
  choice; the paper's exact formula could not be read. Uncentred, P >= 0 makes the term pure attraction for the
  small shifts of the presets, and the codes collapse to one direction (measured on the synthetic world).

Shapes: B batch, C feature channels, K code channels, h/w feature grid, H/W full-resolution depth, S sample side;
correlation tensors are [B,S,S,S,S] indexed (b, h, w, i, j): location (h, w) of the first map against (i, j) of
the second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from depthg.config import check_fidelity
from depthg.errors import ConfigError
from depthg.model.sampling import (
    bilinear_taps,
    channel_blocks,
    gather_points,
    normalize_depth,
    point_table,
    pool_depth,
    sample,
)


def norm(t: Tensor) -> Tensor:
    """L2 normalisation along channels, eps 1e-10 (DG src/modules.py:789): an all-zero vector stays zero."""
    return F.normalize(t, dim=1, eps=1e-10)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of channel vectors, [B,C,h,w] x [B,C,i,j] -> [B,h,w,i,j] (``tensor_correlation``, DG :797-809)."""
    assert a.shape[:2] == b.shape[:2], f"correlation needs equal batch and channels: {a.shape} vs {b.shape}"
    return torch.einsum("nchw,ncij->nhwij", norm(a), norm(b))


def feature_target(f1: Tensor, f2: Tensor, *, pointwise: bool = True) -> Tensor:
    """STEGO's target F = Corr(f1, f2), without gradient; optionally centred per anchor location (METHOD.md §3.2).

    Pointwise centring subtracts the mean over the second map's locations (i, j) for each (b, h, w) and then
    restores the mean of the *whole* tensor before centring, so batch items interact through that one scalar
    (golden a ``fd_pointwise``).
    """
    with torch.no_grad():
        fd = correlation(f1, f2)
        if pointwise:
            old_mean = fd.mean()
            fd = fd - fd.mean(dim=(3, 4), keepdim=True)
            fd = fd - fd.mean() + old_mean
    return fd


def distill(target: Tensor, cd: Tensor, shift: float, *, zero_clamp: bool = True, stabilize: bool = False) -> Tensor:
    """The shared term -clamp(cd) * (target - shift), unreduced [B,h,w,i,j] (DG :1250-1254).

    zero_clamp clamps the code correlation at 0 (else at -9999, i.e. not at all); stabilize also caps it at 0.8.
    """
    low = 0.0 if zero_clamp else -9999.0
    clamped = cd.clamp(low, 0.8) if stabilize else cd.clamp(low)
    return -clamped * (target - shift)


def stego_term(
    f1: Tensor,
    f2: Tensor,
    c1: Tensor,
    c2: Tensor,
    shift: float,
    *,
    pointwise: bool = True,
    zero_clamp: bool = True,
    stabilize: bool = False,
) -> Tensor:
    """STEGO's unreduced loss [B,h,w,i,j] for features f1/f2 [B,C,.,.] and codes c1/c2 [B,K,.,.] (METHOD.md §3.2).

    Equals the first output of the release's ``helper`` (golden a ``loss_pw*_zc*_st*``); the code correlation it
    also returned is :func:`correlation` (c1, c2).
    """
    return distill(
        feature_target(f1, f2, pointwise=pointwise),
        correlation(c1, c2),
        shift,
        zero_clamp=zero_clamp,
        stabilize=stabilize,
    )


def depth_target(d1: Tensor, d2: Tensor, side: int, *, target: str) -> Tensor:
    """The DFC target D [B,S,S,S,S] (see the module docstring).

    paper: d1/d2 [B,1,S,S], normalised depth already sampled at the code locations.
    reference: d1/d2 full-resolution [B,1,H,W] of any sign and aspect; bilinear resize (align_corners=True) to
    S x S, then Corr, exactly the release's ``depth_feature_correlation`` (DG :1256-1278). D is laid out as the
    release's codes are (its ``sample`` transposes, sampling.sample); a caller holding codes in our layout
    transposes D to match (:func:`correlation_loss`).
    """
    if target == "reference":
        size = (side, side)
        r1 = F.interpolate(d1.float(), size=size, mode="bilinear", align_corners=True)
        r2 = F.interpolate(d2.float(), size=size, mode="bilinear", align_corners=True)
        return correlation(r1, r2)
    if target == "paper":
        assert d1.shape[1:] == (1, side, side) and d2.shape == d1.shape, (
            f"paper DFC needs depth sampled at the codes, [B,1,{side},{side}]; got {tuple(d1.shape)}"
        )
        # [B,1,S,S] -> [B,S,S,1,1] - [B,1,1,S,S] -> [B,S,S,S,S]
        proximity = 1 - (d1[:, 0, :, :, None, None] - d2[:, 0, None, None, :, :]).abs()
        # Centred per anchor: pairs closer in depth than the anchor's average pair are pulled together, farther ones
        # pushed apart (the paper's Fig. 1 caption, METHOD.md §3.7). Uncentred, 1 - |Δd| >= 0 makes the term pure
        # attraction for any small shift, which collapses the codes to one direction.
        return proximity - proximity.mean(dim=(3, 4), keepdim=True)
    check_fidelity(target, "dfc_target")
    raise AssertionError("unreachable: check_fidelity accepts only paper and reference")


def depth_feature_term(
    c1: Tensor, c2: Tensor, d1: Tensor, d2: Tensor, shift: float, *, target: str = "paper", zero_clamp: bool = True
) -> tuple[Tensor, Tensor]:
    """DepthG's DFC term: codes c1/c2 [B,K,S,S] and depth d1/d2 -> (loss [B,S,S,S,S], depth correlation D).

    Shapes of d1/d2 depend on ``target`` (see :func:`depth_target`). The release calls it intra-image only,
    with (z~, z~) and (d, d) (METHOD.md §3.4); no stabilize cap. With ``target="reference"`` it is the release's
    ``depth_feature_correlation(c1, c2, d1, d2, shift)`` for codes in the release's layout.
    """
    with torch.no_grad():
        D = depth_target(d1, d2, c1.shape[-1], target=target)
    return distill(D, correlation(c1, c2), shift, zero_clamp=zero_clamp), D


def super_perm(B: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """A random index map of the batch without fixed points, for negatives (METHOD.md §1.7, DG :1184-1188).

    A permutation whose fixed points are moved on by +1 mod B: no image is its own negative, though an index may
    appear twice. Drawn on the generator's device (CPU by default) and moved to ``device``.
    """
    gen_device = generator.device if generator is not None else "cpu"
    perm = torch.randperm(B, generator=generator, device=gen_device)
    fixed = perm == torch.arange(B, device=gen_device)
    perm = torch.where(fixed, (perm + 1) % B, perm)
    return perm.to(device) if device is not None else perm


@dataclass(frozen=True)
class CorrelationTerms:
    """Weights, shifts and flags of the correlation terms (METHOD.md §3.3-§3.4, §7.2), unpacked once at the edge.

    ``dfc_weight``/``dfc_shift`` are the values of this iteration (they decay, depthg.schedules): take them with
    :meth:`with_dfc`. A ``dfc_weight`` of 0 skips the DFC term and its depth.
    """

    pos_intra_weight: float
    pos_intra_shift: float
    pos_inter_weight: float
    pos_inter_shift: float
    neg_inter_weight: float
    neg_inter_shift: float
    neg_samples: int = 5
    dfc_weight: float = 0.0
    dfc_shift: float = 0.0
    dfc_target: str = "paper"
    pointwise: bool = True
    zero_clamp: bool = True
    stabilize: bool = False

    def __post_init__(self) -> None:
        check_fidelity(self.dfc_target, "dfc_target")
        if self.neg_samples < 0:
            raise ConfigError(f"neg_samples={self.neg_samples} must be >= 0 (loss.neg_samples).")

    def with_dfc(self, weight: float, shift: float) -> CorrelationTerms:
        """The same terms with this iteration's DFC weight and shift."""
        return replace(self, dfc_weight=float(weight), dfc_shift=float(shift))


class _CodeTerms(torch.autograd.Function):
    """-mean(clamp(Zc, low, high_k) * T_k) for targets T_k [B,n,m] on one code correlation Zc = za zb^T.

    za [B,n,K], zb [B,m,K] are unit rows; the targets carry no gradient, so d/dZc is the masked target and the
    backward is two bmm. The targets are consumed: each becomes its slope in place. ``highs[k]`` None: no upper
    cap. Returns the k means, and Zc without gradient.
    """

    @staticmethod
    def forward(
        ctx, za: Tensor, zb: Tensor, low: float, highs: tuple[float | None, ...], *targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        cd = torch.bmm(za, zb.transpose(1, 2))
        scale = -1.0 / cd.numel()
        values, slopes = [], []
        below = cd < low
        for target, high in zip(targets, highs):
            values.append(torch.vdot(cd.clamp(low, high).flatten(), target.flatten()) * scale)
            # d value / d Zc: the scaled target where clamp passes the gradient (low <= Zc <= high), in place
            slope = target.mul_(scale).masked_fill_(below, 0.0)
            slopes.append(slope if high is None else slope.masked_fill_(cd > high, 0.0))
        ctx.save_for_backward(za, zb, *slopes)
        ctx.mark_non_differentiable(cd)
        return torch.stack(values), cd

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_cd: Tensor) -> tuple[Tensor | None, ...]:
        za, zb, *slopes = ctx.saved_tensors
        g = sum(grad_values[k] * slope for k, slope in enumerate(slopes))  # d total / d Zc, [B,n,m]
        return torch.bmm(g, zb), torch.bmm(g.transpose(1, 2), za), None, None, *([None] * len(slopes))


@torch.no_grad()
def _feature_correlations(f1: Tensor, f2: Tensor, reads: list[tuple[int, Tensor, Tensor]]) -> list[Tensor]:
    """Corr(f1 at the first read's points, each read's points) -> [B,n,m] per read (:func:`correlation`).

    reads = (map 1|2, rows, weights); the first is the anchor. Each map is turned into tables one channel block at
    a time (:func:`depthg.model.sampling.channel_blocks`), its points copied out and the table freed before the
    next; then one bmm per read over all channels, divided by the norms, which equals the dot products of
    :func:`norm`-ed vectors (to float rounding).
    """
    B, C = f1.shape[:2]
    points = [f1.new_empty(*rows.shape[:-1], C) for _, rows, _ in reads]  # [B,n,C] each
    for block in channel_blocks(f1):
        tables = {1: point_table(f1[:, block]), 2: point_table(f2[:, block])}  # [B*h*w, C_block]
        for out, (which, rows, weights) in zip(points, reads):
            out[..., block] = gather_points(tables[which], rows, weights)
        del tables
    inverse_norms = [torch.linalg.vector_norm(x, dim=-1).clamp_min_(1e-10).reciprocal_() for x in points]  # [B,n]
    anchor, inv_anchor = points[0], inverse_norms[0][:, :, None]
    return [
        torch.bmm(anchor, x.transpose(1, 2)).mul_(inv_anchor).mul_(inv[:, None, :])
        for x, inv in zip(points, inverse_norms)
    ]


@torch.no_grad()
def _feature_target_points(fd: Tensor, shift: float, pointwise: bool) -> Tensor:
    """:func:`feature_target` minus the shift, in place on the correlation fd [B,n,m] of :func:`_feature_correlations`.

    The centred tensor's own mean, which the release subtracts before restoring the old one, is 0 up to rounding,
    so one pass does it: T = F - rowmean + (mean - shift).
    """
    if not pointwise:
        return fd.sub_(shift)
    row_mean = fd.mean(dim=-1, keepdim=True)  # [B,n,1]
    return fd.sub_(row_mean - (row_mean.mean() - shift))


def _unit_rows(x: Tensor) -> Tensor:
    """:func:`norm` for points [..., n, C]: L2 along the last axis, eps 1e-10."""
    return F.normalize(x, dim=-1, eps=1e-10)


def correlation_loss(
    f1: Tensor,
    f2: Tensor,
    z1: Tensor,
    z2: Tensor,
    d1: Tensor | None,
    d2: Tensor | None,
    coords1: Tensor,
    coords2: Tensor,
    terms: CorrelationTerms,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """All correlation terms of one step (METHOD.md §3.3, §3.6) -> dict of scalars intra/inter/neg/dfc/total.

    f1/f2 [B,C,h,w] features of the image and its kNN partner, z1/z2 [B,K,h,w] their codes, d1/d2 [B,1,H,W]
    their full-resolution depth (unused, may be None, when ``terms.dfc_weight`` is 0), coords1/coords2 [B,S,S,2].
    total = w_intra*intra + w_inter*inter + w_neg*neg + dfc_weight*dfc; ``correspondence_weight`` and the LHP
    balance multiply it outside. Negatives: ``neg_samples`` rounds, each pairing the image with the batch
    permuted by :func:`super_perm`, sampled at the partner's coords2. The release concatenates the rounds before
    the mean; each round has the same size, so the mean of the round means is the same number. DFC is
    intra-image, on the same code correlation as the intra term, so only d1 is read (d2 is taken for a cross-image
    target, which the release does not have, METHOD.md §3.7). Paper target: d1 is min-max normalised per image,
    averaged over each patch, and read at coords1 like the codes.

    The values are those of :func:`stego_term` and :func:`depth_feature_term` on :func:`sample`-d maps (to float
    rounding), computed on the n = S*S sampled points only: every term reads its points from tables of rows
    (:func:`depthg.model.sampling.gather_points`), so a negative reads image perm[b] at the coordinates of partner b
    without copying or resampling whole maps; the feature correlations are accumulated over channel blocks
    (:func:`_feature_correlations`) and each code point set is normalised once.
    """
    assert coords1.shape == coords2.shape, f"coords differ: {tuple(coords1.shape)} vs {tuple(coords2.shape)}"
    t = terms
    B, _, h, w = f1.shape
    side, HW = coords1.shape[1], h * w
    taps1, wts1 = bilinear_taps(coords1, (h, w))  # [B,n,4] each
    taps2, wts2 = bilinear_taps(coords2, (h, w))
    first_row = (torch.arange(B, device=f1.device) * HW).view(B, 1, 1)  # table row of each image's (0, 0)
    anchor, partner = (taps1 + first_row, wts1), (taps2 + first_row, wts2)
    # image perm[b] read at partner b's coordinates, one permutation per round, drawn in the release's order
    negatives = [
        (taps2 + first_row[super_perm(B, generator=generator, device=f1.device)], wts2) for _ in range(t.neg_samples)
    ]
    fd = _feature_correlations(f1.detach(), f2.detach(), [(1, *anchor), (2, *partner), *[(1, *n) for n in negatives]])
    # codes: anchor and negatives in one read of z1's table (one backward), the partner from z2's
    z_rows = torch.stack([anchor[0], *[rows for rows, _ in negatives]])  # [1+R,B,n,4]
    z_weights = torch.stack([wts1] + [wts2] * len(negatives))
    z1_points = _unit_rows(gather_points(point_table(z1), z_rows, z_weights))  # [1+R,B,n,K], with gradient
    za, zn = z1_points[0], z1_points[1:]
    zp = _unit_rows(gather_points(point_table(z2), *partner))
    low = 0.0 if t.zero_clamp else -9999.0
    cap = 0.8 if t.stabilize else None

    # intra and DFC share Zc(z~, z~) and its backward
    intra_target = _feature_target_points(fd[0], t.pos_intra_shift, t.pointwise)
    if t.dfc_weight != 0:
        dfc_target = _depth_target_points(d1, coords1, z1.shape[-2:], side, t.dfc_target).sub_(t.dfc_shift)
        (intra, dfc), _ = _CodeTerms.apply(za, za, low, (cap, None), intra_target, dfc_target)  # DFC: no cap
    else:
        (intra,), _ = _CodeTerms.apply(za, za, low, (cap,), intra_target)
        dfc = za.new_zeros(())
    inter = _CodeTerms.apply(za, zp, low, (cap,), _feature_target_points(fd[1], t.pos_inter_shift, t.pointwise))[0][0]
    neg_means = [
        _CodeTerms.apply(za, zn[r], low, (cap,), _feature_target_points(fd[2 + r], t.neg_inter_shift, t.pointwise))[0][
            0
        ]
        for r in range(t.neg_samples)
    ]
    neg = torch.stack(neg_means).mean() if neg_means else za.new_zeros(())

    total = t.pos_intra_weight * intra + t.pos_inter_weight * inter + t.neg_inter_weight * neg + t.dfc_weight * dfc
    return {"intra": intra, "inter": inter, "neg": neg, "dfc": dfc, "total": total}


@torch.no_grad()
def _depth_target_points(d1: Tensor, coords1: Tensor, grid_hw: tuple[int, int], side: int, target: str) -> Tensor:
    """:func:`depth_target` of the image with itself, as [B,n,n] for the points read at coords1."""
    B = coords1.shape[0]
    if target == "paper":
        # Patch depth on the codes' own grid, read at the codes' coordinates: [B,1,h,w] -> [B,1,S,S].
        # (The full-resolution map under the same coordinates would be off by up to half a patch.)
        dd = sample(pool_depth(normalize_depth(d1.float()), tuple(grid_hw)), coords1)
        D = depth_target(dd, dd, side, target="paper")
    else:
        # the release's D is in its code layout, the transpose of ours (sampling.sample): [B,h,w,i,j] ->
        # [B,w,h,j,i], so each code pair meets the depth pair it meets in the release
        D = depth_target(d1, d1, side, target=target).permute(0, 2, 1, 4, 3)
    return D.reshape(B, side * side, side * side)  # [B,S,S,S,S] -> [B,n,n]
