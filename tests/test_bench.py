"""Benchmarks: the release-style baselines compute our numbers, and the commands run (DESIGN.md §2: bench)."""

import json

import numpy as np
import pytest
import torch

from depthg.bench import baselines, gpu
from depthg.bench.__main__ import main
from depthg.model import losses, sampling


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fidelity", ["paper", "reference"])
def test_release_style_fps_picks_our_indices(fidelity):
    depth = torch.rand(3, 1, 40, 40, generator=_gen(1)) * 255
    depth[0] = 7.0  # flat: every distance ties, the lowest remaining index must win
    start = torch.tensor([0, 5, 99])
    ours = sampling.fps_coords(depth, (10, 10), 4, fidelity=fidelity, start=start)
    theirs = baselines.fps_coords_release_style(depth, (10, 10), 4, fidelity=fidelity, start=start)
    assert torch.equal(ours, theirs)
    points = sampling.depth_to_points(sampling.pool_depth(depth, (10, 10)), fidelity=fidelity).numpy()
    idx = sampling.farthest_point_sample(torch.from_numpy(points), 16, start=start).numpy()
    for b in range(3):
        assert np.array_equal(baselines.fps_lean(points[b], 16, int(start[b])), idx[b])


def test_release_style_loss_equals_ours():
    g = _gen(2)
    f1, f2 = torch.randn(4, 10, 6, 6, generator=g), torch.randn(4, 10, 6, 6, generator=g)
    z1, z2 = (torch.randn(4, 5, 6, 6, generator=g, requires_grad=True) for _ in range(2))
    d1 = torch.rand(4, 1, 24, 24, generator=g) * 255
    c1, c2 = sampling.random_coords(4, 3, generator=g), sampling.random_coords(4, 3, generator=g)
    for target in ("paper", "reference"):
        t = losses.CorrelationTerms(
            0.5, 0.1, 0.4, 0.05, 0.7, 0.6, neg_samples=2, dfc_weight=0.2, dfc_shift=0.03, dfc_target=target
        )
        ours = losses.correlation_loss(f1, f2, z1, z2, d1, None, c1, c2, t, generator=_gen(3))
        theirs = baselines.correlation_loss_release_style(f1, f2, z1, z2, d1, c1, c2, t, generator=_gen(3))
        for k in ours:
            assert ours[k].item() == pytest.approx(theirs[k].item(), abs=1e-6, rel=1e-6), (target, k)


def test_bench_compile_reports_compile_time_ratio_and_agreement(capsys):
    """Tiny shapes and dynamo's eager backend (tracing, no code generation), so it runs in seconds."""
    args = ["compile", "--batch", "2", "--channels", "8", "--dim", "4", "--grid", "6", "--side", "3"]
    assert main(args + ["--repeats", "2", "--backend", "eager"]) == 0
    out = capsys.readouterr().out
    assert "first call (compile)" in out and "ratio" in out and "relative difference 0.0e+00" in out


def test_bench_loss_and_fps_commands_report_ratios(capsys):
    code = main(["fps", "--batch", "2", "--grid", "6", "--side", "3", "--repeats", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and "indices identical: True" in printed and "False" not in printed
    main(
        [
            "loss",
            "--batch",
            "3",
            "--channels",
            "8",
            "--dim",
            "4",
            "--grid",
            "6",
            "--side",
            "3",
            "--neg",
            "2",
            "--repeats",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert printed.count("ratio") == 2 and "release-style" in printed
    for line in printed.splitlines()[1:]:
        ours, release = line.split("loss ")[1].split(" vs ")
        assert float(ours) == pytest.approx(float(release), abs=1e-6)


@pytest.mark.slow
def test_bench_gpu_reduced_writes_every_figure(tmp_path):
    """Without CUDA `python -m depthg.bench gpu` runs the reduced sizes; every figure is there and positive."""
    assert main(["gpu", "--out", str(tmp_path), "--workers", "1"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".md")
    r = json.loads((tmp_path / files[0]).read_text())
    assert r["mode"] == ("full" if torch.cuda.is_available() else "reduced")
    for label, by_precision in r["train"].items():
        assert set(by_precision) == set(gpu.PRECISIONS)
        for t in by_precision.values():
            assert t["iterations_per_s"] > 0 and t["images_per_s"] > 0
            assert set(t["split_ms"]) == set(gpu.PHASES) and all(v > 0 for v in t["split_ms"].values())
            assert (t["peak_memory_gib"] is None) == (not torch.cuda.is_available())
        assert r["evaluation"][label]["fp32"]["images_per_s"] > 0
        assert r["evaluation"][label]["fp32"]["crf_images_per_s"] > 0
        assert r["evaluation"][label]["bf16"]["images_per_s"] > 0
    assert r["loader"]["images_per_s"] > 0 and r["loader"]["items_on_disk"] == 5 * r["sizes"]["sources"]
    assert r["loss_fps"]["fps_ms"] > 0 and r["loss_fps"]["loss_ratio"] > 0
    proj = r["projection"]
    assert set(proj["runs"]) == {p for presets in gpu.PAPER_TABLES.values() for p in presets}
    assert set(proj["tables"]) == set(gpu.PAPER_TABLES)
    for run in proj["runs"].values():
        for precision in gpu.PRECISIONS:
            assert run[precision]["train_min"] > 0 and run[precision]["eval_min"] > 0
    assert all(v > 0 for t in proj["tables"].values() for v in t.values())
    md = (tmp_path / files[1]).read_text()
    assert "| backbone | precision | it/s" in md and "table: Potsdam-3" in md
