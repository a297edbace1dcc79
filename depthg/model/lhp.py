"""3D local hidden positives (3D-LHP): propagate each patch's learning signal to its neighbours in 3-D.

HP's local hidden positives (METHOD.md §5.1) mix each patch's code with those of its attention-weighted 3x3
neighbours; DepthG swaps attention for 3-D proximity of the depth-lifted patches (METHOD.md §5.2-§5.3). Here:

* :func:`lhp_weights` builds the propagation matrix W [B,N,N] from depth, row i holding the weights of patch i's
  neighbours (``W[b, i].view(h, w)`` is the map a figure shows for patch i);
* :func:`propagate` mixes codes with it, z^_i = sum_j W_ij z_j;
* :class:`LHPProjection` is the separate K -> K head (Conv1x1, ReLU, Conv1x1) applied to the mixed code.

Two fidelities (DESIGN.md §3, config aspect ``lhp``):
* ``"reference"`` (DG src/modules.py:273-339): reference lifting, Euclidean distances (torch.cdist), row min-max
  normalised to delta in [0, 1], keep delta <= the row's 1% quantile (about 8 points *anywhere* in the image),
  w = 1 - delta, and divide by N = h*w, not by the weight sum, so z^ is about 100x smaller than z.
  One deviation: a row of identical points (flat all-zero depth) gives 0/0 in the release; we clamp the range so
  such a row keeps every point with weight 1.
* ``"paper"`` (METHOD.md §5.3, our reconstruction): neighbours N(i) are the k nearest points in 3-D (``"knn3d"``,
  self included, k = 8 by default, about the release's 1% of 784) or HP's 3x3 window (``"window3"``); w = 1 - delta
  on N(i); weights normalised by their sum, so z^ is a weighted mean of codes.

How training uses it (METHOD.md §5.2; the loop lives in depthg.training.train): with z, z+ the codes of the image
and its kNN partner and d the image's depth,

    z_hat  = projection(propagate(z, lhp_weights(d, (h, w), fidelity=...)))
    z_hatp = projection(z+)                                  # the partner is projected, not propagated
    L_lhp  = correlation_loss(f, f+, z_hat, z_hatp, d, d+, coords1, coords2, terms)  # same terms and weights,
             # with dfc_weight multiplied by lhp_depth_weight
    L     += lhp_weight * L_lhp["total"]

The gradient of a sampled patch's loss thus reaches its 3-D neighbours in proportion to W. Training only: the
prediction path never uses this module.

Shapes: B batch, K code dim, H/W depth resolution, h/w feature grid, N = h*w patches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from depthg.config import check_fidelity
from depthg.errors import ConfigError
from depthg.model.sampling import PAPER_FOV_DEG, PAPER_Z_SCALE, depth_to_points, pool_depth

NEIGHBOURHOODS = ("knn3d", "window3")


def _row_minmax(dist: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-wise min-max normalisation of distances [B,N,N] to delta in [0, 1] (DG :273-339 step 3)."""
    lo = dist.amin(dim=-1, keepdim=True)
    hi = dist.amax(dim=-1, keepdim=True)
    return (dist - lo) / (hi - lo).clamp_min(eps)


def _window_mask(h: int, w: int, device: torch.device) -> Tensor:
    """HP's 3x3 neighbourhood including self, clipped at the borders: [N,N] bool (HP DinoFeaturizer.py:88-117)."""
    r = torch.arange(h, device=device).repeat_interleave(w)  # row of each raster index, [N]
    c = torch.arange(w, device=device).repeat(h)  # column, [N]
    return ((r[:, None] - r[None, :]).abs() <= 1) & ((c[:, None] - c[None, :]).abs() <= 1)


@torch.no_grad()
def lhp_weights(
    depth: Tensor,
    grid_hw: tuple[int, int],
    *,
    fidelity: str = "paper",
    neighbourhood: str = "knn3d",
    k: int = 8,
    lifting: str | None = None,
    fov_deg: float = PAPER_FOV_DEG,
    z_scale: float = PAPER_Z_SCALE,
) -> Tensor:
    """Propagation weights [B,N,N] from depth [B,1,H,W] on the h x w feature grid (see the module docstring).

    ``lifting`` ("paper"|"reference", config aspect ``depth_lifting``) defaults to ``fidelity``; the reference
    variant always lifts as the release does. ``neighbourhood`` and ``k`` apply to the paper variant only.
    """
    h, w = grid_hw
    N = h * w
    pooled = pool_depth(depth.float(), grid_hw)  # [B,1,h,w]
    if fidelity == "reference":
        points = depth_to_points(pooled, fidelity="reference")  # [B,N,3]
        delta = _row_minmax(torch.cdist(points, points))  # [B,N,N]
        # torch.quantile works along dim -1 of length N, within its 2^24 limit (METHOD.md §10).
        keep = delta <= torch.quantile(delta, 0.01, dim=-1, keepdim=True)
        return torch.where(keep, 1 - delta, torch.zeros_like(delta)) / N
    check_fidelity(fidelity, "fidelity.lhp")
    if neighbourhood not in NEIGHBOURHOODS:
        raise ConfigError(f"lhp_neighbourhood={neighbourhood!r} is not one of {NEIGHBOURHOODS}.")
    points = depth_to_points(pooled, fidelity=lifting or "paper", fov_deg=fov_deg, z_scale=z_scale)
    # Direct differences, not the matmul expansion, so the distance to self is exactly 0 and self is a neighbour.
    dist = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")  # [B,N,N]
    delta = _row_minmax(dist)
    if neighbourhood == "knn3d":
        if not 1 <= k <= N:
            raise ConfigError(f"lhp_k={k} must lie in 1..{N} (the number of patches).")
        nearest = dist.topk(k, dim=-1, largest=False).indices  # [B,N,k]
        keep = torch.zeros_like(delta, dtype=torch.bool).scatter_(-1, nearest, True)
    else:
        keep = _window_mask(h, w, depth.device).expand_as(delta)
    weights = torch.where(keep, 1 - delta, torch.zeros_like(delta))
    # Self has delta 0 and weight 1, so every row sum is >= 1.
    return weights / weights.sum(dim=-1, keepdim=True)


def propagate(z: Tensor, weights: Tensor) -> Tensor:
    """Mix codes z [B,K,h,w] with weights [B,N,N]: z^[b,:,i] = sum_j W[b,i,j] z[b,:,j] -> [B,K,h,w]."""
    B, K, h, w = z.shape
    assert weights.shape == (B, h * w, h * w), f"weights {tuple(weights.shape)} do not fit codes {tuple(z.shape)}"
    mixed = torch.bmm(z.reshape(B, K, h * w), weights.transpose(1, 2).to(z.dtype))  # [B,K,N] x [B,N,N]
    return mixed.view(B, K, h, w)


class LHPProjection(nn.Module):
    """The 3D-LHP projection head, K -> K: Conv1x1, ReLU, Conv1x1 (DG src/modules.py:140-339), default init."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1))

    def forward(self, z: Tensor) -> Tensor:
        """z [B,K,h,w] -> [B,K,h,w]."""
        return self.net(z)
