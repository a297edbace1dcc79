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

import torch
import torch.nn.functional as F

from depthg.config import check_fidelity
from depthg.model.sampling import normalize_depth, pool_depth, sample


def norm(t):
    """L2 normalisation along channels, eps 1e-10 (DG src/modules.py:789): an all-zero vector stays zero."""
    return F.normalize(t, dim=1, eps=1e-10)


def correlation(a, b):
    """Cosine of channel vectors, [B,C,h,w] x [B,C,i,j] -> [B,h,w,i,j] (``tensor_correlation``, DG :797-809)."""
    assert a.shape[:2] == b.shape[:2], f"correlation needs equal batch and channels: {a.shape} vs {b.shape}"
    return torch.einsum("nchw,ncij->nhwij", norm(a), norm(b))


def feature_target(f1, f2, *, pointwise=True):
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


def distill(target, cd, shift, *, zero_clamp=True, stabilize=False):
    """The shared term -clamp(cd) * (target - shift), unreduced [B,h,w,i,j] (DG :1250-1254).

    zero_clamp clamps the code correlation at 0 (else at -9999, i.e. not at all); stabilize also caps it at 0.8.
    """
    low = 0.0 if zero_clamp else -9999.0
    clamped = cd.clamp(low, 0.8) if stabilize else cd.clamp(low)
    return -clamped * (target - shift)


def stego_term(f1, f2, c1, c2, shift, *, pointwise=True, zero_clamp=True, stabilize=False):
    """STEGO's unreduced loss [B,h,w,i,j] for features f1/f2 [B,C,.,.] and codes c1/c2 [B,K,.,.] (METHOD.md §3.2).

    Equals the first output of the release's ``helper`` (golden a ``loss_pw*_zc*_st*``); the code correlation it
    also returned is :func:`correlation` (c1, c2).
    """
    return distill(feature_target(f1, f2, pointwise=pointwise), correlation(c1, c2), shift,
                   zero_clamp=zero_clamp, stabilize=stabilize)


def depth_target(d1, d2, side, *, target):
    """The DFC target D [B,S,S,S,S] (see the module docstring).

    paper: d1/d2 [B,1,S,S], normalised depth already sampled at the code locations.
    reference: d1/d2 full-resolution [B,1,H,W]; bilinear resize (align_corners=True) to S x S, then Corr. The
    resized map is transposed because our ``sample`` lays samples out transposed relative to the release
    (sampling.sample), so each code pair meets the same depth pair as in the release (DG :1256-1278).
    """
    if target == "reference":
        size = (side, side)
        r1 = F.interpolate(d1.float(), size=size, mode="bilinear", align_corners=True).transpose(2, 3)
        r2 = F.interpolate(d2.float(), size=size, mode="bilinear", align_corners=True).transpose(2, 3)
        return correlation(r1, r2)
    if target == "paper":
        assert d1.shape[1:] == (1, side, side) and d2.shape == d1.shape, (
            f"paper DFC needs depth sampled at the codes, [B,1,{side},{side}]; got {tuple(d1.shape)}")
        # [B,1,S,S] -> [B,S,S,1,1] - [B,1,1,S,S] -> [B,S,S,S,S]
        proximity = 1 - (d1[:, 0, :, :, None, None] - d2[:, 0, None, None, :, :]).abs()
        # Centred per anchor: pairs closer in depth than the anchor's average pair are pulled together, farther ones
        # pushed apart (the paper's Fig. 1 caption, METHOD.md §3.7). Uncentred, 1 - |Δd| >= 0 makes the term pure
        # attraction for any small shift, which collapses the codes to one direction.
        return proximity - proximity.mean(dim=(3, 4), keepdim=True)
    check_fidelity(target, "dfc_target")
    raise AssertionError("unreachable: check_fidelity accepts only paper and reference")


def depth_feature_term(c1, c2, d1, d2, shift, *, target="paper", zero_clamp=True):
    """DepthG's DFC term: codes c1/c2 [B,K,S,S] and depth d1/d2 -> (loss [B,S,S,S,S], depth correlation D).

    Shapes of d1/d2 depend on ``target`` (see :func:`depth_target`). The release calls it intra-image only,
    with (z~, z~) and (d, d) (METHOD.md §3.4); no stabilize cap.
    """
    with torch.no_grad():
        D = depth_target(d1, d2, c1.shape[-1], target=target)
    return distill(D, correlation(c1, c2), shift, zero_clamp=zero_clamp), D


def super_perm(B, *, generator=None, device=None):
    """A random index map of the batch without fixed points, for negatives (METHOD.md §1.7, DG :1184-1188).

    A permutation whose fixed points are moved on by +1 mod B: no image is its own negative, though an index may
    appear twice. Drawn on the generator's device (CPU by default) and moved to ``device``.
    """
    gen_device = generator.device if generator is not None else "cpu"
    perm = torch.randperm(B, generator=generator, device=gen_device)
    fixed = perm == torch.arange(B, device=gen_device)
    perm = torch.where(fixed, (perm + 1) % B, perm)
    return perm.to(device) if device is not None else perm


def correlation_loss(f1, f2, z1, z2, d1, d2, coords1, coords2, *, pos_intra_weight, pos_intra_shift,
                     pos_inter_weight, pos_inter_shift, neg_inter_weight, neg_inter_shift, neg_samples=5,
                     dfc_weight=0.0, dfc_shift=0.0, dfc_target="paper", pointwise=True, zero_clamp=True,
                     stabilize=False, generator=None):
    """All correlation terms of one step (METHOD.md §3.3, §3.6) -> dict of scalars intra/inter/neg/dfc/total.

    f1/f2 [B,C,h,w] features of the image and its kNN partner, z1/z2 [B,K,h,w] their codes, d1/d2 [B,1,H,W]
    their full-resolution depth (unused, may be None, when ``dfc_weight`` is 0), coords1/coords2 [B,S,S,2].
    total = w_intra*intra + w_inter*inter + w_neg*neg + dfc_weight*dfc; ``correspondence_weight`` and the LHP
    balance multiply it outside. Negatives: ``neg_samples`` rounds, each pairing the image with the batch
    permuted by :func:`super_perm`, sampled at the partner's coords2. The release concatenates the rounds before
    the mean; each round has the same size, so the mean of the round means is the same number with 1/rounds of
    the memory. DFC is intra-image, on the same code correlation as the intra term, so only d1 is read (d2 is
    taken for a cross-image target, which the release does not have, METHOD.md §3.7). Paper target: d1 is
    min-max normalised per image, averaged over each patch, and read at coords1 like the codes.
    """
    assert coords1.shape == coords2.shape, f"coords differ: {tuple(coords1.shape)} vs {tuple(coords2.shape)}"
    flags = dict(zero_clamp=zero_clamp, stabilize=stabilize)
    f1s, z1s = sample(f1, coords1), sample(z1, coords1)  # [B,C,S,S], [B,K,S,S]
    f2s, z2s = sample(f2, coords2), sample(z2, coords2)

    cd_intra = correlation(z1s, z1s)
    intra = distill(feature_target(f1s, f1s, pointwise=pointwise), cd_intra, pos_intra_shift, **flags).mean()
    inter = stego_term(f1s, f2s, z1s, z2s, pos_inter_shift, pointwise=pointwise, **flags).mean()

    neg_means = []
    for _ in range(neg_samples):
        perm = super_perm(f1.shape[0], generator=generator, device=f1.device)
        fn, zn = sample(f1[perm], coords2), sample(z1[perm], coords2)
        neg_means.append(stego_term(f1s, fn, z1s, zn, neg_inter_shift, pointwise=pointwise, **flags).mean())
    neg = torch.stack(neg_means).mean() if neg_means else z1s.new_zeros(())

    if dfc_weight != 0:
        with torch.no_grad():
            if dfc_target == "paper":
                # Patch depth on the codes' own grid, read at the codes' coordinates: [B,1,h,w] -> [B,1,S,S].
                # (The full-resolution map under the same coordinates would be off by up to half a patch.)
                patch_depth = pool_depth(normalize_depth(d1.float()), z1.shape[-2:])
                dd = sample(patch_depth, coords1)
                D = depth_target(dd, dd, z1s.shape[-1], target="paper")
            else:
                D = depth_target(d1, d1, z1s.shape[-1], target=dfc_target)
        dfc = distill(D, cd_intra, dfc_shift, zero_clamp=zero_clamp).mean()
    else:
        dfc = z1s.new_zeros(())

    total = (pos_intra_weight * intra + pos_inter_weight * inter + neg_inter_weight * neg + dfc_weight * dfc)
    return {"intra": intra, "inter": inter, "neg": neg, "dfc": dfc, "total": total}
