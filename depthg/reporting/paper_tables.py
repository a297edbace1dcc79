"""The paper's main tables: published numbers, the authors' released checkpoints re-evaluated, and our retrains.

For each (dataset, backbone) of the paper (``depthg.presets.PAPER_PRESETS``; on the synthetic world, its preset)
the table has four kinds of rows (issue 11):

1. ``published``: every method ANCHORS.md lists for that dataset and backbone (:mod:`depthg.reporting.anchors`),
   with status and source; a cell nobody could retrieve reads "not retrieved (X)".
2. ``released checkpoint``: the authors' ``.ckpt`` of that (dataset, backbone), found in a folder by its
   hyper-parameters and tensor shapes, evaluated here with the STEGO protocol
   (:func:`depthg.evaluation.evaluate.evaluate_checkpoint`); otherwise a row saying why there is none.
3. ``reference retrain`` and 4. ``paper retrain``: the preset trained at that fidelity over several seeds
   (:func:`depthg.reporting.ablation.run_variants`: same run naming, ``reuse`` and resume), mean ± sample std of
   the last step and, where the run folder's ``metrics.json`` has one, of the checkpoint the release's selection
   picked (``release_selected``, CONTRACTS.md; paper-fidelity runs have none and say so).

Every number is read back from a run folder under ``results/runs/`` (metrics, provenance: wall time, device,
weights, git commit), never recomputed. What runs, and the time estimate printed before it, is the plan
(:mod:`depthg.reporting.paper_plan`); :func:`run_tables` carries it out and writes the tables and figures.

Columns of the long table (one row per table row): dataset, backbone, preset, row, method, the four metrics
(``cluster_acc`` ... ``linear_miou``) with ``_std``, ``n``, ``selected`` (what was selected, or why nothing) with
``selected_<metric>`` and ``_std`` and ``n_selected``, status, source, note, seeds, runs, iterations, eval_images,
crf, wall_time_s (summed over the row's runs), device, weights, git_commit, git_dirty.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from depthg.evaluation.evaluate import evaluate_checkpoint
from depthg.files import write_text
from depthg.paths import dataset_base, figures_dir, file_tag, results_root, runs_dir
from depthg.reporting import anchors
from depthg.reporting.ablation import METRIC_LABELS, METRICS, _joined, _pm, markdown, run_variants
from depthg.reporting.paper_plan import Case, Plan, fidelity_variant, released_overrides
from depthg.reporting.plots import paper_dots
from depthg.runs import read_run

ROWS = ("published", "released checkpoint", "reference retrain", "paper retrain")
NOT_SELECTED = {
    "paper": "not selected (paper fidelity)",
    "reference": "not selected (the run's metrics.json has no release_selected entry)",
}
COLS = [c for c, _, _ in METRICS]


# ---- running -----------------------------------------------------------------------------------------------------


@dataclass
class PaperTables:
    tables: dict[str, pd.DataFrame]  # dataset -> the long table (module docstring)
    records: dict[str, pd.DataFrame]  # dataset -> one row per retrain run
    paths: dict[str, dict[str, Path]]
    figures: dict[str, Path]


def run_tables(plan: Plan, *, progress: bool = False, log: Callable[[str], None] | None = print) -> PaperTables:
    """Run what ``plan`` lists (reused runs are read back), build the tables, write them and their figures."""
    tables: dict[str, list[dict]] = {}
    records: dict[str, list[pd.DataFrame]] = {}
    made: dict[str, str] = {}
    for case in plan.cases:
        base, prefix = plan.configs[case], f"paper-{case.tag}"
        rows = published_rows(case)
        released = next((r for r in plan.runs if r.case == case and r.kind == "released"), None)
        if released is not None and released.status == "evaluate":
            path = plan.released[case.release_key]
            evaluate_checkpoint(
                path,
                crf=base.eval.crf,
                preset=case.preset,
                overrides=released_overrides(base),
                run_name=released.name,
                results_dir=plan.results_dir,
                overwrite=plan.overwrite,
            )
            if log:
                log(f"released checkpoint {path.name}: evaluated into {released.name}")
        rows.append(
            released_row(
                case, None if released is None else runs_dir(plan.results_dir) / released.name, plan.released_folder
            )
        )
        for fid in plan.fidelities:
            recs = run_variants(
                base,
                [fidelity_variant(fid)],
                plan.seeds,
                prefix=prefix,
                results_dir=plan.results_dir,
                reuse=plan.reuse,
                overwrite=plan.overwrite,
                progress=progress,
                made=made,
                log=log,
            )
            recs = pd.DataFrame(
                [{**r, **selected_record(runs_dir(plan.results_dir) / r["run"])} for r in recs.to_dict("records")]
            )
            recs.insert(0, "backbone", case.backbone)
            rows.append(retrain_row(case, fid, recs))
            records.setdefault(case.dataset, []).append(recs)
        tables.setdefault(case.dataset, []).extend(rows)
    out = PaperTables(
        {d: pd.DataFrame(r) for d, r in tables.items()},
        {d: pd.concat(r, ignore_index=True) for d, r in records.items()},
        {},
        {},
    )
    for dataset, table in out.tables.items():
        out.paths[dataset] = write_table(table, out.records[dataset], dataset=dataset, plan=plan)
        out.figures[dataset] = paper_dots(
            figure_points(table, out.records[dataset]),
            figures_dir(plan.results_dir) / f"05_paper_{file_tag(dataset)}.png",
            metrics=COLS,
            labels=METRIC_LABELS,
            title=f"paper table, {dataset}",
        )
    return out


def _probe_numbers(metrics: dict) -> dict[str, float]:
    """The four numbers of an evaluate_model output: with DenseCRF where it ran (the STEGO protocol)."""
    crf = bool(metrics.get("eval", {}).get("crf", False))
    return {col: _num(metrics.get(f"{probe}_crf" if crf else probe, {}).get(key)) for col, probe, key in METRICS}


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def selected_record(run_dir: Path) -> dict:
    """The run's release-selected checkpoint (``metrics.json`` key ``release_selected``), NaN where it has none;
    plus the device from its provenance."""
    run = read_run(Path(run_dir))
    sel = (run["metrics"] or {}).get("release_selected")
    out = {
        "device": (run["provenance"] or {}).get("device"),
        "selected": None,
        "selected_after": None,
        "selected_checkpoint": None,
        **{f"selected_{c}": float("nan") for c in COLS},
    }
    if sel:
        out.update(
            selected=sel["label"],
            selected_after=sel["after_iterations"],
            selected_checkpoint=sel["checkpoint"],
            **{f"selected_{c}": v for c, v in _probe_numbers(sel["metrics"]).items()},
        )
    return out


def _row(case: Case, row: str, method: str, **values) -> dict:
    out = {
        "dataset": case.dataset,
        "backbone": case.backbone,
        "preset": case.preset,
        "row": row,
        "method": method,
        "n": 0,
        **{k: float("nan") for c in COLS for k in (c, f"{c}_std")},
        "selected": "n/a",
        **{k: float("nan") for c in COLS for k in (f"selected_{c}", f"selected_{c}_std")},
        "n_selected": 0,
        "status": "",
        "source": "",
        "note": "",
        "seeds": "",
        "runs": "",
        "iterations": "",
        "eval_images": "",
        "crf": None,
        "wall_time_s": float("nan"),
        "device": "",
        "weights": "",
        "git_commit": "",
        "git_dirty": None,
    }
    out.update(values)
    return out


def published_rows(case: Case) -> list[dict]:
    """One row per method ANCHORS.md lists for the case (cluster and linear probe side by side)."""
    pub = anchors.published(dataset_base(case.dataset), backbone=case.backbone)
    if pub.empty:
        return [
            _row(
                case,
                "published",
                "none",
                status="none",
                note=f"nobody publishes numbers for {case.dataset} with {case.backbone}",
            )
        ]
    rows = []
    for method, g in pub.groupby("method", sort=False):
        values = {}
        for probe in ("cluster", "linear"):
            r = g[g["probe"] == probe]
            if len(r):
                values[f"{probe}_acc"], values[f"{probe}_miou"] = r.iloc[0]["accuracy"], r.iloc[0]["mIoU"]
        rows.append(
            _row(
                case,
                "published",
                method,
                n=1,
                **values,
                status=_joined(g["status"]),
                source=_joined(g["source"]),
                note=_joined(n for n in g["note"] if n),
                crf=_joined(g["crf"]),
            )
        )
    return rows


def released_row(case: Case, run_dir: Path | None, folder: str | None) -> dict:
    """The released checkpoint evaluated here (read back from its run folder), or why there is none."""
    if run_dir is None:
        if case.dataset == "synthetic":
            why = "no released checkpoint exists for the synthetic world"
        elif folder is None:
            why = "not evaluated: no released_checkpoints folder given"
        else:
            why = f"no .ckpt in {folder} is a released checkpoint of {case.release_key}"
        return _row(case, "released checkpoint", "authors' checkpoint", status="none", note=why)
    run = read_run(run_dir)
    m, prov = run["metrics"]["last_step"], run["provenance"] or {}
    return _row(
        case,
        "released checkpoint",
        "authors' checkpoint",
        n=1,
        **_probe_numbers(m),
        status="evaluated here",
        source=run["metrics"]["checkpoint"],
        runs=run_dir.name,
        eval_images=m["eval"]["images"],
        crf=m["eval"]["crf"],
        wall_time_s=prov.get("wall_time_s"),
        device=prov.get("device", ""),
        weights=prov.get("backbone_weights", ""),
        git_commit=prov.get("git", {}).get("commit", "unknown"),
        git_dirty=prov.get("git", {}).get("dirty"),
    )


def _mean_std(values: pd.Series) -> tuple[float, float]:
    v = values.dropna()
    return (float(v.mean()) if len(v) else float("nan"), float(v.std(ddof=1)) if len(v) > 1 else float("nan"))


def retrain_row(case: Case, fidelity: str, recs: pd.DataFrame) -> dict:
    """Mean ± sample std over the seeds' run folders: last step, and the release-selected checkpoint where the
    runs have one."""
    values = {}
    for c in COLS:
        values[c], values[f"{c}_std"] = _mean_std(recs[c])
        values[f"selected_{c}"], values[f"selected_{c}_std"] = _mean_std(recs[f"selected_{c}"])
    chosen = recs["selected"].dropna()
    return _row(
        case,
        f"{fidelity} retrain",
        "DepthG (this project)",
        n=len(recs),
        **values,
        selected=_joined(chosen) if len(chosen) else NOT_SELECTED[fidelity],
        n_selected=len(chosen),
        status=f"trained here ({len(recs)} seeds)",
        source=_joined(recs["run"]),
        seeds=_joined(recs["seed"]),
        runs=_joined(recs["run"]),
        iterations=_joined(recs["iterations"]),
        eval_images=_joined(recs["eval_images"]),
        crf=bool(recs["crf"].all()),
        wall_time_s=float(recs["wall_time_s"].sum()),
        device=_joined(recs["device"]),
        weights=_joined(recs["weights"]),
        git_commit=_joined(recs["git_commit"]),
        git_dirty=bool(recs["git_dirty"].fillna(True).any()),
    )


# ---- display and files -------------------------------------------------------------------------------------------


def _cell(row: pd.Series, col: str) -> str:
    mean, std = row[col], row[f"{col}_std"] if f"{col}_std" in row else float("nan")
    if row["row"] == "published" and pd.isna(mean):
        return "not retrieved (X)" if "X" in str(row["status"]) else "–"
    return _pm(float(mean), float(std))


def _selected_cells(row: pd.Series) -> tuple[str, str]:
    if not str(row["row"]).endswith("retrain"):
        return "n/a", "n/a"
    if not row["n_selected"]:
        return row["selected"], "n/a"
    part = "" if row["n_selected"] == row["n"] else f" ({row['n_selected']} of {row['n']} seeds)"
    return tuple(
        f"{_cell(row, f'selected_{probe}_acc')} / {_cell(row, f'selected_{probe}_miou')}{part}"
        for probe in ("cluster", "linear")
    )


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: last-step metrics as 'mean ± std', the release-selected ones beside them,
    status and source, and where each row comes from."""
    rows = []
    for _, r in table.iterrows():
        sel = _selected_cells(r)
        rows.append(
            {
                "backbone": r["backbone"],
                "row": r["row"],
                "method": r["method"],
                **{METRIC_LABELS[c]: _cell(r, c) for c in COLS},
                "release-selected cluster Acc / mIoU": sel[0],
                "release-selected linear Acc / mIoU": sel[1],
                "status": r["status"],
                "source / note": "; ".join(x for x in (r["source"], r["note"]) if x),
                "seeds": r["seeds"],
                "wall time (runs summed)": "" if pd.isna(r["wall_time_s"]) else f"{r['wall_time_s']:.0f} s",
                "device": r["device"],
                "weights": r["weights"],
                "git": str(r["git_commit"])[:12],
            }
        )
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, records: pd.DataFrame, *, dataset: str, plan: Plan) -> dict[str, Path]:
    """results/paper_<dataset>.csv (the long table), paper_<dataset>_runs.csv (one row per retrain run) and
    paper_<dataset>.md (caption, table, notes)."""
    name = f"paper_{file_tag(dataset)}"
    root = results_root(plan.results_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"csv": root / f"{name}.csv", "runs_csv": root / f"{name}_runs.csv", "md": root / f"{name}.md"}
    write_text(paths["csv"], table.to_csv(index=False, float_format="%.4f"))
    write_text(paths["runs_csv"], records.to_csv(index=False, float_format="%.4f"))
    text = [f"# {name}", "", caption(dataset, records, plan), "", markdown(display_table(table)), ""]
    text += [f"- {n}" for n in table_notes(table, records)]
    write_text(paths["md"], "\n".join(text).rstrip() + "\n")
    return paths


def caption(dataset: str, records: pd.DataFrame, plan: Plan) -> str:
    crf = "with DenseCRF" if records["crf"].all() else "without DenseCRF (eval.crf=false)"
    cfg = next(plan.configs[c] for c in plan.cases if c.dataset == dataset)
    dirty = " (uncommitted changes)" if records["git_dirty"].fillna(True).any() else ""
    return (
        f"Main results on **{dataset}**: published numbers, the authors' released checkpoint evaluated here, "
        f"and this project's retrains at `reference` and `paper` fidelity ({_joined(records['iterations'])} "
        f"iterations of batch {cfg.data.batch_size} at {cfg.data.res} px, seeds {_joined(records['seed'])}), "
        f"evaluated on {_joined(records['eval_images'])} val images at {cfg.eval.res} px {crf}. Accuracy and "
        f"mIoU in %, mean ± sample std over seeds; cluster probe with dataset-level Hungarian matching, linear "
        f"probe by argmax. 'Last step' is the primary number (DESIGN.md §6); 'release-selected' is the "
        f"checkpoint the release's own selection picks on the evaluation split, where the run made one. Code: "
        f"git {_joined(records['git_commit'])}{dirty}."
    )


def table_notes(table: pd.DataFrame, records: pd.DataFrame) -> list[str]:
    out = [f"{r['row']}: {r['note']}" for _, r in table.iterrows() if r["row"] != "published" and r["note"]]
    for label, g in records.dropna(subset=["selected"]).groupby("selected", sort=False):
        out.append(
            f"release-selected = {label} (runs {_joined(g['run'])}, after {_joined(g['selected_after'])} iterations)"
        )
    keys = [k for s in table.loc[table["row"] == "published", "source"] if s for k in s.split("+")]
    if keys:
        out.append(
            "Published numbers (depthg.reporting.anchors, docs/ANCHORS.md): status V verified, "
            "T third-party, X not retrieved. Sources: " + anchors.expand_sources("+".join(dict.fromkeys(keys)))
        )
    return out


def figure_points(table: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Long data for :func:`depthg.reporting.plots.paper_dots`: one value per (row label, metric, kind); kinds
    "published", "released", "seed" (a retrain's last step) and "seed, release-selected"."""
    pts = []
    for _, r in table.iterrows():
        label = f"{r['method']} ({r['backbone']})" if r["row"] == "published" else f"{r['row']} ({r['backbone']})"
        kind = {"published": "published", "released checkpoint": "released"}.get(r["row"])
        if kind is None:
            continue
        pts += [(label, c, r[c], kind) for c in COLS if not pd.isna(r[c])]
    for _, r in records.iterrows():
        label = f"{r['variant']} ({r['backbone']})"
        pts += [(label, c, r[c], "seed") for c in COLS if not math.isnan(r[c])]
        pts += [
            (label, c, r[f"selected_{c}"], "seed, release-selected") for c in COLS if not math.isnan(r[f"selected_{c}"])
        ]
    return pd.DataFrame(pts, columns=["row", "metric", "value", "kind"])
