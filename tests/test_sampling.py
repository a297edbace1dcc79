"""Sampling: coordinates, depth lifting, batched FPS and sample() (METHOD.md §3.1, §4)."""

import math

import pytest
import torch

from depthg.errors import ConfigError
from depthg.model import sampling


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _brute_force_fps_check(points, order):
    """Every pick is a farthest remaining point from those chosen before it (float64 distances)."""
    p = points.double()
    for k in range(1, len(order)):
        chosen = p[order[:k]]
        d_min = ((p[:, None, :] - chosen[None]) ** 2).sum(-1).min(dim=1).values  # [N]
        d_min[order[:k]] = -1
        assert d_min[order[k]] >= d_min.max() * (1 - 1e-5), f"pick {k} is not the farthest point"


def test_random_coords_range_shape_and_seed():
    c = sampling.random_coords(3, 5, generator=_gen(1))
    assert c.shape == (3, 5, 5, 2) and c.min() >= -1 and c.max() <= 1
    assert torch.equal(c, sampling.random_coords(3, 5, generator=_gen(1)))
    assert not torch.equal(c, sampling.random_coords(3, 5, generator=_gen(2)))


def test_sample_layout_and_align_corners():
    t = torch.arange(12.0).view(1, 1, 3, 4)
    # coords[0,0,1] = (x=+1, y=-1) is the top-right pixel; coords[0,1,0] = (x=-1, y=+1) the bottom-left.
    coords = torch.tensor([[[[-1.0, -1.0], [1.0, -1.0]], [[-1.0, 1.0], [1.0, 1.0]]]])
    out = sampling.sample(t, coords)
    assert out.tolist() == [[[[0.0, 3.0], [8.0, 11.0]]]]


def test_paper_lifting_is_pinhole_and_scale_free():
    depth = torch.rand(2, 1, 4, 6, generator=_gen()) + 0.5
    pts = sampling.depth_to_points(depth, fidelity="paper", fov_deg=90.0, z_scale=1.0)
    assert torch.allclose(pts, sampling.depth_to_points(depth * 255, fidelity="paper", fov_deg=90.0, z_scale=1.0))
    d = depth / depth.amax(dim=(1, 2, 3), keepdim=True)
    # fov 90 deg: F = 2 tan(45 deg) = 2, so X/Z = 2*(c + 1/2 - w/2)/w; patch (r=1, c=5) is raster index 11.
    assert pts[0, 11, 2] == pytest.approx(d[0, 0, 1, 5].item())
    assert pts[0, 11, 0] / pts[0, 11, 2] == pytest.approx(2 * (5.5 - 3) / 6)
    assert pts[0, 11, 1] / pts[0, 11, 2] == pytest.approx(2 * (1.5 - 2) / 4)
    narrow = sampling.depth_to_points(depth, fidelity="paper", fov_deg=30.0)
    assert narrow[0, 11, 0] / narrow[0, 11, 2] == pytest.approx(2 * math.tan(math.radians(15)) * 2.5 / 6)


def test_reference_lifting_uses_radians_and_raw_depth():
    depth = torch.full((1, 1, 2, 2), 10.0)
    pts = sampling.depth_to_points(depth, fidelity="reference")
    f = 2 * math.tan(45.0)  # 3.2396: 90 fed to tan as radians
    assert pts[0, 3].tolist() == pytest.approx([f * 10 * 0.0, f * 10 * 0.0, -50.0])
    assert pts[0, 0].tolist() == pytest.approx([f * 10 * -0.5, f * 10 * -0.5, -50.0])


BACKENDS = ("torch", "numba")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_distinct_farthest_and_batched_equals_single(backend):
    points = torch.randn(3, 60, 3, generator=_gen(3))
    idx = sampling.farthest_point_sample(points, 20, backend=backend)
    assert idx.shape == (3, 20) and torch.all(idx[:, 0] == 0)
    for b in range(3):
        assert len(set(idx[b].tolist())) == 20
        _brute_force_fps_check(points[b], idx[b])
        assert torch.equal(idx[b], sampling.farthest_point_sample(points[b : b + 1], 20, backend=backend)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_start_options_and_seed(backend):
    points = torch.randn(4, 50, 3, generator=_gen(4))
    a = sampling.farthest_point_sample(points, 10, start="random", generator=_gen(7), backend=backend)
    assert torch.equal(a, sampling.farthest_point_sample(points, 10, start="random", generator=_gen(7)))
    starts = torch.tensor([3, 1, 4, 1])
    b = sampling.farthest_point_sample(points, 10, start=starts, backend=backend)
    assert torch.equal(b[:, 0], starts)
    _brute_force_fps_check(points[2], b[2])
    with pytest.raises(ConfigError):
        sampling.farthest_point_sample(points, 51, backend=backend)
    with pytest.raises(ConfigError):
        sampling.farthest_point_sample(points, 5, start="middle", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_flat_depth_takes_lowest_indices(backend):
    """All points equal (Potsdam's all-zero depth, METHOD.md §4.6): picks go 0, 1, 2, ... never repeating."""
    points = torch.zeros(2, 30, 3)
    assert torch.equal(sampling.farthest_point_sample(points, 9, backend=backend), torch.arange(9).expand(2, 9))


@pytest.mark.parametrize("fidelity", ["reference", "paper"])
def test_fps_compiled_cpu_loop_picks_what_the_torch_loop_picks(fidelity, monkeypatch):
    """At the paper's shapes (B=32, 28x28, 121 picks), on 8-bit depth full of exact ties and on smooth depth."""
    quantised = torch.randint(0, 4, (32, 1, 28, 28), generator=_gen(9)).float() * 85  # 4 depth levels
    smooth = torch.rand(32, 1, 28, 28, generator=_gen(10)) * 255
    for depth in (quantised, smooth):
        points = sampling.depth_to_points(depth, fidelity=fidelity)
        for start in (0, "random"):
            a = sampling.farthest_point_sample(points, 121, start=start, generator=_gen(1), backend="torch")
            b = sampling.farthest_point_sample(points, 121, start=start, generator=_gen(1), backend="numba")
            assert torch.equal(a, b)
    monkeypatch.setattr(sampling, "_fps_torch", None)  # auto must not reach the torch loop on the CPU
    assert torch.equal(sampling.farthest_point_sample(points, 121, start="random", generator=_gen(1)), b)


def test_fps_bad_backend_and_non_finite_depth_are_named():
    points = torch.rand(1, 9, 3)
    with pytest.raises(ConfigError, match="backend='cuda'"):
        sampling.farthest_point_sample(points, 3, backend="cuda")
    points[0, 4, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite depth"):
        sampling.farthest_point_sample(points, 3)


def test_paper_fps_coords_read_the_chosen_patch():
    """Sampling a ramp (channel 0 = row, 1 = column) at paper FPS coordinates returns the chosen patch."""
    h, w, side = 7, 9, 4
    depth = torch.rand(2, 1, h * 4, w * 4, generator=_gen(5)) * 255
    ramp = torch.stack(torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij"))
    start = torch.tensor([40, 7])
    coords = sampling.fps_coords(depth, (h, w), side, fidelity="paper", start=start)
    points = sampling.depth_to_points(sampling.pool_depth(depth, (h, w)), fidelity="paper")
    idx = sampling.farthest_point_sample(points, side * side, start=start)
    out = sampling.sample(ramp.expand(2, 2, h, w), coords)  # [B,2,S,S]
    rows, cols = out[:, 0].reshape(2, -1), out[:, 1].reshape(2, -1)
    torch.testing.assert_close(rows, (idx // w).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(cols, (idx % w).float(), atol=1e-4, rtol=0)


def test_reference_fps_coords_are_raster_ordered_and_transposed():
    h = w = 6
    depth = torch.rand(1, 1, 24, 24, generator=_gen(8)) * 255
    coords = sampling.fps_coords(depth, (h, w), 3, fidelity="reference")
    rows = ((coords[..., 0] + 1) / 2 * h).round().long().flatten()
    cols = ((coords[..., 1] + 1) / 2 * w).round().long().flatten()
    raster = rows * w + cols
    assert torch.equal(raster, raster.sort().values), "reference coordinates come in raster order"
    assert coords.max() <= 2 * (h - 1) / h - 1 + 1e-6, "row/h never reaches 1"


def test_choose_coords_modes():
    depth = torch.rand(2, 1, 16, 16, generator=_gen(9))
    r = sampling.choose_coords("random", 2, (4, 4), 3, generator=_gen(1))
    assert r.shape == (2, 3, 3, 2)
    f = sampling.choose_coords("fps", 2, (4, 4), 3, depth=depth, fidelity="paper")
    assert torch.equal(f, sampling.fps_coords(depth, (4, 4), 3, fidelity="paper"))
    with pytest.raises(ConfigError):
        sampling.choose_coords("fps", 2, (4, 4), 3)
    with pytest.raises(ConfigError):
        sampling.choose_coords("simple", 2, (4, 4), 3, depth=depth)


@pytest.mark.parametrize("grid_hw", [(5, 7), (1, 4)])
def test_gather_points_equals_sample(grid_hw):
    """Table reads (four taps, embedding_bag) give sample()'s values, including border padding and the last
    row/column, for any image read at any coordinates."""
    h, w = grid_hw
    t = torch.randn(3, 6, h, w, generator=_gen(4))
    coords = sampling.random_coords(3, 4, generator=_gen(5)) * 1.3  # some outside [-1, 1]
    coords[:, 0, 0] = torch.tensor([1.0, 1.0])  # bottom-right corner exactly: the clamped tap has weight 0
    coords[:, 0, 1] = torch.tensor([-1.0, 1.0])
    taps, weights = sampling.bilinear_taps(coords, (h, w))
    assert taps.shape == weights.shape == (3, 16, 4) and taps.min() >= 0 and taps.max() < h * w
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 16))
    table = sampling.point_table(t)
    other = torch.tensor([2, 0, 1])  # image other[b] read at the coordinates of b
    got = sampling.gather_points(table, taps + (other * h * w).view(3, 1, 1), weights)  # [B,n,C]
    expected = sampling.sample(t[other], coords).flatten(2).transpose(1, 2)  # [B,C,S,S] -> [B,n,C]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_channel_blocks_keep_cpu_tables_small(monkeypatch):
    t = torch.randn(2, 10, 3, 4, generator=_gen(6), requires_grad=True)
    monkeypatch.setattr(sampling, "CPU_TABLE_BYTES", 2 * 4 * 12 * 4)  # 4 channels of 2 images x 12 points
    blocks = sampling.channel_blocks(t)
    assert blocks == [slice(0, 4), slice(4, 8), slice(8, 10)]
    coords = sampling.random_coords(2, 3, generator=_gen(7))
    taps, weights = sampling.bilinear_taps(coords, (3, 4))
    rows = taps + torch.tensor([0, 12]).view(2, 1, 1)
    got = torch.cat([sampling.gather_points(sampling.point_table(t[:, b]), rows, weights) for b in blocks], dim=-1)
    torch.testing.assert_close(got, sampling.sample(t, coords).flatten(2).transpose(1, 2), atol=1e-6, rtol=1e-6)
    got.sum().backward()
    assert t.grad is not None and t.grad.abs().sum() > 0, "the gradient reaches the maps through the tables"
