"""Figures: every plot writes a readable PNG; patch maps pick the right row; predictions use Hungarian mapping."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from depthg.data.labels import dataset_info
from depthg.evaluation.examples import prediction_examples
from depthg.model.sampling import fps_coords, random_coords
from depthg.reporting import plots

DEPTH_WORD = "depth"


def _png(path):
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as im:
        w, h = im.size
        dpi = im.info.get("dpi", (0, 0))[0]
    assert 100 < w < 1500 and 100 < h < 2000, (w, h)  # modest: notebooks embed them
    assert round(dpi) >= 150, f"{path.name} at {dpi} dpi: print quality needs >= 150"
    pdf = path.with_suffix(".pdf")  # the vector copy for papers
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF"), f"no vector copy {pdf.name}"
    return w, h


def _scene(seed=0, H=32, W=32):
    g = np.random.default_rng(seed)
    image = g.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = np.linspace(1, 10, H, dtype=np.float32)[:, None].repeat(W, 1) + g.uniform(0, 0.5, (H, W)).astype(np.float32)
    label = g.integers(-1, 4, (H, W))
    return image, depth, label


def test_situations_grid_outlines_each_situation(tmp_path):
    image, depth, _ = _scene()
    mask = np.zeros(depth.shape, bool)
    mask[8:20, 4:12] = True
    examples = [dict(title=t, index=i, image=image, depth=depth, mask=mask) for i, t in enumerate(["a", "b", "c"])]
    w, h = _png(plots.situations_grid(examples, tmp_path / "situations.png"))
    assert w > h, "one column per situation"


def test_sample_grid_and_loss_curves_and_bars(tmp_path):
    items = [dict(zip(("image", "depth", "label"), _scene(i))) for i in range(3)]
    items[2]["label"] = None  # unlabelled items are drawn without labels
    _png(plots.sample_grid(items, tmp_path / "grid.png", colors=plots.class_colors(4)))
    assert plots.class_colors(6, dataset_info("synthetic").colors).shape == (6, 3)

    log = [
        {
            "iteration": i,
            "loss": 1 / (i + 1),
            "inter": -i * 0.01,
            "dfc": 0.1,
            "images_per_s": 9.0,
            "dfc_weight": 0.1 * 0.8 ** (i // 5),
            "feature_samples": 7,
        }
        for i in range(0, 30, 3)
    ]
    _png(plots.loss_curves(log, tmp_path / "sub" / "loss.png", title="run"))
    named = [dict(zip(("image", "depth", "label"), _scene(i))) for i in range(2)]
    _png(plots.sample_grid(named, tmp_path / "named.png", colors=plots.class_colors(4), names=list("abcd")))

    agg = pd.DataFrame(
        {
            "variant": ["STEGO baseline", "+DFC"],
            "cluster_miou_mean": [20.0, 22.0],
            "cluster_miou_std": [1.0, np.nan],
            "linear_miou_mean": [30.0, 31.0],
            "linear_miou_std": [0.5, 0.4],
        }
    )
    _png(plots.ablation_bars(agg, tmp_path / "bars.png", title="ablation"))


def test_figures_carry_legends_colour_bars_and_axis_labels(tmp_path, monkeypatch):
    """Inspect what was drawn: the Figure each function would save (not written: the files are tested above)."""
    saved = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path, **kw: saved.setdefault(Path(path).stem, fig) and path)
    log = [
        {
            "iteration": i,
            "intra": 0.1 * i,
            "total": -0.5 * i,
            "correlation": -0.5 * i,
            "loss": 1 / (i + 1),
            "dfc_weight": 0.1,
            "images_per_s": 9.0,
        }
        for i in range(0, 30, 3)
    ]
    plots.loss_curves(log, tmp_path / "loss.png")
    axes = [ax for ax in saved["loss"].axes if ax.get_visible() and ax.has_data()]
    titles = [ax.get_title() for ax in axes]
    assert "total = correlation" in titles and "correlation" not in titles  # no identical second panel
    assert all(ax.get_xlabel() == "iteration" and ax.get_ylabel() for ax in axes)

    items = [dict(zip(("image", "depth", "label"), _scene(i))) for i in range(2)]
    plots.sample_grid(items, tmp_path / "grid.png", colors=plots.class_colors(4), names=["sky", "road", "car", "tree"])
    fig = saved["grid"]
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert legend == ["sky", "road", "car", "tree", "ignore"]
    assert any(DEPTH_WORD in ax.get_ylabel() for ax in fig.axes)  # the depth colour bar is labelled


def test_fps_vs_random_and_lhp_vs_attention(tmp_path):
    image, depth, _ = _scene()
    d = torch.from_numpy(depth)[None, None]  # [1,1,H,W]
    samples = {
        "random": random_coords(1, 3, generator=torch.Generator().manual_seed(0))[0],
        "FPS paper": fps_coords(d, (4, 4), 3, fidelity="paper")[0],
        "FPS reference": fps_coords(d, (4, 4), 3, fidelity="reference")[0],
    }
    _png(plots.fps_vs_random(image, depth, samples, tmp_path / "fps.png"))

    maps = {"lhp": np.random.rand(4, 4), "attention": np.random.rand(4, 4)}
    _png(plots.lhp_vs_attention(image, depth, maps, (1, 2), (4, 4), tmp_path / "lhp.png"))


def test_pixel_positions_follow_grid_sample():
    coords = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0]], [[1.0, -1.0], [0.0, 0.0]]]])[0]  # [S=2,S,2] (x, y)
    px = plots._to_pixels(coords, H=11, W=21)
    np.testing.assert_allclose(px, [[0, 0], [20, 10], [20, 0], [10, 5]])


def test_patch_map_rows_of_weights_and_attention():
    h, w = 2, 3
    weights = torch.arange(36, dtype=torch.float32).view(6, 6)
    np.testing.assert_array_equal(plots.patch_map(weights, (h, w), (1, 0)), weights[3].view(2, 3).numpy())
    nh, prefix = 2, 1
    attn = torch.rand(nh, prefix + h * w, prefix + h * w)
    got = plots.patch_map(attn, (h, w), (0, 2), prefix=prefix)
    want = attn[:, prefix + 2, prefix:].mean(0).view(2, 3).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(AssertionError, match="outside"):
        plots.patch_map(weights, (h, w), (2, 0))
    with pytest.raises(AssertionError, match="tokens"):
        plots.patch_map(attn, (h, w), (0, 0), prefix=0)


@pytest.mark.slow
def test_prediction_examples_map_clusters_by_hungarian_matching(synthetic_world, tmp_path):
    from depthg.evaluation.metrics import UnsupervisedMetrics
    from depthg.model.segmenter import DepthGModel
    from depthg.presets import load_preset

    cfg = load_preset("synthetic", [f"data.data_dir={synthetic_world}", "eval.max_images=6", "eval.batch_size=4"])
    torch.manual_seed(0)
    model = DepthGModel.from_config(cfg.model).eval()
    ex = prediction_examples(model, cfg, n_show=6)
    n = cfg.model.n_classes
    assert ex["images"] == 6 and ex["image"].shape == (6, 112, 112, 3) and ex["image"].dtype == np.uint8
    assert ex["label"].shape == ex["cluster"].shape == ex["linear"].shape == (6, 112, 112)
    assert ex["cluster"].min() >= 0 and ex["cluster"].max() < n and ex["linear"].max() < n
    # shown = all evaluated images: the mapped predictions, scored without matching, give the Hungarian score
    check = UnsupervisedMetrics(n, hungarian=False)
    check.update(ex["cluster"], ex["label"])
    assert check.compute()["accuracy"] == pytest.approx(ex["accuracy"])
    assert check.compute()["mIoU"] == pytest.approx(ex["mIoU"])
    _png(
        plots.predictions_grid(
            ex, tmp_path / "pred.png", colors=plots.class_colors(n, dataset_info("synthetic").colors)
        )
    )
