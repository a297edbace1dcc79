"""Release-style baselines, measured beside our code in the same run (METHOD.md §3.1-§3.4, §4.2).

Written from the release's structure as METHOD.md describes it, not from its code: FPS as a per-image numpy loop
on the host (a shrinking array of remaining indices, np.delete), and the correlation loss on whole sampled maps,
one ``grid_sample`` per term, ``f[perm]`` copies of whole maps for the negatives, every map normalised inside each
correlation, the rounds concatenated before the mean. Given the same coordinates and permutations they compute the
same numbers as :func:`depthg.model.losses.correlation_loss`, which the bench checks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from depthg.model import losses, sampling


def fps_release_style(points: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Per-image numpy FPS as the release structures it: distances only to the remaining points, np.delete.

    points [N,3] -> n indices in selection order; ties go to the lowest remaining index (METHOD.md §4.2).
    """
    remaining = np.delete(np.arange(len(points)), start)
    best = np.full(len(points), np.inf)  # float64 running minimum, as in the release
    picks = [start]
    for _ in range(n - 1):
        dist = ((points[remaining] - points[picks[-1]]) ** 2).sum(-1)
        best[remaining] = np.minimum(best[remaining], dist)
        k = int(np.argmax(best[remaining]))  # first maximum: ties go to the lowest remaining index
        picks.append(int(remaining[k]))
        remaining = np.delete(remaining, k)
    return np.array(picks)


def fps_lean(points: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Per-image numpy FPS with a running minimum over all points; chosen points are held at -1."""
    best = np.full(len(points), np.inf, dtype=np.float32)
    picks = [start]
    for _ in range(n - 1):
        best[picks[-1]] = -1
        diff = points - points[picks[-1]]
        diff *= diff
        np.minimum(best, diff[:, 0] + diff[:, 1] + diff[:, 2], out=best)
        picks.append(int(best.argmax()))
    return np.array(picks)


def fps_coords_release_style(
    depth: Tensor, grid_hw: tuple[int, int], side: int, *, fidelity: str, start: Tensor
) -> Tensor:
    """:func:`depthg.model.sampling.fps_coords` with the FPS run image by image in numpy on the host, as the release.

    start: LongTensor[B], the first pick of each image.
    """
    points = sampling.depth_to_points(sampling.pool_depth(depth, grid_hw), fidelity=fidelity).cpu().numpy()
    idx = np.stack([fps_release_style(p, side * side, int(s)) for p, s in zip(points, start.tolist())])
    return sampling.indices_to_coords(torch.from_numpy(idx).to(depth.device), grid_hw, side, fidelity=fidelity)


def correlation_loss_release_style(
    f1: Tensor,
    f2: Tensor,
    z1: Tensor,
    z2: Tensor,
    d1: Tensor | None,
    coords1: Tensor,
    coords2: Tensor,
    terms: losses.CorrelationTerms,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The terms of :func:`depthg.model.losses.correlation_loss` formed as the release forms them (module docstring)."""
    t = terms
    flags = dict(pointwise=t.pointwise, zero_clamp=t.zero_clamp, stabilize=t.stabilize)
    f1s, z1s = sampling.sample(f1, coords1), sampling.sample(z1, coords1)  # [B,C,S,S], [B,K,S,S]
    f2s, z2s = sampling.sample(f2, coords2), sampling.sample(z2, coords2)
    out = {
        "intra": losses.stego_term(f1s, f1s, z1s, z1s, t.pos_intra_shift, **flags).mean(),
        "inter": losses.stego_term(f1s, f2s, z1s, z2s, t.pos_inter_shift, **flags).mean(),
    }
    rounds = []
    for _ in range(t.neg_samples):
        perm = losses.super_perm(f1.shape[0], generator=generator, device=f1.device)
        fn, zn = sampling.sample(f1[perm], coords2), sampling.sample(z1[perm], coords2)  # whole maps copied
        rounds.append(losses.stego_term(f1s, fn, z1s, zn, t.neg_inter_shift, **flags))
    out["neg"] = torch.cat(rounds).mean() if rounds else z1s.new_zeros(())
    if t.dfc_weight == 0:
        out["dfc"] = z1s.new_zeros(())
    elif t.dfc_target == "paper":
        dd = sampling.sample(sampling.pool_depth(sampling.normalize_depth(d1.float()), z1.shape[-2:]), coords1)
        out["dfc"] = losses.depth_feature_term(z1s, z1s, dd, dd, t.dfc_shift, target="paper", zero_clamp=t.zero_clamp)[
            0
        ].mean()
    else:  # the release recomputes Corr(z~, z~) for this term
        out["dfc"] = losses.depth_feature_term(
            z1s, z1s, d1, d1, t.dfc_shift, target="reference", zero_clamp=t.zero_clamp
        )[0].mean()
    out["total"] = (
        t.pos_intra_weight * out["intra"]
        + t.pos_inter_weight * out["inter"]
        + t.neg_inter_weight * out["neg"]
        + t.dfc_weight * out["dfc"]
    )
    return out
