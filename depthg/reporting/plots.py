"""Figures, drawn from results and library outputs, saved as PNG and as PDF beside it (DESIGN.md §8, §10.8).

Every function draws on its own matplotlib Figure with the Agg canvas (no pyplot state, no display needed) and
returns the PNG path it wrote; the vector copy (same name, ``.pdf``) is for papers. Figures are printable: 150 dpi,
labelled axes with units, a colour bar on every depth panel, and a class legend on every segmentation panel when
class names are given. Their size stays modest because the notebooks embed them.

* :func:`sample_grid`: image / depth / label rows of a dataset (01_data_prep);
* :func:`loss_curves`: the terms of a run's ``metrics.jsonl`` against iterations (02_train);
* :func:`ablation_bars`: mean ± std per variant of an aggregated ablation table (03_ablation);
* :func:`fps_vs_random`: the sample locations the loss reads, FPS vs random, drawn on the depth map (04_figures);
* :func:`lhp_vs_attention`: one patch's 3D-LHP propagation weights beside its last-block attention (04_figures);
* :func:`predictions_grid`: image, ground truth, cluster probe (Hungarian-mapped) and linear probe (04_figures);
* :func:`situations_grid`: one scene per situation of the synthetic world, its pixels outlined on image and depth
  (04_figures; scenes from :func:`depthg.data.synthetic.situations.find_situations`).

Figure data helpers: :func:`patch_map` (a patch's row of a weight matrix, or of attention over patch tokens, as an
h x w map). Probe predictions for :func:`predictions_grid` come from
:func:`depthg.evaluation.examples.prediction_examples`.

Shapes: H/W image size, h/w feature grid, N = h*w patches, T tokens (prefix + patches), nh heads, S sample side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 150
DEPTH_LABEL = "depth (normalised per image; larger = farther)"
# keys of a metrics.jsonl record that are not loss terms
_NOT_TERMS = ("iteration", "images_per_s", "dfc_weight", "dfc_shift", "feature_samples")


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, *, bottom: float = 0.0) -> Path:
    """Write ``path`` (PNG at DPI) and its vector twin ``path.with_suffix('.pdf')``; return the PNG path.
    ``bottom``: the fraction of the height kept free below the panels (for a legend)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=DPI)
    fig.savefig(path.with_suffix(".pdf"))
    return path


def _depth(fig: Figure, ax, depth: np.ndarray) -> None:
    """A depth panel with its colour bar (magma_r: dark = far)."""
    im = ax.imshow(depth, cmap="magma_r")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(DEPTH_LABEL, fontsize=6)
    bar.ax.tick_params(labelsize=6)


def _legend(fig: Figure, colors: np.ndarray, names: Sequence[str] | None) -> float:
    """One class legend for the figure's segmentation panels, below them (black = ignore / unlabelled); returns the
    fraction of the figure height it takes (0 without names)."""
    if not names:
        return 0.0
    from matplotlib.patches import Patch  # only figures with class names need it

    handles = [Patch(color=colors[i], label=name) for i, name in enumerate(names[: len(colors)])]
    handles.append(Patch(color="black", label="ignore"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 6),
        fontsize=6,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    rows = -(-len(handles) // 6)
    return min(0.4, rows * 0.16 / fig.get_figheight())  # ~0.16 inch per legend row


def class_colors(n: int, fixed: np.ndarray | None = None) -> np.ndarray:
    """[n,3] float RGB in [0,1]: a dataset's own uint8 colours ``fixed`` when it has n of them (the synthetic
    world's, ``DatasetInfo.colors``), else a seaborn husl palette."""
    if fixed is not None and n <= len(fixed):
        return np.asarray(fixed[:n], np.float64) / 255.0
    return np.array(sns.color_palette("husl", n))


def _label_image(label: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """int label [H,W] (-1 / out of range = ignore, drawn black) -> RGB [H,W,3]."""
    label = np.asarray(label)
    valid = (label >= 0) & (label < len(colors))
    rgb = np.zeros(label.shape + (3,))
    rgb[valid] = colors[label[valid]]
    return rgb


def _off(axes: Iterable) -> None:
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def sample_grid(
    items: Sequence[dict],
    path: str | Path,
    *,
    colors: np.ndarray,
    names: Sequence[str] | None = None,
    max_items: int = 4,
) -> Path:
    """Rows of image / depth (dark = far, with a colour bar) / label for items with "image" (PIL or [H,W,3]),
    "depth" [H,W] and "label" [H,W] (None = unlabelled); ``names`` (class names) adds the class legend."""
    items = list(items)[:max_items]
    assert items, "sample_grid needs at least one item"
    fig = _figure(6.4, 2.0 * len(items) + (0.5 if names else 0))
    axes = fig.subplots(len(items), 3, squeeze=False)
    for row, it in zip(axes, items):
        row[0].imshow(np.asarray(it["image"]))
        _depth(fig, row[1], it["depth"])
        if it.get("label") is not None:
            row[2].imshow(_label_image(it["label"], colors), interpolation="nearest")
        else:
            row[2].text(0.5, 0.5, "unlabelled", ha="center", va="center", fontsize=8, transform=row[2].transAxes)
        _off(row)
    for ax, title in zip(axes[0], ("image", "depth", "label")):
        ax.set_title(title, fontsize=9)
    return _save(fig, path, bottom=_legend(fig, colors, names))


# y-axis label of each logged series (losses are dimensionless; the schedules have their own units)
_Y_LABELS = {"dfc_weight": "DFC weight λ_dep", "feature_samples": "samples S (S x S grid)"}


def loss_curves(log: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """One panel per logged loss term (and the DFC weight / FPS samples schedules) against training iteration.

    A term that equals an earlier one at every logged iteration (``correlation`` is ``total`` when 3D-LHP is off)
    is not drawn again: its name joins the earlier panel's title."""
    df = pd.DataFrame([r for r in log if "validation" not in r])  # training records (validation rows apart)
    assert len(df) and "iteration" in df, "loss_curves needs metrics.jsonl records with an 'iteration'"
    keys = [k for k in df.columns if k not in _NOT_TERMS] + [k for k in ("dfc_weight", "feature_samples") if k in df]
    titles: dict[str, str] = {}
    for k in keys:
        same = next(
            (t for t in titles if np.allclose(df[t].to_numpy(float), df[k].to_numpy(float), equal_nan=True)), None
        )
        if same is None:
            titles[k] = k
        else:
            titles[same] += f" = {k}"
    cols = 3
    rows = -(-len(titles) // cols)
    fig = _figure(2.4 * cols, 2.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, name) in zip(axes, titles.items()):
        ax.plot(df["iteration"], df[key], lw=1.2)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.set_ylabel(_Y_LABELS.get(key, "loss (dimensionless)"), fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(titles) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def ablation_bars(
    agg: pd.DataFrame,
    path: str | Path,
    *,
    metrics: Sequence[str] = ("cluster_miou", "linear_miou"),
    labels: dict[str, str] | None = None,
    title: str = "",
) -> Path:
    """Bars of ``<metric>_mean`` with ``<metric>_std`` error bars per variant (rows of ``ablation.aggregate``);
    ``labels`` names the metrics in the panel titles (``ablation.METRIC_LABELS``)."""
    labels = labels or {}
    fig = _figure(3.2 * len(metrics), 3.2)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colors = sns.color_palette("deep", len(agg))
    for ax, m in zip(axes, metrics):
        x = np.arange(len(agg))
        ax.bar(x, agg[f"{m}_mean"], yerr=agg[f"{m}_std"].fillna(0), color=colors, capsize=3)
        ax.set_xticks(x)
        ax.set_xticklabels(agg["variant"], rotation=45, ha="right", fontsize=7)
        ax.set_title(labels.get(m, m), fontsize=9)
        ax.set_ylabel(f"{labels.get(m, m)} (%)", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _to_pixels(coords: torch.Tensor, H: int, W: int) -> np.ndarray:
    """coords [S,S,2] (x, y) in [-1, 1] as grid_sample (align_corners=True) reads them -> pixel (x, y) [S*S,2]."""
    xy = coords.reshape(-1, 2).detach().cpu().numpy()
    return np.stack([(xy[:, 0] + 1) / 2 * (W - 1), (xy[:, 1] + 1) / 2 * (H - 1)], axis=1)


def fps_vs_random(image: np.ndarray, depth: np.ndarray, samples: dict[str, torch.Tensor], path: str | Path) -> Path:
    """The image, then the depth map [H,W] with each set of sample coordinates ({title: [S,S,2]}) drawn where the
    loss reads them; FPS picks are numbered in selection order (the first ten)."""
    H, W = depth.shape
    fig = _figure(2.3 * (1 + len(samples)), 2.6)
    axes = fig.subplots(1, 1 + len(samples), squeeze=False)[0]
    axes[0].imshow(np.asarray(image))
    axes[0].set_title("image", fontsize=9)
    for ax, (title, coords) in zip(axes[1:], samples.items()):
        px = _to_pixels(coords, H, W)
        _depth(fig, ax, depth)
        ax.scatter(px[:, 0], px[:, 1], s=12, c="cyan", edgecolors="black", linewidths=0.5)
        if "fps" in title.lower():
            for i, (x, y) in enumerate(px[:10]):
                ax.annotate(str(i), (x, y), fontsize=6, color="white", xytext=(2, 2), textcoords="offset points")
        ax.set_title(title, fontsize=9)
    _off(axes)
    return _save(fig, path)


def patch_map(matrix: torch.Tensor, grid_hw: tuple[int, int], patch: tuple[int, int], *, prefix: int = 0) -> np.ndarray:
    """Row ``patch`` (r, c) of a patch-to-patch matrix as an h x w map.

    ``matrix`` is [N,N] (3D-LHP weights), or [nh,T,T] attention whose first ``prefix`` tokens are CLS/registers:
    the row of the patch's token over the patch tokens, averaged over heads.
    """
    h, w = grid_hw
    i = patch[0] * w + patch[1]
    assert 0 <= i < h * w, f"patch {patch} outside the {h}x{w} grid"
    if matrix.dim() == 3:  # attention [nh,T,T] -> mean over heads of the query row, patch keys only
        assert matrix.shape[-1] == prefix + h * w, f"{matrix.shape[-1]} tokens != {prefix} prefix + {h}x{w}"
        row = matrix[:, prefix + i, prefix:].mean(0)  # [N]
    else:
        assert matrix.shape == (h * w, h * w), f"weights {tuple(matrix.shape)} do not fit a {h}x{w} grid"
        row = matrix[i]
    return row.reshape(h, w).float().cpu().numpy()  # [N] -> [h,w]


def lhp_vs_attention(
    image: np.ndarray,
    depth: np.ndarray,
    maps: dict[str, np.ndarray],
    patch: tuple[int, int],
    grid_hw: tuple[int, int],
    path: str | Path,
) -> Path:
    """Image and depth with the chosen patch marked, then each h x w map ({title: map}), e.g. 3D-LHP weights and
    last-block attention of that patch."""
    H, W = depth.shape
    h, w = grid_hw
    cy, cx = (patch[0] + 0.5) * H / h, (patch[1] + 0.5) * W / w  # patch centre in pixels
    fig = _figure(2.3 * (2 + len(maps)), 2.6)
    axes = fig.subplots(1, 2 + len(maps), squeeze=False)[0]
    axes[0].imshow(np.asarray(image))
    _depth(fig, axes[1], depth)
    for ax in axes[:2]:
        ax.scatter([cx], [cy], marker="x", s=50, c="red")
    axes[0].set_title("image", fontsize=9)
    axes[1].set_title("depth", fontsize=9)
    for ax, (title, m) in zip(axes[2:], maps.items()):
        im = ax.imshow(m, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        ax.scatter([patch[1]], [patch[0]], marker="x", s=50, c="red")
        ax.set_title(title, fontsize=9)
    _off(axes)
    return _save(fig, path)


def predictions_grid(
    examples: dict, path: str | Path, *, colors: np.ndarray, names: Sequence[str] | None = None
) -> Path:
    """Rows of image / ground truth / cluster probe (Hungarian-mapped) / linear probe from
    :func:`depthg.evaluation.examples.prediction_examples`; ``names`` (class names) adds the class legend."""
    n = len(examples["image"])
    fig = _figure(8.0, 2.0 * n + (0.5 if names else 0))
    axes = fig.subplots(n, 4, squeeze=False)
    for i, row in enumerate(axes):
        row[0].imshow(examples["image"][i])
        for ax, key in zip(row[1:], ("label", "cluster", "linear")):
            ax.imshow(_label_image(examples[key][i], colors), interpolation="nearest")
        _off(row)
    for ax, title in zip(axes[0], ("image", "ground truth", "cluster probe (Hungarian)", "linear probe")):
        ax.set_title(title, fontsize=9)
    return _save(fig, path, bottom=_legend(fig, colors, names))


def situations_grid(examples: Sequence[dict], path: str | Path) -> Path:
    """One column per situation ({"title", "index", "image" [H,W,3], "depth" [H,W], "mask" bool [H,W]}): the
    image and the depth map (normalised per image) with the situation's pixels outlined in cyan."""
    examples = list(examples)
    assert examples, "situations_grid needs at least one example"
    fig = _figure(2.2 * len(examples), 4.6)
    axes = fig.subplots(2, len(examples), squeeze=False)
    for col, ex in enumerate(examples):
        depth = np.asarray(ex["depth"], np.float64)
        depth = (depth - depth.min()) / max(np.ptp(depth), 1e-8)
        axes[0, col].imshow(np.asarray(ex["image"]))
        _depth(fig, axes[1, col], depth)
        for ax in axes[:, col]:
            ax.contour(np.asarray(ex["mask"], np.float64), levels=[0.5], colors="cyan", linewidths=0.8)
        axes[0, col].set_title(f"{ex['title']}\n(val scene {ex['index']})", fontsize=7)
    _off(axes.ravel())
    return _save(fig, path)


def paper_dots(
    points: pd.DataFrame,
    path: str | Path,
    *,
    metrics: Sequence[str],
    labels: dict[str, str] | None = None,
    title: str = "",
) -> Path:
    """One panel per metric, one line per table row: published numbers (diamonds), a released checkpoint evaluated
    here (squares), and our retrains' seeds (dots) with their mean ± std (bar), the release-selected checkpoint's
    seeds in another colour. ``points``: columns row, metric, value, kind ("published", "released", "seed",
    "seed, release-selected")."""
    labels = labels or {}
    rows = list(dict.fromkeys(points["row"])) or ["(no numbers)"]
    fig = _figure(2.8 * len(metrics) + 1.5, 0.35 * len(rows) + 1.4)
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    style = {
        "published": dict(marker="D", color="tab:red", s=30),
        "released": dict(marker="s", color="tab:purple", s=30),
        "seed": dict(marker="o", color="tab:blue", s=14, alpha=0.6),
        "seed, release-selected": dict(marker="o", color="tab:green", s=14, alpha=0.6),
    }
    y = {r: i for i, r in enumerate(rows)}
    for ax, m in zip(axes, metrics):
        sub = points[points["metric"] == m]
        for kind, kw in style.items():
            pts = sub[sub["kind"] == kind]
            offset = 0.15 if kind == "seed, release-selected" else 0.0
            if len(pts):
                ax.scatter(pts["value"], [y[r] + offset for r in pts["row"]], label=kind, **kw)
            if kind.startswith("seed"):
                for row, g in pts.groupby("row", sort=False):
                    std = g["value"].std(ddof=1) if len(g) > 1 else 0.0
                    ax.errorbar(
                        g["value"].mean(), y[row] + offset, xerr=std, fmt="|", ms=10, color="black", capsize=3, lw=1
                    )
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=7)
        ax.set_title(f"{labels.get(m, m)} (%)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # the table's order, top to bottom (the panels share the y axis)
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if handles:
        axes[-1].legend(handles, names, fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
