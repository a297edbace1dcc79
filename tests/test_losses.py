"""Correlation losses: STEGO terms, DFC in both targets, negatives and the assembled loss (METHOD.md §3)."""

import pytest
import torch

from depthg.errors import ConfigError
from depthg.model import losses, sampling

WEIGHTS = dict(
    pos_intra_weight=0.58,
    pos_intra_shift=0.07,
    pos_inter_weight=0.36,
    pos_inter_shift=0.025,
    neg_inter_weight=0.7,
    neg_inter_shift=0.761,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_correlation_hand_case():
    a = torch.tensor([3.0, 4.0, 0.0, 2.0]).view(1, 2, 1, 2)  # vectors (3,0), (4,2)
    b = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # vector (0,1)
    corr = losses.correlation(a, b)
    assert corr.shape == (1, 1, 2, 1, 1)
    assert corr.flatten().tolist() == pytest.approx([0.0, 2 / 20**0.5])


def test_stego_term_hand_case():
    """One location pair: loss = -max(cd, 0) * (fd - shift); unclamped with zero_clamp=False; capped at 0.8."""
    f = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    c1 = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    c2 = torch.tensor([-1.0, 0.0]).view(1, 2, 1, 1)
    assert losses.stego_term(f, f, c1, c1, 0.25, pointwise=False).item() == pytest.approx(-0.75)
    assert losses.stego_term(f, f, c1, c1, 0.25, pointwise=False, stabilize=True).item() == pytest.approx(-0.6)
    assert losses.stego_term(f, f, c1, c2, 0.25, pointwise=False).item() == 0.0
    assert losses.stego_term(f, f, c1, c2, 0.25, pointwise=False, zero_clamp=False).item() == pytest.approx(0.75)


def test_pointwise_centring_keeps_global_mean():
    f1, f2 = torch.randn(3, 5, 4, 4, generator=_gen(1)), torch.randn(3, 5, 4, 4, generator=_gen(2))
    raw = losses.correlation(f1, f2)
    fd = losses.feature_target(f1, f2, pointwise=True)
    assert fd.mean().item() == pytest.approx(raw.mean().item(), abs=1e-6)
    row_means = fd.mean(dim=(3, 4))
    torch.testing.assert_close(row_means, torch.full_like(row_means, raw.mean().item()), atol=1e-6, rtol=0)


def test_gradient_reaches_codes_only():
    f = torch.randn(2, 6, 3, 3, generator=_gen(3), requires_grad=True)
    z = torch.randn(2, 4, 3, 3, generator=_gen(4), requires_grad=True)
    losses.stego_term(f, f, z, z, 0.1).mean().backward()
    assert f.grad is None and z.grad is not None and z.grad.abs().sum() > 0


def _dfc(z, depth, target):
    z = z.detach().requires_grad_(True)
    loss, D = losses.depth_feature_term(z, z, depth, depth, 0.05, target=target)
    loss.mean().backward()
    return loss.mean().item(), z.grad.clone(), D


def test_paper_dfc_depends_on_depth_values():
    z = torch.randn(2, 8, 5, 5, generator=_gen(5))
    d1, d2 = torch.rand(2, 1, 5, 5, generator=_gen(6)), torch.rand(2, 1, 5, 5, generator=_gen(7))
    l1, g1, D1 = _dfc(z, d1, "paper")
    l2, g2, _ = _dfc(z, d2, "paper")
    assert l1 != pytest.approx(l2) and not torch.allclose(g1, g2)
    P = 1 - (d1[0, 0, 1, 2] - d1[0, 0]).abs()  # proximity of anchor (1, 2) to every location
    assert D1[0, 1, 2, 3, 4].item() == pytest.approx((P[3, 4] - P.mean()).item(), abs=1e-6)
    assert torch.allclose(D1.mean(dim=(3, 4)), torch.zeros(2, 5, 5), atol=1e-6), "centred per anchor"
    self_pairs = D1.diagonal(dim1=1, dim2=3).diagonal(dim1=1, dim2=2)
    assert torch.all(self_pairs >= D1.amax(dim=(3, 4)) - 1e-6), "an anchor is its own closest pair"
    assert (D1 < 0).any() and (D1 > 0).any(), "both pulls and pushes"


def test_reference_dfc_ignores_depth_values():
    """Release: sign product of 1-channel normalised depth, so D = 1 wherever depth > 0 (METHOD.md §3.4)."""
    z = torch.randn(2, 8, 5, 5, generator=_gen(5))
    d1 = torch.rand(2, 1, 20, 20, generator=_gen(6)) * 255 + 1
    l1, g1, D1 = _dfc(z, d1, "reference")
    l2, g2, _ = _dfc(z, d1 * 0.01 + 7, "reference")
    assert l1 == pytest.approx(l2) and torch.allclose(g1, g2) and torch.all(D1 == 1)
    zero_corner = d1.clone()
    zero_corner[:, :, :4, :4] = 0
    _, _, D = _dfc(z, zero_corner, "reference")
    # the corner (0, 0) is 0
    assert torch.all(D[:, 0, 0] == 0) and torch.all(D[:, 2, 2, 2, 2] == 1)


def _bilinear_align_corners(x, out_h, out_w):
    """Hand-written bilinear resize with align_corners=True of a 2-D float64 array (no torch interpolate)."""
    H, W = x.shape
    out = torch.empty(out_h, out_w, dtype=torch.float64)
    for o in range(out_h):
        y = o * (H - 1) / (out_h - 1) if out_h > 1 else 0.0
        y0 = int(y)
        y1, fy = min(y0 + 1, H - 1), y - y0
        for q in range(out_w):
            xx = q * (W - 1) / (out_w - 1) if out_w > 1 else 0.0
            x0 = int(xx)
            x1, fx = min(x0 + 1, W - 1), xx - x0
            top = (1 - fx) * x[y0, x0] + fx * x[y0, x1]
            bottom = (1 - fx) * x[y1, x0] + fx * x[y1, x1]
            out[o, q] = (1 - fy) * top + fy * bottom
    return out


def _release_dfc(c1, c2, d1, d2, shift):
    """The release's depth_feature_correlation (METHOD.md §3.4), written out in float64 from the formula:
    d^ = bilinear(align_corners) resize of the 1-channel depth to S x S; n(x) = x / max(|x|, 1e-10) over the single
    channel; D[b,h,w,i,j] = n(d^1)[b,h,w] n(d^2)[b,i,j]; Zc = cosine of code vectors; loss = -max(Zc, 0) (D - shift)."""
    B, K, S, _ = c1.shape
    loss = torch.empty(B, S, S, S, S, dtype=torch.float64)
    for b in range(B):
        n1 = _bilinear_align_corners(d1[b, 0].double(), S, S)
        n2 = _bilinear_align_corners(d2[b, 0].double(), S, S)
        n1, n2 = n1 / n1.abs().clamp_min(1e-10), n2 / n2.abs().clamp_min(1e-10)
        u1 = c1[b].double() / c1[b].double().norm(dim=0, keepdim=True).clamp_min(1e-10)  # [K,S,S]
        u2 = c2[b].double() / c2[b].double().norm(dim=0, keepdim=True).clamp_min(1e-10)
        zc = (u1[:, :, :, None, None] * u2[:, None, None, :, :]).sum(0)  # [S,S,S,S]
        D = n1[:, :, None, None] * n2[None, None, :, :]
        loss[b] = -zc.clamp_min(0) * (D - shift)
    return loss


def test_reference_dfc_called_directly_is_the_release_formula_on_signed_non_square_depth():
    """depth_feature_term(target="reference") on codes [B,K,S,S] and depth [B,1,H,W] = the release's numbers for any
    depth: signed values and non-square content (issue 8 item 8)."""
    g = _gen(21)
    c1, c2 = torch.randn(2, 6, 5, 5, generator=g), torch.randn(2, 6, 5, 5, generator=g)
    d1, d2 = torch.randn(2, 1, 13, 29, generator=g), torch.randn(2, 1, 13, 29, generator=g)
    d1[0, 0, :, :10] = -3.0  # a negative left part: the layout (rows vs columns) decides which pairs flip sign
    loss, D = losses.depth_feature_term(c1, c2, d1, d2, 0.07, target="reference")
    expected = _release_dfc(c1, c2, d1, d2, 0.07)
    assert (D < 0).any() and (D > 0).any(), "signed depth must give both signs of D"
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)
    transposed = _release_dfc(c1, c2, d1.transpose(2, 3), d2.transpose(2, 3), 0.07)
    assert not torch.allclose(expected, transposed, atol=1e-3), "test must discriminate the layout"


def test_reference_dfc_in_assembly_pairs_codes_with_release_depth():
    """correlation_loss samples codes in our layout (the release's transposed); it hands the DFC term the depth in
    that layout, so each code pair meets the depth pair it meets in the release."""
    g = _gen(8)
    f = torch.randn(2, 5, 8, 8, generator=g)
    z = torch.randn(2, 6, 8, 8, generator=g)
    coords = sampling.random_coords(2, 4, generator=_gen(9))
    depth = torch.rand(2, 1, 32, 48, generator=_gen(10)) * 255
    depth[:, :, 10:, :5] = 0  # zeros on one side only, so the pairing matters
    out = losses.correlation_loss(
        f,
        f,
        z,
        z,
        depth,
        depth,
        coords,
        coords,
        _terms(neg_samples=0, dfc_weight=1.0, dfc_shift=0.1, dfc_target="reference"),
    )
    z_rel = sampling.sample(z, coords).transpose(2, 3)  # the release's layout
    release = _release_dfc(z_rel, z_rel, depth, depth, 0.1).mean()
    assert out["dfc"].item() == pytest.approx(release.item(), rel=1e-5)
    z_ours = sampling.sample(z, coords)
    unpaired = _release_dfc(z_ours, z_ours, depth, depth, 0.1).mean()
    assert unpaired.item() != pytest.approx(release.item(), rel=1e-3), "test must discriminate"


def test_super_perm_no_fixed_points_and_seeded():
    for seed in range(20):
        p = losses.super_perm(6, generator=_gen(seed))
        assert torch.all(p != torch.arange(6)) and p.min() >= 0 and p.max() < 6
    assert torch.equal(losses.super_perm(6, generator=_gen(3)), losses.super_perm(6, generator=_gen(3)))


def _inputs(B=4, C=12, K=6, h=8, S=3, seed=0):
    g = _gen(seed)
    f1, f2 = torch.randn(B, C, h, h, generator=g), torch.randn(B, C, h, h, generator=g)
    z1 = torch.randn(B, K, h, h, generator=g, requires_grad=True)
    z2 = torch.randn(B, K, h, h, generator=g, requires_grad=True)
    d1, d2 = torch.rand(B, 1, 4 * h, 4 * h, generator=g) * 255, torch.rand(B, 1, 4 * h, 4 * h, generator=g) * 255
    c1, c2 = sampling.random_coords(B, S, generator=g), sampling.random_coords(B, S, generator=g)
    return f1, f2, z1, z2, d1, d2, c1, c2


def _terms(**kw):
    return losses.CorrelationTerms(**{**WEIGHTS, **kw})


def _release_structure(f1, f2, z1, z2, d1, c1, c2, t, generator):
    """The oracle: every term as the release forms it, on whole sampled maps (grid_sample per term, f[perm] copies
    of whole maps for the negatives, the rounds concatenated before the mean), from the public building blocks."""
    flags = dict(pointwise=t.pointwise, zero_clamp=t.zero_clamp, stabilize=t.stabilize)
    f1s, z1s = sampling.sample(f1, c1), sampling.sample(z1, c1)
    f2s, z2s = sampling.sample(f2, c2), sampling.sample(z2, c2)
    out = {
        "intra": losses.stego_term(f1s, f1s, z1s, z1s, t.pos_intra_shift, **flags).mean(),
        "inter": losses.stego_term(f1s, f2s, z1s, z2s, t.pos_inter_shift, **flags).mean(),
    }
    rounds = []
    for _ in range(t.neg_samples):
        p = losses.super_perm(f1.shape[0], generator=generator)
        rounds.append(
            losses.stego_term(
                f1s, sampling.sample(f1[p], c2), z1s, sampling.sample(z1[p], c2), t.neg_inter_shift, **flags
            )
        )
    out["neg"] = torch.cat(rounds).mean() if rounds else torch.zeros(())
    if t.dfc_target == "paper":
        dd = sampling.sample(sampling.pool_depth(sampling.normalize_depth(d1), z1.shape[-2:]), c1)
        out["dfc"] = losses.depth_feature_term(z1s, z1s, dd, dd, t.dfc_shift, target="paper", zero_clamp=t.zero_clamp)[
            0
        ].mean()
    else:
        z_rel = z1s.transpose(2, 3)  # the release's code layout, which its depth correlation is laid out in
        out["dfc"] = losses.depth_feature_term(
            z_rel, z_rel, d1, d1, t.dfc_shift, target="reference", zero_clamp=t.zero_clamp
        )[0].mean()
    out["total"] = (
        t.pos_intra_weight * out["intra"]
        + t.pos_inter_weight * out["inter"]
        + t.neg_inter_weight * out["neg"]
        + t.dfc_weight * out["dfc"]
    )
    return out


def _values_and_grads(fn, z1, z2):
    z1.grad = z2.grad = None
    out = fn()
    out["total"].backward()
    return {k: v.item() for k, v in out.items()}, z1.grad.clone(), z2.grad.clone()


@pytest.mark.parametrize(
    "target,coords,flags",
    [
        ("paper", "fps", dict()),
        ("reference", "fps", dict()),
        ("paper", "random", dict(pointwise=False)),
        ("reference", "random", dict(zero_clamp=False)),
        ("paper", "random", dict(stabilize=True)),
        ("reference", "fps", dict(pointwise=False, zero_clamp=False, stabilize=True)),
    ],
)
@pytest.mark.parametrize("table_bytes", [None, 5 * 81 * 4 * 7])  # one channel block; blocks of 7, 7, 7, 3
def test_correlation_loss_equals_release_structure(target, coords, flags, table_bytes, monkeypatch):
    """Points read from tables equal whole maps sampled per term: values and code gradients within 1e-6."""
    if table_bytes:
        monkeypatch.setattr(sampling, "CPU_TABLE_BYTES", table_bytes)
        assert len(sampling.channel_blocks(torch.zeros(5, 24, 9, 9))) == 4
    f1, f2, z1, z2, d1, d2, c1, c2 = _inputs(B=5, C=24, K=7, h=9, S=4, seed=3)
    if coords == "fps":
        c1, c2 = (sampling.fps_coords(d, (9, 9), 4, fidelity=target, start=0) for d in (d1, d2))
    else:  # some coordinates outside [-1, 1] and exactly on the borders: border padding and the last row/column
        c1, c2 = c1 * 1.2, c2.clone()
        c2[:, 0, 0] = torch.tensor([1.0, 1.0])
        c2[:, 1, 0] = torch.tensor([-1.0, 1.0])
    t = _terms(neg_samples=3, dfc_weight=0.19, dfc_shift=0.03, dfc_target=target, **flags)
    ours = _values_and_grads(
        lambda: losses.correlation_loss(f1, f2, z1, z2, d1, d2, c1, c2, t, generator=_gen(11)), z1, z2
    )
    oracle = _values_and_grads(lambda: _release_structure(f1, f2, z1, z2, d1, c1, c2, t, _gen(11)), z1, z2)
    for k in oracle[0]:
        assert ours[0][k] == pytest.approx(oracle[0][k], abs=1e-6, rel=1e-6), k
    assert any(abs(v) > 1e-3 for v in oracle[0].values()), "the case must not be trivially zero"
    for ours_grad, oracle_grad in zip(ours[1:], oracle[1:]):
        assert oracle_grad.abs().max() > 0
        torch.testing.assert_close(ours_grad, oracle_grad, atol=1e-6 * oracle_grad.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("target", ["paper", "reference"])
def test_correlation_loss_assembly(target):
    f1, f2, z1, z2, d1, d2, c1, c2 = _inputs()
    out = losses.correlation_loss(
        f1,
        f2,
        z1,
        z2,
        d1,
        d2,
        c1,
        c2,
        _terms(neg_samples=3, dfc_weight=0.19, dfc_shift=0.03, dfc_target=target),
        generator=_gen(11),
    )
    assert set(out) == {"intra", "inter", "neg", "dfc", "total"} and all(v.dim() == 0 for v in out.values())
    expected = 0.58 * out["intra"] + 0.36 * out["inter"] + 0.7 * out["neg"] + 0.19 * out["dfc"]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    s1, s2 = sampling.sample(z1, c1), sampling.sample(z2, c2)
    f1s, f2s = sampling.sample(f1, c1), sampling.sample(f2, c2)
    assert out["intra"].item() == pytest.approx(losses.stego_term(f1s, f1s, s1, s1, 0.07).mean().item(), rel=1e-5)
    assert out["inter"].item() == pytest.approx(losses.stego_term(f1s, f2s, s1, s2, 0.025).mean().item(), rel=1e-5)
    # negatives: the concatenation of the rounds, as the release forms it, with the same permutations
    g = _gen(11)
    rounds = []
    for _ in range(3):
        p = losses.super_perm(4, generator=g)
        rounds.append(losses.stego_term(f1s, sampling.sample(f1[p], c2), s1, sampling.sample(z1[p], c2), 0.761))
    assert out["neg"].item() == pytest.approx(torch.cat(rounds).mean().item(), rel=1e-5)
    out["total"].backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_paper_dfc_in_assembly_uses_depth_at_coords1():
    f1, f2, z1, z2, d1, d2, c1, c2 = _inputs(seed=1)
    out = losses.correlation_loss(
        f1, f2, z1, z2, d1, d2, c1, c2, _terms(neg_samples=0, dfc_weight=1.0, dfc_shift=0.03, dfc_target="paper")
    )
    dd = sampling.sample(sampling.pool_depth(sampling.normalize_depth(d1), (8, 8)), c1)
    s1 = sampling.sample(z1, c1)
    expected = losses.depth_feature_term(s1, s1, dd, dd, 0.03, target="paper")[0].mean()
    assert out["dfc"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_dfc_weight_zero_skips_depth():
    f1, f2, z1, z2, _, _, c1, c2 = _inputs(seed=2)
    out = losses.correlation_loss(
        f1, f2, z1, z2, None, None, c1, c2, _terms(neg_samples=2, dfc_weight=0.0), generator=_gen(1)
    )
    assert out["dfc"].item() == 0.0 and torch.isfinite(out["total"])


def test_correlation_terms_validate_and_take_the_iterations_dfc():
    t = _terms(dfc_target="reference")
    step_terms = t.with_dfc(0.5, 0.1)
    assert (step_terms.dfc_weight, step_terms.dfc_shift, step_terms.dfc_target) == (0.5, 0.1, "reference")
    assert t.dfc_weight == 0.0, "frozen: with_dfc returns a copy"
    with pytest.raises(ConfigError, match="dfc_target"):
        _terms(dfc_target="papr")
    with pytest.raises(ConfigError, match="neg_samples"):
        _terms(neg_samples=-1)
