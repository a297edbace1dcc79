"""The training loop: plain PyTorch, iteration-based, resumable, torchrun-ready (DESIGN.md §6; METHOD.md §2.4-2.5).

Read :func:`train` top to bottom: set-up, resume, the loop (one iteration, checks, logging, validation,
checkpoints), the run record. One iteration: frozen backbone features of the image and its kNN partner in one pass,
head, correlation terms with DFC and optional 3D-LHP (:mod:`depthg.training.step`), probes on detached codes, three
Adam optimisers (head 5e-4, probes 5e-3, no weight decay, no LR schedule, METHOD.md §2.4), then the schedules
advance (:mod:`depthg.training.schedules`, state apart from the immutable config).

Robustness: checkpoints are written atomically every ``train.checkpoint_every`` iterations and at the end;
``resume=True`` restores model, optimisers, schedule state and every RNG, and the batch order is a function of
(seed, iteration) (:class:`depthg.training.distributed.ResumableBatchSampler`), so a run killed part-way and resumed
ends with the same weights as an uninterrupted one. A non-finite loss stops the run naming the iteration and the
term; the last good checkpoint stays on disk. The finiteness of the loss terms is accumulated on the device and read
only when the loop logs or saves, so an iteration never waits for the host (a checkpoint is never written after a
non-finite iteration).

Evaluation is a later layer: :func:`train` takes an optional ``validator`` (the model -> metrics) for periodic
validation, and :func:`depthg.evaluation.experiment.train_and_evaluate` composes training with the final
evaluation.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from depthg.config import Config
from depthg.data.pairs import build_train_set
from depthg.device import DistInfo, loader_workers, resolve_device
from depthg.errors import ConfigError, TrainingError
from depthg.files import write_json
from depthg.model.backbone import backbone_spec, set_tf32
from depthg.model.segmenter import DepthGModel
from depthg.paths import claim_run_dir, runs_dir
from depthg.paths import run_name as default_run_name
from depthg.runs import provenance, run_lock, write_run
from depthg.training import checkpoints
from depthg.training.distributed import ResumableBatchSampler, barrier, init_distributed, shutdown_distributed
from depthg.training.rng import gather_rng, rng_state, seed_everything, set_rng_state
from depthg.training.schedules import Schedule
from depthg.training.selection import ReleaseSelection
from depthg.training.step import StepSettings, TrainStep

Validator = Callable[[DepthGModel], dict]  # model (eval mode) -> {"cluster": {...}, "linear": {...}}


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    checkpoint: Path
    model: DepthGModel
    best_on_validation: dict | None
    is_main: bool  # rank 0 (the process that writes files and evaluates)
    wall_time_s: float
    metrics: dict | None = None  # the last step's evaluation, filled in by the evaluation layer
    selected: list[dict] | None = None  # train.select=release: the kept checkpoints, best first (selection.py)


@dataclass
class Run:
    """The state of one training run: what it trains, where it writes, and where it stands."""

    cfg: Config
    device: torch.device
    info: DistInfo
    run_dir: Path
    model: DepthGModel
    step: TrainStep  # head + probes (+ LHP projection): everything that trains
    ddp_step: torch.nn.Module  # step, wrapped in DDP under torchrun
    optimizers: dict[str, torch.optim.Optimizer]
    schedule: Schedule
    generator: torch.Generator  # FPS starts, random samples, negatives
    start: int = 0  # first iteration of this process (> 0 when resumed)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"


def run_directory(cfg: Config, run_name: str | None, results_dir: str | None, *, kind: str | None = None) -> Path:
    """The one place a training run's folder is named: ``run_name``, else :func:`depthg.paths.run_name`."""
    name = run_name or default_run_name(cfg.data.dataset, cfg.name, cfg.train.seed, kind=kind)
    return runs_dir(results_dir) / name


class EpochPairs(torch.utils.data.Dataset):
    """TrainPairs keyed by ``(index, epoch)`` as :class:`ResumableBatchSampler` yields them: the epoch seeds the
    kNN partner draw inside whichever worker loads the item."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        self.pairs.set_epoch(epoch)
        return self.pairs[index]


def make_schedule(cfg: Config) -> Schedule:
    """Immutable schedule hyper-parameters; the changing values live in its state (METHOD.md §3.5, §9 #25)."""
    return Schedule(
        dfc_weight=cfg.loss.depth_feat_weight,
        dfc_shift=cfg.loss.depth_feat_shift,
        samples=cfg.loss.feature_samples,
        step_unit=cfg.fidelity.step_unit,
        rules=cfg.schedule,
    )


def build_training(cfg: Config, device: torch.device) -> tuple[DepthGModel, TrainStep, dict]:
    """The model, its trainable part and the three Adam optimisers (METHOD.md §2.4).

    The LHP projection trains with the head in paper fidelity; in reference wiring it is in no optimiser, as in the
    release (its configure_optimizers lists the net and the probes only, METHOD.md §5.2), so it keeps its
    initialisation."""
    model = DepthGModel.from_config(cfg.model, autocast=cfg.train.bf16).to(device)
    step = TrainStep(
        model.head, model.cluster_probe, model.linear_probe, StepSettings.from_config(cfg), cfg.model.dim
    ).to(device)
    head_params = list(model.head.parameters())
    if step.lhp_projection is not None and cfg.fidelity.lhp_wiring == "paper":
        head_params += list(step.lhp_projection.parameters())
    optimizers = {
        "head": torch.optim.Adam(head_params, lr=cfg.train.lr),
        "cluster_probe": torch.optim.Adam(model.cluster_probe.parameters(), lr=cfg.train.probe_lr),
        "linear_probe": torch.optim.Adam(model.linear_probe.parameters(), lr=cfg.train.probe_lr),
    }
    return model, step, optimizers


def iteration(
    run: Run, batch: dict[str, torch.Tensor], mark: Callable[[str], None] | None = None
) -> dict[str, torch.Tensor]:
    """The compute of one iteration on a batch already on the device: every loss term, detached, after the step.

    ``mark(phase)`` is called at the end of each phase ("backbone", "head_losses", "optimiser"), for the GPU
    benchmark's time split (depthg.bench.gpu); training passes none."""
    mark = mark or (lambda phase: None)
    B = batch["img"].shape[0]
    # one backbone pass over image and partner together (frozen, no_grad, bf16 on CUDA)
    feats, _ = run.model.features(torch.cat([batch["img"], batch["img_pos"]]))
    mark("backbone")
    out = run.ddp_step(
        feats[:B],
        feats[B:],
        batch["depth"],
        batch["depth_pos"],
        batch["label"],
        samples=run.schedule.samples,
        dfc_weight=run.schedule.dfc_weight,
        dfc_shift=run.schedule.dfc_shift,
        generator=run.generator,
    )
    for opt in run.optimizers.values():
        opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    mark("head_losses")
    for opt in run.optimizers.values():
        opt.step()
    mark("optimiser")
    return {k: v.detach() for k, v in out.items()}


class FiniteWatch:
    """Remembers, on the device, the first iteration whose loss terms were not all finite and which terms.

    ``update`` launches a few tiny kernels and never synchronises; ``check`` (at logging and checkpoint time) reads
    the flag, agreed across torchrun ranks, and raises the run's error.
    """

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.terms: list[str] = []
        self.bad: torch.Tensor | None = None

    def update(self, out: dict[str, torch.Tensor], it: int) -> None:
        if self.bad is None:
            self.terms = list(out)
            self.bad = torch.zeros(len(out), dtype=torch.bool, device=self.first.device)
        finite = torch.stack([torch.isfinite(v).all() for v in out.values()])
        new = (self.first < 0) & ~finite.all()
        self.first = torch.where(new, torch.full_like(self.first, it), self.first)
        self.bad = torch.where(new, ~finite, self.bad)

    def check(self, info: DistInfo, last_good: Path) -> None:
        first = self.first.clone()
        if info.enabled:  # any rank's failure stops every rank (-1 = none; MAX picks the failing rank's iteration)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MAX)
        if int(first) < 0:
            return
        mine = int(self.first) >= 0
        where = (
            f"term(s) {', '.join(t for t, b in zip(self.terms, self.bad.tolist()) if b)}" if mine else "another rank"
        )
        raise_diverged(info, last_good, int(first), f"non-finite loss at iteration {int(first)} in {where}")


def raise_diverged(info: DistInfo, last_good: Path, bad_iteration: int, what: str) -> None:
    """Keep the last checkpoint whose weights gave finite losses (rank 0), and stop every rank saying so."""
    kept = checkpoints.keep_last_good(last_good, bad_iteration) if info.is_main else last_good
    barrier(info)
    raise TrainingError(
        f"{what}; the last good checkpoint is {kept if kept else 'not written yet'}. Lower the "
        f"learning rate (a --resume may change train.lr and train.probe_lr) or check the inputs of "
        f"that batch."
    )


def save_checkpoint(run: Run, iteration: int) -> None:
    # weights that overflowed although the loss that produced them was finite are never saved
    finite = torch.stack([torch.isfinite(p).all() for p in run.step.parameters()]).all().to(torch.int32)
    if run.info.enabled:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if not int(finite):
        raise_diverged(run.info, run.checkpoint, iteration, f"non-finite weights after iteration {iteration - 1}")
    rng = gather_rng(run.generator, run.info)  # every rank takes part; rank 0 writes
    if run.info.is_main:
        checkpoints.keep_previous(run.checkpoint)
        checkpoints.save_training_state(
            run.checkpoint,
            cfg=run.cfg,
            model=run.model,
            step=run.step,
            optimizers=run.optimizers,
            schedule=run.schedule.state_dict(),
            iteration=iteration,
            rng=rng,
        )


def record_resume(run_dir: Path, start: int, changes: dict) -> None:
    """Append a resumption's config changes to ``resumes.json`` (a list, one entry per resumption with changes)."""
    path = run_dir / "resumes.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    write_json(
        path,
        entries
        + [{"from_iteration": start, "changes": changes, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}],
    )


def truncate_log(path: Path, start: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint, so the resumed log has each iteration once.

    A run killed in the middle of a write leaves a torn last line (no newline, half a record): it is dropped with
    the rest of what came after the checkpoint. A line that does not parse anywhere else is damage, not a kill.
    """
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines.pop()  # torn: every record is written with its newline, so a line without one was cut off
    keep = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise TrainingError(
                f"--resume: {path} line {number} is not a JSON record ({line[:60]!r}); delete that "
                f"line or start without --resume."
            ) from None
        if record["iteration"] < start:
            keep.append(line)
    path.write_text("".join(ln + "\n" for ln in keep))


def train(
    cfg: Config,
    *,
    run_name: str | None = None,
    results_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    validator: Validator | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``cfg`` into ``results/runs/<run_name>/``; ``validator`` runs every ``train.val_every`` iterations.

    A folder holding another config's run or committed results is refused unless ``overwrite``
    (:func:`depthg.paths.claim_run_dir`)."""
    t0 = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_tf32(cfg.train.tf32)
    requested = cfg.train.device
    info = init_distributed(
        "cuda" if requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available()) else "cpu"
    )
    try:
        # rank 0 holds the run folder: a second train/--resume/eval on it is refused, naming this process
        with run_lock(run_directory(cfg, run_name, results_dir)) if info.is_main else contextlib.nullcontext():
            return _train(
                cfg,
                resolve_device(requested, info),
                info,
                run_name,
                results_dir,
                resume,
                progress,
                validator,
                t0,
                overwrite,
            )
    finally:
        shutdown_distributed()


def _train(
    cfg: Config,
    device: torch.device,
    info: DistInfo,
    run_name: str | None,
    results_dir: str | None,
    resume: bool,
    progress: bool,
    validator: Validator | None,
    t0: float,
    overwrite: bool,
) -> TrainResult:
    # ---- set-up: data, model, optimisers, schedule; per-rank seeds, so dropout and sampling differ across ranks
    seed = cfg.train.seed
    run_dir = claim_run_dir(
        run_directory(cfg, run_name, results_dir), cfg.to_dict(), resume=resume, overwrite=overwrite
    )
    seed_everything(seed + info.rank)
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + info.rank)
    backbone_spec(cfg.model.backbone)  # an unknown name is reported as such, not as the kNN file it would need
    dataset = build_train_set(cfg)  # checks model.n_classes against the dataset
    seed_everything(seed + info.rank)  # model init independent of what building the dataset consumed
    model, step, optimizers = build_training(cfg, device)
    run = Run(
        cfg=cfg,
        device=device,
        info=info,
        run_dir=run_dir,
        model=model,
        step=step,
        ddp_step=DistributedDataParallel(step) if info.enabled else step,
        optimizers=optimizers,
        schedule=make_schedule(cfg).start(),
        generator=generator,
    )

    # ---- resume: weights, optimisers, schedule state and this rank's RNG streams from the last checkpoint
    changes: dict = {}  # adjustable keys (learning rates) this resumption changes
    if resume:
        if not run.checkpoint.is_file():
            raise TrainingError(f"--resume: no checkpoint at {run.checkpoint}; start without --resume.")
        state = checkpoints.load_training_state(run.checkpoint, cfg, map_location=device)
        checkpoints.restore_training_state(state, model=model, step=step, optimizers=optimizers, path=run.checkpoint)
        run.schedule.load_state_dict(state["schedule"])
        changes = checkpoints.resume_changes(state, cfg)
        for name, opt in optimizers.items():  # the checkpoint's optimiser state carries the old learning rates
            for group in opt.param_groups:
                group["lr"] = cfg.train.lr if name == "head" else cfg.train.probe_lr
        if len(state["rng"]) == info.world:
            set_rng_state(state["rng"][info.rank], generator)
        run.start = state["iteration"]
    if info.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(run.run_dir / "config.json")
        if resume:
            truncate_log(run.log_path, run.start)
            if changes:  # what this resumption changed, beside the run's log
                record_resume(run.run_dir, run.start, changes)
        elif run.log_path.exists():
            run.log_path.unlink()

    # ---- the batch order is a function of (seed, iteration): a resumed run draws the batches it would have drawn
    total = cfg.train.iterations
    sampler = ResumableBatchSampler(
        len(dataset),
        cfg.data.batch_size,
        seed=seed,
        start=run.start,
        total=total,
        rank=info.rank,
        world=info.world,
        drop_last=cfg.fidelity.partial_batch == "paper",
    )
    selection = (
        ReleaseSelection(run.run_dir / "checkpoints", cfg.train.select_metric, cfg.train.select_top_k, start=run.start)
        if cfg.train.select == "release" and info.is_main
        else None
    )
    val_due = validation_schedule(cfg, sampler.batches_per_epoch)
    loader = torch.utils.data.DataLoader(
        EpochPairs(dataset),
        batch_sampler=sampler,
        num_workers=loader_workers(cfg.data.num_workers),
        pin_memory=device.type == "cuda",
        # its own generator: creating the iterator must not draw from the
        # global RNG, or a resumed run's dropout would drift
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=loader_workers(cfg.data.num_workers) > 0,
    )
    writer = _tensorboard(cfg, run.run_dir) if info.is_main else None
    bar = tqdm(
        total=total, initial=run.start, disable=not (progress and info.is_main), desc=cfg.name, dynamic_ncols=True
    )
    log = run.log_path.open("a") if info.is_main else None
    watch, best = FiniteWatch(device), None
    last_time, last_it = time.time(), run.start
    try:
        for it, batch in zip(range(run.start, total), loader):
            # ---- one iteration; the schedules advance after it (METHOD.md §3.5)
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out = iteration(run, batch)
            watch.update(out, it)
            run.schedule.advance()
            done = it + 1
            log_now = it % cfg.train.log_every == 0 or done == total
            save_now = done % cfg.train.checkpoint_every == 0 or done == total
            validate_now = validator is not None and val_due(done, total)

            # ---- the host reads the device only here: finiteness first, so nothing non-finite is logged or saved
            if log_now or save_now or validate_now:
                watch.check(info, run.checkpoint)

            # ---- log: one JSON line per log_every iterations, TensorBoard optional, the bar's postfix
            if log_now and info.is_main:
                now = time.time()
                ips = cfg.data.batch_size * (done - last_it) / max(now - last_time, 1e-9)
                last_time, last_it = now, done
                record = {
                    "iteration": it,
                    **{k: float(v) for k, v in out.items()},
                    "dfc_weight": run.schedule.dfc_weight,
                    "dfc_shift": run.schedule.dfc_shift,
                    "feature_samples": run.schedule.samples,
                    "images_per_s": round(ips, 2),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                if writer is not None:
                    for k, v in record.items():
                        writer.add_scalar(f"train/{k}", v, it)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.1f}")
                bar.update(done - bar.n)

            # ---- periodic validation (no CRF): reported beside the last step, labelled; rank 0 evaluates
            if validate_now:
                best = _validate(run, validator, done, best, log, selection)

            # ---- checkpoint, atomically
            if save_now:
                save_checkpoint(run, done)
    finally:
        bar.close()
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()
    if total == run.start:  # nothing to train (e.g. iterations=0 or resumed at the end): still leave a checkpoint
        save_checkpoint(run, run.start)
    barrier(info)

    # ---- the run record: config (above), provenance; metrics come from the evaluation layer
    wall = time.time() - t0
    if info.is_main:
        write_run(
            run.run_dir,
            provenance=provenance(
                seed=seed,
                device=str(device),
                weights=model.backbone.weights_source,
                wall_time_s=wall,
                extra={
                    "iterations": total,
                    "resumed_from": run.start if resume else None,
                    "world_size": info.world,
                    "resume_changes": changes or None,
                    **precision_record(cfg, model, device),
                },
            ),
        )
    barrier(info)
    return TrainResult(
        run_dir=run.run_dir,
        iterations=total,
        checkpoint=run.checkpoint,
        model=model,
        best_on_validation=best,
        is_main=info.is_main,
        wall_time_s=wall,
        selected=selection.kept if selection is not None else None,
    )


def precision_record(cfg: Config, model: DepthGModel, device: torch.device) -> dict:
    """What provenance records about how the backbone computed: precision, TF32, and its weights' name and sha256."""
    return {
        "precision": model.backbone.precision(device),
        "tf32": cfg.train.tf32,
        "backbone_checkpoint": model.backbone.weights_record,
    }


def validation_schedule(cfg: Config, batches_per_epoch: int) -> Callable[[int, int], bool]:
    """(iterations done, total) -> whether to validate now.

    ``train.select=last``: every ``val_every`` iterations, never at the very end (the last step is evaluated anyway).
    ``train.select=release``, as Lightning ran the release (METHOD.md §2.4): every ``val_every`` training batches
    (Lightning counts batches here, not its 3x global steps, so no step_unit conversion), the final batch included
    when due; a val_every larger than a quarter of an epoch is dropped (DG src/train_segmentation.py:683-691), and
    Lightning's default then validates at the end of every epoch.
    """
    every = cfg.train.val_every
    if not every:
        return lambda done, total: False
    if cfg.train.select != "release":
        return lambda done, total: done % every == 0 and done < total
    if every > batches_per_epoch / 4:
        return lambda done, total: done % batches_per_epoch == 0
    return lambda done, total: done % every == 0


def _validate(
    run: Run, validator: Validator, done: int, best: dict | None, log, selection: ReleaseSelection | None = None
) -> dict | None:
    """Validate (rank 0, other ranks wait), log it, and return the best so far by cluster mIoU.

    The release selects its checkpoint on the evaluation split (METHOD.md §2.4, §9 #12); here that number is only
    reported beside the last-step result and labelled, and with ``selection`` (train.select=release) the top-k
    checkpoints by the release's metric are kept for the final CRF evaluation. The head goes back to training mode
    afterwards (evaluation switches dropout off).
    """
    if run.info.is_main:
        m = validator(run.model.eval())
        run.model.train()
        if selection is not None and selection.qualifies(m):
            rng = [rng_state(run.generator)]  # rank 0 writes it alone: no gather across ranks
            selection.add(
                m,
                done,
                lambda path: checkpoints.save_training_state(
                    path,
                    cfg=run.cfg,
                    model=run.model,
                    step=run.step,
                    optimizers=run.optimizers,
                    schedule=run.schedule.state_dict(),
                    iteration=done,
                    rng=rng,
                ),
            )
        record = {
            "iteration": done - 1,
            "validation": {
                k: {"accuracy": v["accuracy"], "mIoU": v["mIoU"]} for k, v in m.items() if k in ("cluster", "linear")
            },
        }
        log.write(json.dumps(record) + "\n")
        log.flush()
        if best is None or m["cluster"]["mIoU"] > best["metrics"]["cluster"]["mIoU"]:
            best = {
                "label": "best on the evaluation split (selected on test data, as the release does; "
                "not a held-out result)",
                "after_iterations": done,
                "metrics": {k: m[k] for k in ("cluster", "linear")},
            }
    barrier(run.info)
    return best


def _tensorboard(cfg: Config, run_dir: Path):
    if not cfg.train.tensorboard:
        return None
    try:
        # optional dependency (the tensorboard extra)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard=true needs the tensorboard package: pip install 'depthg[tensorboard]'."
        ) from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
