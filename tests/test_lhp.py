"""3D-LHP: propagation weights (paper and reference), propagation and the projection head (METHOD.md §5)."""

import math

import numpy as np
import pytest
import torch

from depthg.errors import ConfigError
from depthg.model import lhp


def _depth(B=2, h=6, w=5, seed=0):
    return torch.rand(B, 1, 4 * h, 4 * w, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("neighbourhood", ["knn3d", "window3"])
def test_paper_weights_rows_normalised(neighbourhood):
    W = lhp.lhp_weights(_depth(), (6, 5), fidelity="paper", neighbourhood=neighbourhood, k=5)
    assert W.shape == (2, 30, 30) and torch.all(W >= 0)
    torch.testing.assert_close(W.sum(-1), torch.ones(2, 30))
    assert torch.all(W.diagonal(dim1=1, dim2=2) > 0), "each patch keeps its own code"
    if neighbourhood == "knn3d":
        assert torch.all((W > 0).sum(-1) <= 5)
    else:
        r, c = divmod(13, 5)  # patch (2, 3): its 3x3 window only
        support = {(j // 5, j % 5) for j in torch.nonzero(W[0, 13]).flatten().tolist()}
        assert support <= {(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
        assert (W[0, 0] > 0).sum() <= 4, "corner windows are clipped"


def test_paper_knn_picks_3d_nearest():
    """Two depth planes: a patch's neighbours lie on its own plane, not on the other one next to it."""
    depth = torch.full((1, 1, 6, 6), 10.0)
    depth[..., :, 3:] = 200.0
    W = lhp.lhp_weights(depth, (6, 6), fidelity="paper", neighbourhood="knn3d", k=6)
    near = W[0, 2 * 6 + 2].view(6, 6)  # patch (2, 2), right next to the step at column 3
    assert near[:, 3:].sum() == 0 and near[:, :3].sum() == pytest.approx(1.0)


def test_reference_weights_match_direct_loop():
    depth = _depth(B=1, h=5, w=6, seed=3)
    W = lhp.lhp_weights(depth, (5, 6), fidelity="reference")[0].double().numpy()
    pooled = torch.nn.functional.adaptive_avg_pool2d(depth, (5, 6))[0, 0].double().numpy()
    f = 2 * math.tan(45.0)
    pts = [
        (f * pooled[r, c] * (c - 3) / 6, f * pooled[r, c] * (r - 2.5) / 5, -5 * pooled[r, c])
        for r in range(5)
        for c in range(6)
    ]
    N = len(pts)
    expected = np.zeros((N, N))
    for i in range(N):
        dist = [math.dist(pts[i], pts[j]) for j in range(N)]
        lo, hi = min(dist), max(dist)
        delta = [(d - lo) / (hi - lo) for d in dist]
        q = np.quantile(delta, 0.01)  # linear interpolation, as torch.quantile
        for j in range(N):
            if delta[j] <= q:
                expected[i, j] = (1 - delta[j]) / N
    assert np.array_equal(W > 0, expected > 0)
    np.testing.assert_allclose(W, expected, atol=1e-5)


def test_reference_flat_depth_is_finite():
    W = lhp.lhp_weights(torch.zeros(1, 1, 8, 8), (4, 4), fidelity="reference")
    assert torch.isfinite(W).all() and torch.allclose(W, torch.full_like(W, 1 / 16))


def test_propagate_identity_and_mean():
    z = torch.randn(2, 3, 4, 5)
    eye = torch.eye(20).expand(2, 20, 20)
    torch.testing.assert_close(lhp.propagate(z, eye), z)
    uniform = torch.full((2, 20, 20), 1 / 20)
    torch.testing.assert_close(lhp.propagate(z, uniform), z.mean(dim=(2, 3), keepdim=True).expand_as(z))
    W = torch.rand(2, 20, 20)
    expected = torch.einsum("bij,bkj->bki", W, z.flatten(2)).view_as(z)
    torch.testing.assert_close(lhp.propagate(z, W), expected)


def test_projection_head_and_gradient_to_neighbours():
    head = lhp.LHPProjection(6)
    assert [tuple(p.shape) for p in head.parameters()] == [(6, 6, 1, 1), (6,), (6, 6, 1, 1), (6,)]
    z = torch.randn(1, 6, 6, 5, requires_grad=True)
    W = lhp.lhp_weights(_depth(B=1), (6, 5), fidelity="paper", k=4)
    out = head(lhp.propagate(z, W))
    assert out.shape == z.shape
    out[0, :, 2, 3].sum().backward()  # the loss of one patch ...
    reached = (z.grad[0].abs().sum(0) > 0).flatten()
    assert torch.equal(reached, W[0, 2 * 5 + 3] > 0), "... reaches exactly its weighted neighbours"


def test_bad_options_raise():
    with pytest.raises(ConfigError):
        lhp.lhp_weights(_depth(), (6, 5), fidelity="paper", neighbourhood="ring")
    with pytest.raises(ConfigError):
        lhp.lhp_weights(_depth(), (6, 5), fidelity="paper", k=0)
