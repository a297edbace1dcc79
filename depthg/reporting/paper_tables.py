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
weights, git commit), never recomputed. Before training, :meth:`Plan.describe` states how many runs, iterations and
evaluation images the tables need and, from :func:`measure_speed` (a few timed iterations and images), how long.

Columns of the long table (one row per table row): dataset, backbone, preset, row, method, the four metrics
(``cluster_acc`` ... ``linear_miou``) with ``_std``, ``n``, ``selected`` (what was selected, or why nothing) with
``selected_<metric>`` and ``_std`` and ``n_selected``, status, source, note, seeds, runs, iterations, eval_images,
crf, wall_time_s (summed over the row's runs), device, weights, git_commit, git_dirty.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from depthg.config import Config, check_fidelity
from depthg.data.pairs import build_eval_set
from depthg.errors import ConfigError, WeightsError
from depthg.evaluation.evaluate import evaluate_checkpoint, evaluate_model
from depthg.evaluation.released import released_architecture, released_hparams
from depthg.files import file_sha256, write_text
from depthg.model.weights import is_released_checkpoint, read_checkpoint
from depthg.paths import dataset_base, figures_dir, file_tag, results_root, runs_dir
from depthg.presets import PAPER_PRESETS
from depthg.reporting import anchors
from depthg.reporting.ablation import (
    METRIC_LABELS,
    METRICS,
    Variant,
    _finished,
    _joined,
    _pm,
    _resumable,
    markdown,
    run_name,
    run_variants,
)
from depthg.reporting.plots import paper_dots
from depthg.runs import read_run
from depthg.training.train import train

ROWS = ("published", "released checkpoint", "reference retrain", "paper retrain")
FIDELITIES = ("reference", "paper")
NOT_SELECTED = {"paper": "not selected (paper fidelity)",
                "reference": "not selected (the run's metrics.json has no release_selected entry)"}
COLS = [c for c, _, _ in METRICS]


@dataclass(frozen=True)
class Case:
    """One (dataset, backbone) of the paper and the preset that trains it."""

    dataset: str
    backbone: str
    preset: str

    @property
    def tag(self) -> str:
        """File-safe: potsdam-vits8, cocostuff27-vitb8, synthetic-vitt8."""
        size, patch = self.backbone.removeprefix("vit_").split("_patch")
        return f"{file_tag(self.dataset)}-vit{size[0]}{patch}"

    @property
    def release_key(self) -> tuple[str, str]:
        """(dataset, backbone) as a released checkpoint names them (potsdamraw is Potsdam)."""
        return ("potsdam" if self.dataset == "potsdamraw" else self.dataset), self.backbone


def paper_cases(dataset: str, backbones: Iterable[str] | None = None) -> list[Case]:
    """The cases of ``dataset`` ("all": every paper dataset; "synthetic": its preset), optionally only ``backbones``."""
    if dataset == "synthetic":
        out = [Case("synthetic", "vit_tiny_patch8", "synthetic")]
    else:
        base = "potsdam" if dataset == "potsdamraw" else dataset
        out = [Case(dataset if dataset != "all" else d, b, p) for (d, b), p in PAPER_PRESETS.items()
               if dataset == "all" or d == base]
    if not out:
        valid = sorted({d for d, _ in PAPER_PRESETS} | {"synthetic", "potsdamraw", "all"})
        raise ConfigError(f"dataset {dataset!r} has no paper table; valid: {', '.join(valid)}.")
    backbones = list(backbones or [])
    chosen = [c for c in out if not backbones or c.backbone in backbones]
    if not chosen:
        raise ConfigError(f"backbones {backbones} do not occur in the paper tables of {dataset!r}; valid: "
                          f"{', '.join(sorted({c.backbone for c in out}))}.")
    return chosen


def fidelity_variant(fidelity: str) -> Variant:
    check_fidelity(fidelity, "fidelities")
    return Variant(fidelity, f"{fidelity} retrain", (("fidelity", fidelity),), f"every aspect {fidelity}")


# ---- released checkpoints ----------------------------------------------------------------------------------------

def released_index(folder: str | Path | None) -> dict[tuple[str, str], Path]:
    """(dataset, backbone) -> the authors' .ckpt in ``folder``, read from each file's hyper-parameters (dataset) and
    tensor shapes (backbone). Files that are no released checkpoint are skipped; two for one key are an error."""
    if not folder:
        return {}
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"released_checkpoints={str(folder)!r} is not a folder; give the folder holding the "
                          f"authors' .ckpt files (or None).")
    out: dict[tuple[str, str], Path] = {}
    for path in sorted(folder.glob("*.ckpt")):
        obj = read_checkpoint(path)
        if not is_released_checkpoint(obj):
            continue
        hparams = released_hparams(obj)
        try:
            arch, _ = released_architecture(obj["state_dict"], hparams, path)
        except WeightsError:
            continue  # e.g. a linear-head checkpoint: not one of the paper's models
        key = (hparams.get("dataset_name"), arch["backbone"])
        if key in out:
            raise ConfigError(f"{out[key]} and {path} are both released checkpoints of {key}; keep one in {folder}.")
        out[key] = path
    return out


def _released_overrides(cfg: Config) -> dict:
    """The retrains' data, evaluation and device settings as overrides, so the checkpoint is evaluated on the same
    images with the same protocol (its architecture comes from the file)."""
    d = cfg.to_dict()
    over = {f"{section}.{k}": v for section in ("data", "eval") for k, v in d[section].items()}
    over.update({"train.device": cfg.train.device, "train.threads": cfg.train.threads})
    return over


def _released_finished(run_dir: Path, path: Path, cfg: Config) -> bool:
    run = read_run(run_dir)
    if not run["metrics"] or not run["config"] or run["metrics"].get("checkpoint") != str(path):
        return False
    same = all(run["config"][s] == cfg.to_dict()[s] for s in ("data", "eval"))
    return same and file_sha256(path)[:12] in str((run["provenance"] or {}).get("backbone_weights"))


# ---- the plan: what runs, and how long ---------------------------------------------------------------------------

@dataclass
class Speed:
    """Measured on this device: set-up per run, seconds per training iteration and per evaluation image."""

    device: str
    setup_s: float
    iteration_s: float
    image_s: float  # with the configured CRF
    image_nocrf_s: float  # periodic validation runs without CRF (METHOD.md §6.1)
    measured_on: str

    def line(self) -> str:
        return (f"measured on {self.device} ({self.measured_on}): {self.setup_s:.1f} s set-up per run, "
                f"{self.iteration_s:.3f} s per iteration, {self.image_s:.3f} s per evaluation image "
                f"({self.image_nocrf_s:.3f} s without CRF)")


@dataclass
class PlannedRun:
    case: Case
    kind: str  # "retrain" | "released"
    name: str
    cfg: Config
    status: str  # "train" | "resume" | "reuse" | "evaluate"
    iterations: int  # to train (resumed runs counted in full: an upper bound)
    eval_images: int  # evaluation images, including periodic validation
    eval_nocrf_images: int = 0


@dataclass
class Plan:
    cases: list[Case]
    configs: dict[Case, Config]
    seeds: list[int]
    fidelities: list[str]
    released: dict[tuple[str, str], Path]
    released_folder: str | None
    results_dir: str | None
    reuse: bool
    runs: list[PlannedRun] = field(default_factory=list)

    def counts(self) -> str:
        """Deterministic: how many runs, iterations and evaluation images the tables need."""
        todo = [r for r in self.runs if r.status != "reuse"]
        train_runs = [r for r in todo if r.kind == "retrain"]
        return (f"{len(self.cases)} table case(s) ({', '.join(c.tag for c in self.cases)}): {len(self.runs)} runs "
                f"({sum(r.kind == 'retrain' for r in self.runs)} retrains = {len(self.fidelities)} fidelities x "
                f"{len(self.seeds)} seeds per case, {sum(r.kind == 'released' for r in self.runs)} released "
                f"checkpoint evaluations); to do: {len(todo)} runs, {sum(r.iterations for r in train_runs)} "
                f"training iterations, {sum(r.eval_images + r.eval_nocrf_images for r in todo)} evaluation images")

    def estimate_s(self, speed: Speed) -> float:
        todo = [r for r in self.runs if r.status != "reuse"]
        return sum(speed.setup_s * (r.kind == "retrain") + r.iterations * speed.iteration_s +
                   r.eval_images * speed.image_s + r.eval_nocrf_images * speed.image_nocrf_s for r in todo)

    def describe(self, speed: Speed | None = None) -> str:
        lines = [self.counts()]
        for r in self.runs:
            lines.append(f"  {r.name}: {r.status} ({r.iterations} iterations, {r.eval_images} evaluation images"
                         f"{f' + {r.eval_nocrf_images} validation images' if r.eval_nocrf_images else ''})")
        if speed is not None:
            lines += [speed.line(), f"estimated wall time: {human_time(self.estimate_s(speed))}"]
        return "\n".join(lines)


def human_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 48 * 3600 else f"{s / 86400:.1f} days"


def _eval_images(cfg: Config) -> int:
    n = len(build_eval_set(cfg))
    return min(n, cfg.eval.max_images) if cfg.eval.max_images else n


def plan_tables(cases: list[Case], configure: Callable[..., Config], *, seeds: Iterable[int],
                fidelities: Iterable[str] = FIDELITIES, released_checkpoints: str | Path | None = None,
                results_dir: str | None = None, reuse: bool = False) -> Plan:
    """Every run the tables of ``cases`` need. ``configure(dataset, preset=...)`` gives a case's config with the
    user's parameters applied (the notebook and CLI pass :func:`depthg.notebook.resolve_config` with them bound)."""
    seeds, fidelities = [int(s) for s in seeds], [check_fidelity(f, "fidelities") for f in fidelities]
    assert seeds and fidelities, "need at least one seed and one fidelity"
    configs = {c: configure(c.dataset, preset=c.preset) for c in cases}
    plan = Plan(cases, configs, seeds, fidelities, released_index(released_checkpoints),
                None if released_checkpoints is None else str(released_checkpoints), results_dir, reuse)
    for case in cases:
        base, prefix = configs[case], f"paper-{case.tag}"
        images = _eval_images(base)
        path = plan.released.get(case.release_key)
        if path is not None:
            name = f"{prefix}-released-{file_tag(path.stem)}"
            done = reuse and _released_finished(runs_dir(results_dir) / name, path, base)
            plan.runs.append(PlannedRun(case, "released", name, base, "reuse" if done else "evaluate", 0, images))
        for fid in fidelities:
            v = fidelity_variant(fid)
            for seed in seeds:
                cfg, name = v.config(base, seed), run_name(prefix, v, seed)
                run_dir = runs_dir(results_dir) / name
                status = ("reuse" if reuse and _finished(run_dir, cfg) else
                          "resume" if reuse and _resumable(run_dir, cfg) else "train")
                val = cfg.train.val_every and cfg.train.iterations // cfg.train.val_every
                plan.runs.append(PlannedRun(case, "retrain", name, cfg, status, cfg.train.iterations, images,
                                            val * images))
    return plan


def measure_speed(cfg: Config, *, iterations: int = 3, images: int = 4) -> Speed:
    """Time a throw-away run of ``cfg``: ``iterations`` training iterations (seconds per iteration from its log,
    the rest of its wall time counted as set-up) and ``images`` evaluation images with and without CRF."""
    warm = cfg.with_overrides({"train.iterations": iterations, "train.log_every": 1, "train.val_every": 0,
                               "train.checkpoint_every": iterations, "eval.max_images": images})
    with tempfile.TemporaryDirectory(prefix="depthg-warmup-") as tmp:
        result = train(warm, run_name="warmup", results_dir=tmp, progress=False)
        log = read_run(result.run_dir)["log"]
        steady = [warm.data.batch_size / r["images_per_s"] for r in log[1:] if r.get("images_per_s")] or \
                 [result.wall_time_s / iterations]  # the first logged iteration carries the start-up
        per_it = sorted(steady)[len(steady) // 2]
        nocrf = evaluate_model(result.model, warm, crf=False, progress=False)["eval"]
        withcrf = evaluate_model(result.model, warm, progress=False)["eval"] if warm.eval.crf else nocrf
        device = str(next(result.model.head.parameters()).device)
    return Speed(device=device, setup_s=max(result.wall_time_s - iterations * per_it, 0.0), iteration_s=per_it,
                 image_s=withcrf["seconds"] / max(withcrf["images"], 1),
                 image_nocrf_s=nocrf["seconds"] / max(nocrf["images"], 1),
                 measured_on=f"preset {cfg.name}, {iterations} iterations of batch {cfg.data.batch_size} at "
                             f"{cfg.data.res} px, {images} images at {cfg.eval.res} px")


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
            evaluate_checkpoint(path, crf=base.eval.crf, preset=case.preset, overrides=_released_overrides(base),
                                run_name=released.name, results_dir=plan.results_dir)
            if log:
                log(f"released checkpoint {path.name}: evaluated into {released.name}")
        rows.append(released_row(case, None if released is None else runs_dir(plan.results_dir) / released.name,
                                 plan.released_folder))
        for fid in plan.fidelities:
            recs = run_variants(base, [fidelity_variant(fid)], plan.seeds, prefix=prefix, results_dir=plan.results_dir,
                                reuse=plan.reuse, progress=progress, made=made, log=log)
            recs = pd.DataFrame([{**r, **selected_record(runs_dir(plan.results_dir) / r["run"])}
                                 for r in recs.to_dict("records")])
            recs.insert(0, "backbone", case.backbone)
            rows.append(retrain_row(case, fid, recs))
            records.setdefault(case.dataset, []).append(recs)
        tables.setdefault(case.dataset, []).extend(rows)
    out = PaperTables({d: pd.DataFrame(r) for d, r in tables.items()},
                      {d: pd.concat(r, ignore_index=True) for d, r in records.items()}, {}, {})
    for dataset, table in out.tables.items():
        out.paths[dataset] = write_table(table, out.records[dataset], dataset=dataset, plan=plan)
        out.figures[dataset] = paper_dots(figure_points(table, out.records[dataset]),
                                          figures_dir(plan.results_dir) / f"05_paper_{file_tag(dataset)}.png",
                                          metrics=COLS, labels=METRIC_LABELS, title=f"paper table, {dataset}")
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
    out = {"device": (run["provenance"] or {}).get("device"), "selected": None, "selected_after": None,
           "selected_checkpoint": None, **{f"selected_{c}": float("nan") for c in COLS}}
    if sel:
        out.update(selected=sel["label"], selected_after=sel["after_iterations"],
                   selected_checkpoint=sel["checkpoint"],
                   **{f"selected_{c}": v for c, v in _probe_numbers(sel["metrics"]).items()})
    return out


def _row(case: Case, row: str, method: str, **values) -> dict:
    out = {"dataset": case.dataset, "backbone": case.backbone, "preset": case.preset, "row": row, "method": method,
           "n": 0, **{k: float("nan") for c in COLS for k in (c, f"{c}_std")}, "selected": "n/a",
           **{k: float("nan") for c in COLS for k in (f"selected_{c}", f"selected_{c}_std")}, "n_selected": 0,
           "status": "", "source": "", "note": "", "seeds": "", "runs": "", "iterations": "", "eval_images": "",
           "crf": None, "wall_time_s": float("nan"), "device": "", "weights": "", "git_commit": "", "git_dirty": None}
    out.update(values)
    return out


def published_rows(case: Case) -> list[dict]:
    """One row per method ANCHORS.md lists for the case (cluster and linear probe side by side)."""
    pub = anchors.published(dataset_base(case.dataset), backbone=case.backbone)
    if pub.empty:
        return [_row(case, "published", "none", status="none",
                     note=f"nobody publishes numbers for {case.dataset} with {case.backbone}")]
    rows = []
    for method, g in pub.groupby("method", sort=False):
        values = {}
        for probe in ("cluster", "linear"):
            r = g[g["probe"] == probe]
            if len(r):
                values[f"{probe}_acc"], values[f"{probe}_miou"] = r.iloc[0]["accuracy"], r.iloc[0]["mIoU"]
        rows.append(_row(case, "published", method, n=1, **values, status=_joined(g["status"]),
                         source=_joined(g["source"]), note=_joined(n for n in g["note"] if n),
                         crf=_joined(g["crf"])))
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
    return _row(case, "released checkpoint", "authors' checkpoint", n=1, **_probe_numbers(m),
                status="evaluated here", source=run["metrics"]["checkpoint"], runs=run_dir.name,
                eval_images=m["eval"]["images"], crf=m["eval"]["crf"], wall_time_s=prov.get("wall_time_s"),
                device=prov.get("device", ""), weights=prov.get("backbone_weights", ""),
                git_commit=prov.get("git", {}).get("commit", "unknown"), git_dirty=prov.get("git", {}).get("dirty"))


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
    return _row(case, f"{fidelity} retrain", "DepthG (this project)", n=len(recs), **values,
                selected=_joined(chosen) if len(chosen) else NOT_SELECTED[fidelity], n_selected=len(chosen),
                status=f"trained here ({len(recs)} seeds)", source=_joined(recs["run"]), seeds=_joined(recs["seed"]),
                runs=_joined(recs["run"]), iterations=_joined(recs["iterations"]),
                eval_images=_joined(recs["eval_images"]), crf=bool(recs["crf"].all()),
                wall_time_s=float(recs["wall_time_s"].sum()), device=_joined(recs["device"]),
                weights=_joined(recs["weights"]), git_commit=_joined(recs["git_commit"]),
                git_dirty=bool(recs["git_dirty"].fillna(True).any()))


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
    return tuple(f"{_cell(row, f'selected_{probe}_acc')} / {_cell(row, f'selected_{probe}_miou')}{part}"
                 for probe in ("cluster", "linear"))


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: last-step metrics as 'mean ± std', the release-selected ones beside them,
    status and source, and where each row comes from."""
    rows = []
    for _, r in table.iterrows():
        sel = _selected_cells(r)
        rows.append({"backbone": r["backbone"], "row": r["row"], "method": r["method"],
                     **{METRIC_LABELS[c]: _cell(r, c) for c in COLS},
                     "release-selected cluster Acc / mIoU": sel[0], "release-selected linear Acc / mIoU": sel[1],
                     "status": r["status"], "source / note": "; ".join(x for x in (r["source"], r["note"]) if x),
                     "seeds": r["seeds"],
                     "wall time": "" if pd.isna(r["wall_time_s"]) else f"{r['wall_time_s']:.0f} s",
                     "device": r["device"], "weights": r["weights"], "git": str(r["git_commit"])[:12]})
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
    return (f"Main results on **{dataset}**: published numbers, the authors' released checkpoint evaluated here, "
            f"and this project's retrains at `reference` and `paper` fidelity ({_joined(records['iterations'])} "
            f"iterations of batch {cfg.data.batch_size} at {cfg.data.res} px, seeds {_joined(records['seed'])}), "
            f"evaluated on {_joined(records['eval_images'])} val images at {cfg.eval.res} px {crf}. Accuracy and "
            f"mIoU in %, mean ± sample std over seeds; cluster probe with dataset-level Hungarian matching, linear "
            f"probe by argmax. 'Last step' is the primary number (DESIGN.md §6); 'release-selected' is the "
            f"checkpoint the release's own selection picks on the evaluation split, where the run made one. Code: "
            f"git {_joined(records['git_commit'])}{dirty}.")


def table_notes(table: pd.DataFrame, records: pd.DataFrame) -> list[str]:
    out = [f"{r['row']}: {r['note']}" for _, r in table.iterrows() if r["row"] != "published" and r["note"]]
    for label, g in records.dropna(subset=["selected"]).groupby("selected", sort=False):
        out.append(f"release-selected = {label} (runs {_joined(g['run'])}, after {_joined(g['selected_after'])} "
                   f"iterations)")
    keys = [k for s in table.loc[table["row"] == "published", "source"] if s for k in s.split("+")]
    if keys:
        out.append("Published numbers (depthg.reporting.anchors, from reference/ANCHORS.md): status V verified, "
                   "T third-party, X not retrieved. Sources: " + anchors.expand_sources("+".join(dict.fromkeys(keys))))
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
        pts += [(label, c, r[f"selected_{c}"], "seed, release-selected") for c in COLS
                if not math.isnan(r[f"selected_{c}"])]
    return pd.DataFrame(pts, columns=["row", "metric", "value", "kind"])


def speed_config(plan: Plan) -> Config | None:
    """The config the warm-up measures: the first run still to train (None when every run is reused)."""
    return next((r.cfg for r in plan.runs if r.kind == "retrain" and r.status != "reuse"), None)

