"""Golden parity with the released code (fixtures a and c, tests/golden/README.md), reference fidelity.

Tolerances are the README's: losses and correlations atol = rtol = 1e-5, FPS indices exact, coordinates 1e-6.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from depthg.model import losses, sampling

GOLDEN = Path(__file__).parent / "golden"
TOL = dict(atol=1e-5, rtol=1e-5)
FLAG_COMBOS = [(1, 1, 0), (1, 0, 0), (0, 1, 0), (0, 0, 0), (1, 1, 1)]
FPS_CASES = ["c0", "c1", "c2", "c3"]


@pytest.fixture(scope="module")
def a():
    with np.load(GOLDEN / "a_corr_helper.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


@pytest.fixture(scope="module")
def c():
    with np.load(GOLDEN / "c_fps.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


@pytest.mark.parametrize("pw,zc,st", FLAG_COMBOS)
def test_helper_all_flag_combinations(a, pw, zc, st):
    loss = losses.stego_term(
        a["f1"],
        a["f2"],
        a["c1"],
        a["c2"],
        float(a["shift"]),
        pointwise=bool(pw),
        zero_clamp=bool(zc),
        stabilize=bool(st),
    )
    torch.testing.assert_close(loss, a[f"loss_pw{pw}_zc{zc}_st{st}"], **TOL)
    torch.testing.assert_close(loss.mean(), a[f"loss_mean_pw{pw}_zc{zc}_st{st}"], **TOL)


def test_helper_intermediates(a):
    torch.testing.assert_close(losses.correlation(a["c1"], a["c2"]), a["cd"], **TOL)
    torch.testing.assert_close(losses.correlation(a["f1"], a["f2"]), a["tensor_correlation_f1_f2"], **TOL)
    torch.testing.assert_close(losses.feature_target(a["f1"], a["f2"], pointwise=True), a["fd_pointwise"], **TOL)


def test_intra_call_pattern(a):
    """pos-intra: helper(f1, f1, c1, c1, 0.08)."""
    loss = losses.stego_term(a["f1"], a["f1"], a["c1"], a["c1"], float(a["intra_shift"]))
    torch.testing.assert_close(loss, a["intra_loss_pw1_zc1_st0"], **TOL)
    torch.testing.assert_close(losses.correlation(a["c1"], a["c1"]), a["intra_cd"], **TOL)


def test_norm_and_zero_vector(a):
    torch.testing.assert_close(losses.norm(a["f1"]), a["norm_f1"], **TOL)
    out = losses.norm(a["norm_zero_in"])
    torch.testing.assert_close(out, a["norm_zero_out"], **TOL)
    assert torch.all(out[0, :, 1, 1] == 0), "an all-zero channel vector must stay 0, not NaN"


def test_sample_is_release_transposed(a):
    """Our out[:, :, i, j] is at coords[:, i, j]; the release's sample() returns the transpose."""
    out = sampling.sample(a["sample_t"], a["sample_coords"])
    torch.testing.assert_close(out.transpose(2, 3), a["sample_out"], **TOL)
    assert a["sample_coords"].abs().max() > 1, "fixture must exercise border padding"


def test_depth_to_points_reference(c):
    depth = c["d2p_depth"][None, None]  # (5,7) -> [1,1,5,7]
    points = sampling.depth_to_points(depth, fidelity="reference")  # [1,35,3]
    expected = c["d2p_fov90"].reshape(3, -1).T  # [X,Y,Z] stacked (3,5,7) -> (35,3) raster order
    assert torch.equal(points[0], expected), "reference lifting must match the release bit for bit"


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("case", FPS_CASES)
def test_fps_pipeline(c, case, backend):
    depth, n = c[f"{case}_depth"], int(c[f"{case}_n_samples"])
    grid_hw = tuple(c[f"{case}_t"].shape[-2:])
    pooled = sampling.pool_depth(depth, grid_hw)
    torch.testing.assert_close(pooled, c[f"{case}_pooled_depth"], atol=1e-6, rtol=0)
    points = sampling.depth_to_points(c[f"{case}_pooled_depth"], fidelity="reference")
    assert torch.equal(points, c[f"{case}_point_cloud"]), f"{case}: point cloud differs from the release"
    cloud, start = c[f"{case}_point_cloud"], int(c["start_index"])
    order = sampling.farthest_point_sample(cloud, n * n, start=start, backend=backend)
    assert torch.equal(order, c[f"{case}_fps_order_inds"]), f"{case}: FPS selection order differs"
    coords = sampling.fps_coords(depth, grid_hw, n, fidelity="reference", lifting="reference", start=0)
    torch.testing.assert_close(coords, c[f"{case}_grid_coords"], atol=1e-6, rtol=0)
    torch.testing.assert_close((coords + 1) / 2, c[f"{case}_coords"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_fps_plateau_case_needs_release_arithmetic(c, backend):
    """c3 has exact ties; the |a|^2 - 2ab + |b|^2 expansion breaks them differently, ours must not."""
    points, expected = c["c3_point_cloud"], c["c3_fps_order_inds"]
    assert torch.equal(sampling.farthest_point_sample(points, 121, backend=backend), expected)
    sq = (points * points).sum(-1)
    d_expanded = sq[:, :, None] - 2 * points @ points.transpose(1, 2) + sq[:, None, :]
    best, picks = torch.full_like(sq, float("inf")), [0]
    for _ in range(120):
        best[0, picks[-1]] = -1
        best = torch.minimum(best, d_expanded[:, picks[-1]])
        picks.append(int(best.argmax()))
    assert picks != expected[0].tolist(), "the fixture should discriminate between distance formulas"


def test_fps_small(c):
    idx = sampling.farthest_point_sample(c["fps_small_points"][None], 10)
    assert torch.equal(idx[0], c["fps_small_inds"])
    assert torch.equal(c["fps_small_points"][idx[0]], c["fps_small_sampled"])


def test_reference_coords_read_transposed_location(c):
    """probe: channel 0 = row index, 1 = column index; the release's coordinates read the transposed patch."""
    out = sampling.sample(c["probe_rowcol_map"], c["c0_grid_coords"])
    torch.testing.assert_close(out.transpose(2, 3), c["probe_sampled_c0"], **TOL)
