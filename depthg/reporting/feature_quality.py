"""The feature-quality table of the synthetic world (issue 10 item 3): pretrained vs random backbone, frozen.

Three figures per backbone weights, on the synthetic world's validation scenes at 112 px:
(a) k-means of patch features with Hungarian matching and (b) a linear probe on patch features
(:mod:`depthg.evaluation.feature_quality`); (c) the cluster probe of a DepthG head trained with the synthetic preset
on these weights (:func:`depthg.evaluation.experiment.train_and_evaluate`). Target: pretrained at least 10 mIoU
points above random in each. ``python -m depthg.bench feature-quality`` runs it and writes
results/feature_quality_synthetic.{csv,md}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from depthg.data.knn import run_knn
from depthg.data.synthetic import write_synthetic
from depthg.evaluation.experiment import train_and_evaluate
from depthg.evaluation.feature_quality import feature_quality, render_split
from depthg.files import file_sha256, write_text
from depthg.paths import bundled_weights_path, results_root
from depthg.presets import load_preset
from depthg.reporting.ablation import markdown
from depthg.runs import git_state

TARGET = 10.0  # mIoU points the pretrained backbone should gain in every probe
PROBES = (
    ("kmeans_miou", "(a) k-means of patch features, Hungarian mIoU"),
    ("linear_miou", "(b) linear probe on patch features, mIoU"),
    ("cluster_miou", "(c) DepthG-trained cluster probe (synthetic preset), mIoU"),
)


def trained_cluster_miou(weights: str, *, seed: int = 0, overrides: tuple[str, ...] = ()) -> dict:
    """(c): the synthetic preset trained on ``weights`` in a private folder (its world and kNN file belong to these
    weights alone: the kNN file is made from the backbone's features) -> cluster / head-linear mIoU (%)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cfg = load_preset(
            "synthetic", [f"data.data_dir={data}", f"model.weights={weights}", f"train.seed={seed}", *overrides]
        )
        write_synthetic(data / "synthetic", n_train=200, n_val=50, res=cfg.data.res, seed=0, progress=False)
        run_knn(
            "synthetic",
            str(data),
            "train",
            backbone=cfg.model.backbone,
            weights=weights,
            res=cfg.data.knn_res,
            crop=cfg.data.crop_type,
            k=30,
            fidelity=cfg.fidelity.knn_features,
            progress=False,
        )
        res = train_and_evaluate(
            cfg, run_name=f"feature-quality-{weights}-s{seed}", results_dir=Path(tmp) / "res", progress=False
        )
        m = res.metrics  # the last step's evaluation (STEGO protocol, CRF as the preset)
    return dict(
        cluster_miou=m["cluster"]["mIoU"],
        cluster_accuracy=m["cluster"]["accuracy"],
        head_linear_miou=m["linear"]["mIoU"],
    )


def measure(
    backbone: str = "vit_tiny_patch8",
    weights: tuple[str, str] = ("random", "bundled"),
    *,
    seeds: tuple[int, ...] = (0,),
    train: bool = True,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """The table (probe, baseline, pretrained, difference, target_met) and per-weights details."""
    t0 = time.time()
    data = {s: render_split(s, n) for s, n in (("train", 200), ("val", 50))}
    rows = {}
    for w in weights:
        r = feature_quality(backbone, w, data=data)
        if train:
            runs = [trained_cluster_miou(w, seed=s) for s in seeds]
            for key in ("cluster_miou", "cluster_accuracy", "head_linear_miou"):
                r[key] = float(np.mean([x[key] for x in runs]))
            r["cluster_miou_per_seed"] = [round(x["cluster_miou"], 2) for x in runs]
        rows[w] = r
        if progress:
            print(f"feature quality {w}: {r} ({time.time() - t0:.0f} s)", flush=True)
    base, pre = weights
    table = pd.DataFrame(
        [
            dict(
                probe=desc,
                baseline=rows[base][k],
                pretrained=rows[pre][k],
                difference=rows[pre][k] - rows[base][k],
                target_met=bool(rows[pre][k] - rows[base][k] >= TARGET),
            )
            for k, desc in PROBES
            if k in rows[base]
        ]
    )
    return table, dict(
        rows=rows, weights=list(weights), backbone=backbone, seeds=list(seeds), wall_time_s=round(time.time() - t0, 1)
    )


def _details(weights: str, r: dict) -> str:
    line = (
        f"- {weights}: {r['weights_source']}; k-means accuracy {r['kmeans_accuracy']:.2f}, linear accuracy "
        f"{r['linear_accuracy']:.2f}"
    )
    if "cluster_miou" in r:
        line += (
            f", (c) cluster mIoU per seed {r['cluster_miou_per_seed']}, cluster accuracy "
            f"{r['cluster_accuracy']:.2f}, head linear-probe mIoU {r['head_linear_miou']:.2f}"
        )
    return line


def write(table: pd.DataFrame, meta: dict, *, results_dir=None, command: str = "") -> list[Path]:
    """results/feature_quality_synthetic.{csv,md}: the table, and in the markdown its provenance."""
    out = results_root(results_dir)
    csv = out / "feature_quality_synthetic.csv"
    write_text(csv, table.to_csv(index=False, float_format="%.2f"))
    base, pre = meta["weights"]
    bundled = bundled_weights_path(meta["backbone"])
    git = git_state()
    fmt = table.assign(**{c: table[c].map(lambda v: f"{v:.2f}") for c in ("baseline", "pretrained", "difference")})
    lines = [
        f"# Feature quality on the synthetic world: {pre} vs {base} weights ({meta['backbone']}, frozen)",
        "",
        "50 validation scenes at 112 px; (b) trained on the 200 training scenes; (c) the synthetic preset "
        f"trained with seeds {meta['seeds']}. Target: pretrained >= baseline + {TARGET:.0f} mIoU.",
        "",
        markdown(fmt),
        "",
        *(_details(w, meta["rows"][w]) for w in meta["weights"]),
        f"- bundled file {bundled.name}: sha256 {file_sha256(bundled) if bundled.is_file() else 'missing'}",
        f"- command: {command}",
        f"- git {git['commit']} (dirty: {git['dirty']}); wall time {meta['wall_time_s']:.0f} s",
    ]
    md = out / "feature_quality_synthetic.md"
    write_text(md, "\n".join(lines) + "\n")
    return [csv, md]
