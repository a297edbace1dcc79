"""What the paper tables run, and how long: the cases, the runs each needs, and a measured time estimate.

A case is one (dataset, backbone) of the paper (``depthg.presets.PAPER_PRESETS``; on the synthetic world, its
preset). :func:`plan_tables` lists every run its table needs (retrains per fidelity and seed, named as the ablation
names its runs; one evaluation per authors' released checkpoint, matched by :func:`released_index`) and whether it
is trained, resumed or reused. :meth:`Plan.counts` says how many runs, iterations and evaluation images that is, and
:meth:`Plan.describe` with :func:`measure_speed` (a throw-away run: a few timed iterations and images on this
device) how long, so a user knows minutes from days before anything starts. :mod:`depthg.reporting.paper_tables`
runs the plan and builds the tables.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from depthg.config import Config, check_fidelity
from depthg.data.pairs import build_eval_set
from depthg.errors import ConfigError, WeightsError
from depthg.evaluation.evaluate import evaluate_model
from depthg.evaluation.released import released_architecture, released_hparams
from depthg.files import file_sha256
from depthg.model.weights import is_released_checkpoint, read_checkpoint
from depthg.paths import file_tag, runs_dir
from depthg.presets import PAPER_PRESETS
from depthg.reporting.ablation import Variant, _finished, _resumable, run_name
from depthg.runs import read_run
from depthg.training.train import train

FIDELITIES = ("reference", "paper")


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
        out = [
            Case(dataset if dataset != "all" else d, b, p)
            for (d, b), p in PAPER_PRESETS.items()
            if dataset == "all" or d == base
        ]
    if not out:
        valid = sorted({d for d, _ in PAPER_PRESETS} | {"synthetic", "potsdamraw", "all"})
        raise ConfigError(f"dataset {dataset!r} has no paper table; valid: {', '.join(valid)}.")
    backbones = list(backbones or [])
    chosen = [c for c in out if not backbones or c.backbone in backbones]
    if not chosen:
        raise ConfigError(
            f"backbones {backbones} do not occur in the paper tables of {dataset!r}; valid: "
            f"{', '.join(sorted({c.backbone for c in out}))}."
        )
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
        raise ConfigError(
            f"released_checkpoints={str(folder)!r} is not a folder; give the folder holding the "
            f"authors' .ckpt files (or None)."
        )
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


def released_overrides(cfg: Config) -> dict:
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
        return (
            f"measured on {self.device} ({self.measured_on}): {self.setup_s:.1f} s set-up per run, "
            f"{self.iteration_s:.3f} s per iteration, {self.image_s:.3f} s per evaluation image "
            f"({self.image_nocrf_s:.3f} s without CRF)"
        )


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
    overwrite: bool = False  # replace run folders of another config or of committed results (the main job)

    def counts(self) -> str:
        """Deterministic: how many runs, iterations and evaluation images the tables need."""
        todo = [r for r in self.runs if r.status != "reuse"]
        train_runs = [r for r in todo if r.kind == "retrain"]
        return (
            f"{len(self.cases)} table case(s) ({', '.join(c.tag for c in self.cases)}): {len(self.runs)} runs "
            f"({sum(r.kind == 'retrain' for r in self.runs)} retrains = {len(self.fidelities)} fidelities x "
            f"{len(self.seeds)} seeds per case, {sum(r.kind == 'released' for r in self.runs)} released "
            f"checkpoint evaluations); to do: {len(todo)} runs, {sum(r.iterations for r in train_runs)} "
            f"training iterations, {sum(r.eval_images + r.eval_nocrf_images for r in todo)} evaluation images"
        )

    def estimate_s(self, speed: Speed) -> float:
        todo = [r for r in self.runs if r.status != "reuse"]
        return sum(
            speed.setup_s * (r.kind == "retrain")
            + r.iterations * speed.iteration_s
            + r.eval_images * speed.image_s
            + r.eval_nocrf_images * speed.image_nocrf_s
            for r in todo
        )

    def describe(self, speed: Speed | None = None) -> str:
        lines = [self.counts()]
        for r in self.runs:
            lines.append(
                f"  {r.name}: {r.status} ({r.iterations} iterations, {r.eval_images} evaluation images"
                f"{f' + {r.eval_nocrf_images} validation images' if r.eval_nocrf_images else ''})"
            )
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


def plan_tables(
    cases: list[Case],
    configure: Callable[..., Config],
    *,
    seeds: Iterable[int],
    fidelities: Iterable[str] = FIDELITIES,
    released_checkpoints: str | Path | None = None,
    results_dir: str | None = None,
    reuse: bool = False,
    overwrite: bool = False,
) -> Plan:
    """Every run the tables of ``cases`` need. ``configure(dataset, preset=...)`` gives a case's config with the
    user's parameters applied (the notebook and CLI pass :func:`depthg.notebook.resolve_config` with them bound)."""
    seeds, fidelities = [int(s) for s in seeds], [check_fidelity(f, "fidelities") for f in fidelities]
    assert seeds and fidelities, "need at least one seed and one fidelity"
    configs = {c: configure(c.dataset, preset=c.preset) for c in cases}
    plan = Plan(
        cases,
        configs,
        seeds,
        fidelities,
        released_index(released_checkpoints),
        None if released_checkpoints is None else str(released_checkpoints),
        results_dir,
        reuse,
        overwrite=overwrite,
    )
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
                status = (
                    "reuse"
                    if reuse and _finished(run_dir, cfg)
                    else "resume"
                    if reuse and _resumable(run_dir, cfg)
                    else "train"
                )
                val = cfg.train.val_every and cfg.train.iterations // cfg.train.val_every
                plan.runs.append(
                    PlannedRun(case, "retrain", name, cfg, status, cfg.train.iterations, images, val * images)
                )
    return plan


def measure_speed(cfg: Config, *, iterations: int = 3, images: int = 4) -> Speed:
    """Time a throw-away run of ``cfg``: ``iterations`` training iterations (seconds per iteration from its log,
    the rest of its wall time counted as set-up) and ``images`` evaluation images with and without CRF."""
    warm = cfg.with_overrides(
        {
            "train.iterations": iterations,
            "train.log_every": 1,
            "train.val_every": 0,
            "train.select": "last",  # the warm-up times iterations and images, not the release's validation
            "train.checkpoint_every": iterations,
            "eval.max_images": images,
        }
    )
    with tempfile.TemporaryDirectory(prefix="depthg-warmup-") as tmp:
        result = train(warm, run_name="warmup", results_dir=tmp, progress=False)
        log = read_run(result.run_dir)["log"]
        steady = [warm.data.batch_size / r["images_per_s"] for r in log[1:] if r.get("images_per_s")] or [
            result.wall_time_s / iterations
        ]  # the first logged iteration carries the start-up
        per_it = sorted(steady)[len(steady) // 2]
        nocrf = evaluate_model(result.model, warm, crf=False, progress=False)["eval"]
        withcrf = evaluate_model(result.model, warm, progress=False)["eval"] if warm.eval.crf else nocrf
        device = str(next(result.model.head.parameters()).device)
    return Speed(
        device=device,
        setup_s=max(result.wall_time_s - iterations * per_it, 0.0),
        iteration_s=per_it,
        image_s=withcrf["seconds"] / max(withcrf["images"], 1),
        image_nocrf_s=nocrf["seconds"] / max(nocrf["images"], 1),
        measured_on=f"preset {cfg.name}, {iterations} iterations of batch {cfg.data.batch_size} at "
        f"{cfg.data.res} px, {images} images at {cfg.eval.res} px",
    )


def speed_config(plan: Plan) -> Config | None:
    """The config the warm-up measures: the first run still to train (None when every run is reused)."""
    return next((r.cfg for r in plan.runs if r.kind == "retrain" and r.status != "reuse"), None)
