"""The ablation: what each of DepthG's components adds, and what the `paper`/`reference` switches change.

Two tables (DESIGN.md §8, §3):

* **components**: STEGO (no DFC, random sampling, no 3D-LHP), +DFC, +FPS, +DFC+FPS, +3D-LHP and all three, each
  trained over several seeds; mean and standard deviation of cluster- and linear-probe accuracy and mIoU.
  A variant sets only the three switches ``loss.dfc``, ``loss.depth_sampling`` and ``loss.lhp``; everything else
  (weights, schedules, fidelity) stays as the preset has it.
* **fidelity**: every component on, all aspects ``paper``; then one aspect of DESIGN.md §3 flipped to
  ``reference`` at a time; then all ``reference``. ``knn_features`` acts only in the kNN stage (the training run
  reads the prepared kNN file), so flipping it in training would change nothing: it is listed, not run.

Runs are ordinary training runs (:func:`depthg.evaluation.experiment.train_and_evaluate`) under
``results/runs/<prefix>-<variant>-s<seed>/``
with their config, metrics and provenance; two variants that resolve to the same config at the same seed share one
run. Every table row carries its run names, seeds, iterations and git commit(s), so a number can be traced back.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from depthg.config import Config, FidelityConfig
from depthg.evaluation.experiment import train_and_evaluate
from depthg.paths import file_tag, results_root, runs_dir
from depthg.reporting import anchors
from depthg.runs import read_run

# (column, metrics key, field): the cluster probe after Hungarian matching, the linear probe by plain argmax.
METRICS = (
    ("cluster_acc", "cluster", "accuracy"),
    ("cluster_miou", "cluster", "mIoU"),
    ("linear_acc", "linear", "accuracy"),
    ("linear_miou", "linear", "mIoU"),
)
METRIC_LABELS = {
    "cluster_acc": "cluster Acc",
    "cluster_miou": "cluster mIoU",
    "linear_acc": "linear Acc",
    "linear_miou": "linear mIoU",
}


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table: a label and the config overrides (dotted keys, applied in order)."""

    key: str  # file-safe; part of the run names
    label: str
    overrides: tuple[tuple[str, Any], ...]
    note: str = ""

    def config(self, base: Config, seed: int) -> Config:
        return base.with_overrides({**dict(self.overrides), "train.seed": seed})


def _switches(dfc: bool, sampling: str, lhp: bool) -> tuple[tuple[str, Any], ...]:
    return (("loss.dfc", dfc), ("loss.depth_sampling", sampling), ("loss.lhp", lhp))


COMPONENTS = (
    Variant("stego", "STEGO baseline", _switches(False, "random", False), "no DFC, random sampling, no 3D-LHP"),
    Variant("dfc", "+DFC", _switches(True, "random", False), "depth-feature correlation"),
    Variant("fps", "+FPS", _switches(False, "fps", False), "farthest point sampling on depth"),
    Variant("dfc_fps", "+DFC+FPS", _switches(True, "fps", False), ""),
    Variant("lhp", "+3D-LHP", _switches(False, "random", True), "3D local hidden positives"),
    Variant("all", "all (DFC+FPS+3D-LHP)", _switches(True, "fps", True), ""),
)
ASPECTS = tuple(f.name for f in fields(FidelityConfig))
# Aspects a training run cannot show: they act in a preparation stage whose output the run only reads.
NOT_IN_TRAINING = {
    "knn_features": "acts in the kNN stage only (`python -m depthg prep knn --fidelity reference`); "
    "training reads the prepared kNN file, so this run would equal 'all paper'",
    "crop_format": "acts in the five-crop stage only (`python -m depthg prep fivecrop --fidelity "
    "reference` writes JPEG quality 75); training reads the prepared crops",
}


def component_variants() -> tuple[Variant, ...]:
    return COMPONENTS


def fidelity_variants(base: Variant = COMPONENTS[-1]) -> tuple[Variant, ...]:
    """'all paper', one aspect flipped to reference at a time (those a training run can show), 'all reference'."""
    on = base.overrides
    out = [Variant("fid_paper", "all paper", on + (("fidelity", "paper"),), "every aspect paper")]
    for aspect in ASPECTS:
        if aspect in NOT_IN_TRAINING:
            continue
        out.append(
            Variant(
                f"fid_{aspect}",
                f"{aspect} = reference",
                on + (("fidelity", "paper"), (f"fidelity.{aspect}", "reference")),
            )
        )
    out.append(Variant("fid_reference", "all reference", on + (("fidelity", "reference"),), "the released code"))
    return tuple(out)


def released_variant(cfg: Config) -> Variant | None:
    """The component variant whose switches equal the preset's: the configuration the release trains."""
    own = _switches(cfg.loss.dfc, cfg.loss.depth_sampling, cfg.loss.lhp)
    return next((v for v in COMPONENTS if v.overrides == own), None)


# ---- running -----------------------------------------------------------------------------------------------------


def run_prefix(dataset: str, table: str, preset: str | None = None) -> str:
    """Run-name prefix, file-safe: ablation-potsdam, fidelity-directory-<folder>-synthetic (the preset joins the
    name where the dataset does not say it, as :func:`depthg.paths.run_name`)."""
    tag = file_tag(dataset)
    said = preset is None or file_tag(preset) == tag or file_tag(preset).startswith(f"{tag}_")
    return f"{table}-{tag}" if said else f"{table}-{tag}-{file_tag(preset)}"


def run_name(prefix: str, variant: Variant, seed: int) -> str:
    """The run folder of one (variant, seed) under a table's prefix; the paper tables name their runs the same way."""
    return f"{prefix}-{variant.key}-s{seed}"


def _finished(run_dir: Path, cfg: Config) -> bool:
    cfg_file, metrics = run_dir / "config.json", run_dir / "metrics.json"
    return metrics.is_file() and cfg_file.is_file() and json.loads(cfg_file.read_text()) == cfg.to_dict()


def _resumable(run_dir: Path, cfg: Config) -> bool:
    cfg_file = run_dir / "config.json"
    return (
        (run_dir / "checkpoints" / "last.pt").is_file()
        and cfg_file.is_file()
        and json.loads(cfg_file.read_text()) == cfg.to_dict()
    )


def run_variants(
    base: Config,
    variants: Iterable[Variant],
    seeds: Iterable[int],
    *,
    prefix: str,
    results_dir: str | None = None,
    reuse: bool = False,
    progress: bool = False,
    overwrite: bool = False,
    made: dict[str, str] | None = None,
    log: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Train and evaluate every (variant, seed); one row per pair (see :func:`run_record`).

    ``reuse``: keep a finished run whose saved config equals the requested one, and resume an interrupted one from
    its checkpoint (for long real-data ablations); its row still carries that run's own commit. Without it every
    run is trained afresh; a run folder of another config or of committed results is refused unless ``overwrite``
    (:func:`depthg.paths.claim_run_dir`). Pairs that resolve to the same config share one run either way: within a
    call, and across calls given the same ``made`` dict (resolved config JSON -> run name, filled in here).
    """
    variants, seeds = list(variants), [int(s) for s in seeds]
    assert variants and seeds, "need at least one variant and one seed"
    rows, made = [], ({} if made is None else made)
    for v in variants:
        for seed in seeds:
            cfg = v.config(base, seed)
            key = json.dumps(cfg.to_dict(), sort_keys=True)
            name = made.get(key, run_name(prefix, v, seed))
            run_dir = runs_dir(results_dir) / name
            if key not in made:
                if reuse and _finished(run_dir, cfg):
                    status = "reused"
                else:
                    resume = reuse and _resumable(run_dir, cfg)
                    with warnings.catch_warnings():
                        # a variant with knn_features=reference reads the prepared (paper) kNN file by design: the
                        # table's notes say so once (NOT_IN_TRAINING), instead of a warning per run
                        warnings.filterwarnings("ignore", message="kNN file was computed with knn_features")
                        train_and_evaluate(
                            cfg,
                            run_name=name,
                            results_dir=results_dir,
                            resume=resume,
                            evaluate_at_end=True,
                            progress=progress,
                            overwrite=overwrite,
                        )
                    status = "resumed" if resume else "trained"
                made[key] = name
                if log:
                    log(f"{v.label:<28} seed {seed}: {status} {name}")
            rows.append(run_record(run_dir, variant=v, seed=seed))
    return pd.DataFrame(rows)


def run_record(run_dir: str | Path, *, variant: Variant, seed: int) -> dict:
    """One run as a flat row: variant, seed, run name, iterations, the four metrics, CRF flag and provenance."""
    run = read_run(Path(run_dir))
    if run["metrics"] is None or run["config"] is None:
        raise FileNotFoundError(f"run folder {run_dir} has no metrics.json/config.json: the run did not finish")
    metrics = run["metrics"].get("last_step", run["metrics"])
    crf = bool(metrics.get("eval", {}).get("crf", False))
    prov = run["provenance"] or {}
    row = {
        "variant": variant.label,
        "key": variant.key,
        "seed": seed,
        "run": Path(run_dir).name,
        "iterations": run["config"]["train"]["iterations"],
        "crf": crf,
        "eval_images": metrics.get("eval", {}).get("images"),
    }
    for col, probe, field in METRICS:
        m = metrics.get(f"{probe}_crf" if crf else probe, {})
        row[col] = _num(m.get(field))
    git = prov.get("git", {})
    row.update(
        git_commit=git.get("commit", "unknown"),
        git_dirty=git.get("dirty"),
        weights=prov.get("backbone_weights"),
        wall_time_s=prov.get("wall_time_s"),
    )
    return row


def _num(x) -> float:
    return float("nan") if x is None else float(x)


# ---- aggregation -------------------------------------------------------------------------------------------------


def _joined(values) -> str:
    return ";".join(dict.fromkeys(str(v) for v in values))  # unique, in order


def aggregate(records: pd.DataFrame) -> pd.DataFrame:
    """Per variant (in the order they appear): mean and sample std (ddof=1) over seeds of each metric, with the
    seeds, run names, iterations, CRF flag and git commit(s) the numbers come from."""
    assert len(records), "no run records to aggregate"
    out = []
    for label, g in records.groupby("variant", sort=False):
        row = {"variant": label, "key": g["key"].iloc[0], "n_seeds": g["seed"].nunique()}
        for col, _, _ in METRICS:
            row[f"{col}_mean"] = g[col].mean()
            row[f"{col}_std"] = g[col].std(ddof=1) if len(g) > 1 else float("nan")
        row.update(
            seeds=_joined(g["seed"]),
            runs=_joined(g["run"]),
            iterations=_joined(g["iterations"]),
            crf=bool(g["crf"].all()),
            eval_images=_joined(g["eval_images"]),
            git_commit=_joined(g["git_commit"]),
            git_dirty=bool(g["git_dirty"].fillna(True).any()),
        )
        out.append(row)
    return pd.DataFrame(out)


def paired_differences(
    agg: pd.DataFrame, records: pd.DataFrame, *, baseline: str = "stego", level: float = 0.95
) -> pd.DataFrame:
    """``agg`` plus, per variant and metric, the mean paired difference to the ``baseline`` variant over the seeds
    both ran (``d_<metric>``) and its two-sided t confidence interval (``d_<metric>_lo``/``_hi``, ``level``).

    Runs of one seed share the data order, the kNN partner draws and the head's initialisation (the seed sets them),
    so the difference of a variant and the baseline at the same seed cancels the seed's share of the spread; the
    interval is mean ± t(level, n-1) · sd/√n over those n paired differences (NaN with fewer than 2 pairs). An
    interval that excludes 0 is an effect outside the seed noise at that level. Without the baseline variant in
    ``records`` ``agg`` is returned unchanged.
    """
    if baseline not in set(records["key"]):
        return agg
    base = records[records["key"] == baseline].set_index("seed")
    rows = []
    for key, g in records.groupby("key", sort=False):
        g = g.set_index("seed")
        seeds = g.index.intersection(base.index)
        row = {"key": key, "d_pairs": len(seeds), "d_is_baseline": key == baseline}
        for col, _, _ in METRICS:
            d = (g.loc[seeds, col] - base.loc[seeds, col]).to_numpy(float)
            mean = float(d.mean()) if len(d) else float("nan")
            if len(d) > 1:
                half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
            else:
                half = float("nan")
            row.update({f"d_{col}": mean, f"d_{col}_lo": mean - half, f"d_{col}_hi": mean + half})
        rows.append(row)
    return agg.merge(pd.DataFrame(rows), on="key", how="left")


def with_published(agg: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Add the published numbers (anchors) beside ours on a real dataset (unchanged otherwise): the STEGO baseline
    beside STEGO, the preset's own configuration beside DepthG, for the preset's backbone. Cells ANCHORS.md lacks
    read 'not retrieved (X)'."""
    counterpart = {"stego": "STEGO"}
    released = released_variant(cfg)
    if released is not None:
        counterpart[released.key] = "DepthG"
    if anchors.published(cfg.data.dataset).empty:
        return agg  # synthetic and directory datasets: nobody publishes numbers
    pub = anchors.published(cfg.data.dataset, backbone=cfg.model.backbone)
    agg = agg.copy()
    for probe in ("cluster", "linear"):
        cells, sources = [], []
        for key in agg["key"]:
            rows = pub[(pub["method"] == counterpart.get(key, "")) & (pub["probe"] == probe)]
            if counterpart.get(key) is None:
                cells.append("")
                sources.append("")
            elif rows.empty:
                cells.append("not in ANCHORS.md")
                sources.append("")
            else:
                r = rows.iloc[0]
                cells.append(f"{r['method']}: {anchors.cell(r)}")
                sources.append(f"{r['status']} [{r['source']}]")
        agg[f"published_{probe}"] = cells
        agg[f"published_{probe}_source"] = sources
    return agg


# ---- writing -----------------------------------------------------------------------------------------------------


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _diff(d: float, lo: float, hi: float, is_baseline: bool) -> str:
    """'+1.2 [+0.3, +2.1] *' (the star: the interval excludes 0); '–' for the baseline itself or no pairs."""
    if is_baseline or math.isnan(d):
        return "–"
    if math.isnan(lo):
        return f"{d:+.1f}"
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" + (" *" if lo > 0 or hi < 0 else "")


def display_table(agg: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: 'mean ± std' strings, seeds and runs, published numbers where present."""
    out = pd.DataFrame({"variant": agg["variant"]})
    for col, _, _ in METRICS:
        out[METRIC_LABELS[col]] = [_pm(m, s) for m, s in zip(agg[f"{col}_mean"], agg[f"{col}_std"])]
    if "d_cluster_miou" in agg:
        for col in ("cluster_miou", "linear_miou"):
            out[f"Δ {METRIC_LABELS[col]} [95% CI]"] = [
                _diff(*v)
                for v in zip(
                    agg[f"d_{col}"], agg[f"d_{col}_lo"], agg[f"d_{col}_hi"], agg["d_is_baseline"].fillna(False)
                )
            ]
    out["seeds"] = agg["seeds"]
    for probe in ("cluster", "linear"):
        if f"published_{probe}" in agg:
            out[f"published {probe} (Acc / mIoU)"] = [
                f"{c} {s}".strip() for c, s in zip(agg[f"published_{probe}"], agg[f"published_{probe}_source"])
            ]
    out["runs"] = agg["runs"]
    return out


def markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency); '|' inside cells is escaped."""
    esc = lambda v: str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def notes(cfg: Config, table: str) -> list[str]:
    """What a reader needs beside the numbers: the variants' switches, what was not run, the anchors' status."""
    out = []
    if table == "component":
        out.append(
            "Δ: mean paired difference to the STEGO baseline over the seeds both ran (same seed = same data "
            "order, partners and initialisation), with a two-sided 95% t interval; * marks an interval that "
            "excludes 0, i.e. an effect outside the seed noise."
        )
        out += [
            f"{v.label}: {', '.join(f'{k}={val}' for k, val in v.overrides)}" + (f" ({v.note})" if v.note else "")
            for v in COMPONENTS
        ]
        released = released_variant(cfg)
        if released is not None:
            out.append(f"The preset `{cfg.name}` trains {released.label} (fidelity {cfg.fidelity.summary}).")
    else:
        out += [f"{a} = reference: not run; {why}" for a, why in NOT_IN_TRAINING.items()]
        out.append("Every fidelity variant has all three components on (DFC, FPS, 3D-LHP).")
    published = anchors.published(cfg.data.dataset)
    if not published.empty:
        out.append(anchors.ABLATION_STATUS)
        out.append(
            "Published numbers (depthg.reporting.anchors, docs/ANCHORS.md): status V verified, T third-party, "
            "X not retrieved. Sources: "
            + anchors.expand_sources(
                "+".join(dict.fromkeys(k for keys in published["source"] for k in keys.split("+")))
            )
        )
    return out


def write_table(
    agg: pd.DataFrame, records: pd.DataFrame, *, cfg: Config, table: str, results_dir: str | None = None
) -> dict[str, Path]:
    """results/<table>_<dataset>.csv (aggregated, with provenance columns), results/<table>_<dataset>_runs.csv
    (one row per run) and results/<table>_<dataset>.md (caption, table, notes); ``table`` is "ablation" (the
    component table) or "fidelity"."""
    assert table in ("ablation", "fidelity"), f"table must be 'ablation' or 'fidelity', got {table!r}"
    name = f"{table}_{file_tag(cfg.data.dataset)}"
    root = results_root(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"csv": root / f"{name}.csv", "runs_csv": root / f"{name}_runs.csv", "md": root / f"{name}.md"}
    agg.to_csv(paths["csv"], index=False, float_format="%.4f")
    records.to_csv(paths["runs_csv"], index=False, float_format="%.4f")
    kind = "component" if table == "ablation" else "fidelity"
    text = [f"# {name}", "", caption(cfg, records, table=kind), "", markdown(display_table(agg)), ""]
    text += [f"- {n}" for n in notes(cfg, kind)]
    paths["md"].write_text("\n".join(text).rstrip() + "\n")
    return paths


def caption(cfg: Config, records: pd.DataFrame, *, table: str) -> str:
    """What the numbers are: dataset, preset, schedule, seeds, evaluation, weights and code version."""
    crf = "with DenseCRF" if records["crf"].all() else "without DenseCRF (eval.crf=false, to keep the ablation fast)"
    return (
        f"{table.capitalize()} ablation on **{cfg.data.dataset}** (preset `{cfg.name}`, backbone "
        f"`{cfg.model.backbone}`, weights {_joined(records['weights'])}): {_joined(records['iterations'])} "
        f"iterations of batch {cfg.data.batch_size} at {cfg.data.res} px, seeds {_joined(records['seed'])}; "
        f"last-step evaluation on {_joined(records['eval_images'])} {cfg.data.dataset} val images at "
        f"{cfg.eval.res} px {crf}. Accuracy and mIoU in %, mean ± sample std over seeds. Cluster probe: "
        f"dataset-level Hungarian matching; linear probe: argmax. Code: git {_joined(records['git_commit'])}"
        f"{' (uncommitted changes)' if records['git_dirty'].fillna(True).any() else ''}."
    )
