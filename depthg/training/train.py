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

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from depthg.config import Config
from depthg.data.pairs import build_train_set
from depthg.device import DistInfo, resolve_device
from depthg.errors import ConfigError, TrainingError
from depthg.model.segmenter import DepthGModel
from depthg.paths import runs_dir
from depthg.runs import provenance, write_run
from depthg.training import checkpoints
from depthg.training.distributed import ResumableBatchSampler, barrier, init_distributed, shutdown_distributed
from depthg.training.rng import gather_rng, seed_everything, set_rng_state
from depthg.training.schedules import Schedule
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


def run_directory(cfg: Config, run_name: str | None, results_dir: str | None) -> Path:
    return runs_dir(results_dir) / (run_name or f"{cfg.name}-seed{cfg.train.seed}")


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
    return Schedule(dfc_weight=cfg.loss.depth_feat_weight, dfc_shift=cfg.loss.depth_feat_shift,
                    samples=cfg.loss.feature_samples, step_unit=cfg.fidelity.step_unit,
                    **dataclasses.asdict(cfg.schedule))


def build_training(cfg: Config, device: torch.device) -> tuple[DepthGModel, TrainStep, dict]:
    """The model, its trainable part and the three Adam optimisers (METHOD.md §2.4)."""
    model = DepthGModel.from_config(cfg.model).to(device)
    step = TrainStep(model.head, model.cluster_probe, model.linear_probe, StepSettings.from_config(cfg),
                     cfg.model.dim).to(device)
    head_params = list(model.head.parameters())
    if step.lhp_projection is not None:
        head_params += list(step.lhp_projection.parameters())
    optimizers = {
        "head": torch.optim.Adam(head_params, lr=cfg.train.lr),
        "cluster_probe": torch.optim.Adam(model.cluster_probe.parameters(), lr=cfg.train.probe_lr),
        "linear_probe": torch.optim.Adam(model.linear_probe.parameters(), lr=cfg.train.probe_lr),
    }
    return model, step, optimizers


def iteration(run: Run, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The compute of one iteration on a batch already on the device: every loss term, detached, after the step."""
    B = batch["img"].shape[0]
    # one backbone pass over image and partner together (frozen, no_grad, bf16 on CUDA)
    feats, _ = run.model.features(torch.cat([batch["img"], batch["img_pos"]]))
    out = run.ddp_step(feats[:B], feats[B:], batch["depth"], batch["depth_pos"], batch["label"],
                       samples=run.schedule.samples, dfc_weight=run.schedule.dfc_weight,
                       dfc_shift=run.schedule.dfc_shift, generator=run.generator)
    for opt in run.optimizers.values():
        opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    for opt in run.optimizers.values():
        opt.step()
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
        where = f"term(s) {', '.join(t for t, b in zip(self.terms, self.bad.tolist()) if b)}" if mine \
            else "another rank"
        raise TrainingError(f"non-finite loss at iteration {int(first)} in {where}; the last good checkpoint is "
                            f"{last_good if last_good.exists() else 'not written yet'}. Lower the learning rate "
                            f"or check the inputs of that batch.")


def save_checkpoint(run: Run, iteration: int) -> None:
    rng = gather_rng(run.generator, run.info)  # every rank takes part; rank 0 writes
    if run.info.is_main:
        checkpoints.save_training_state(run.checkpoint, cfg=run.cfg, model=run.model, step=run.step,
                                        optimizers=run.optimizers, schedule=run.schedule.state_dict(),
                                        iteration=iteration, rng=rng)


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
            raise TrainingError(f"--resume: {path} line {number} is not a JSON record ({line[:60]!r}); delete that "
                                f"line or start without --resume.") from None
        if record["iteration"] < start:
            keep.append(line)
    path.write_text("".join(ln + "\n" for ln in keep))


def train(cfg: Config, *, run_name: str | None = None, results_dir: str | None = None, resume: bool = False,
          progress: bool = True, validator: Validator | None = None) -> TrainResult:
    """Train ``cfg`` into ``results/runs/<run_name>/``; ``validator`` runs every ``train.val_every`` iterations."""
    t0 = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    requested = cfg.train.device
    info = init_distributed("cuda" if requested.startswith("cuda") or
                            (requested == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        return _train(cfg, resolve_device(requested, info), info, run_name, results_dir, resume, progress,
                      validator, t0)
    finally:
        shutdown_distributed()


def _train(cfg: Config, device: torch.device, info: DistInfo, run_name: str | None, results_dir: str | None,
           resume: bool, progress: bool, validator: Validator | None, t0: float) -> TrainResult:
    # ---- set-up: data, model, optimisers, schedule; per-rank seeds, so dropout and sampling differ across ranks
    seed = cfg.train.seed
    seed_everything(seed + info.rank)
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + info.rank)
    dataset = build_train_set(cfg)  # checks model.n_classes against the dataset
    seed_everything(seed + info.rank)  # model init independent of what building the dataset consumed
    model, step, optimizers = build_training(cfg, device)
    run = Run(cfg=cfg, device=device, info=info, run_dir=run_directory(cfg, run_name, results_dir), model=model,
              step=step, ddp_step=DistributedDataParallel(step) if info.enabled else step, optimizers=optimizers,
              schedule=make_schedule(cfg).start(), generator=generator)

    # ---- resume: weights, optimisers, schedule state and this rank's RNG streams from the last checkpoint
    if resume:
        if not run.checkpoint.is_file():
            raise TrainingError(f"--resume: no checkpoint at {run.checkpoint}; start without --resume.")
        state = checkpoints.load_training_state(run.checkpoint, cfg, map_location=device)
        checkpoints.restore_training_state(state, model=model, step=step, optimizers=optimizers)
        run.schedule.load_state_dict(state["schedule"])
        if len(state["rng"]) == info.world:
            set_rng_state(state["rng"][info.rank], generator)
        run.start = state["iteration"]
    if info.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(run.run_dir / "config.json")
        if resume:
            truncate_log(run.log_path, run.start)
        elif run.log_path.exists():
            run.log_path.unlink()

    # ---- the batch order is a function of (seed, iteration): a resumed run draws the batches it would have drawn
    total = cfg.train.iterations
    sampler = ResumableBatchSampler(len(dataset), cfg.data.batch_size, seed=seed, start=run.start, total=total,
                                    rank=info.rank, world=info.world)
    loader = torch.utils.data.DataLoader(EpochPairs(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                         pin_memory=device.type == "cuda",
                                         # its own generator: creating the iterator must not draw from the
                                         # global RNG, or a resumed run's dropout would drift
                                         generator=torch.Generator().manual_seed(seed),
                                         persistent_workers=cfg.data.num_workers > 0)
    writer = _tensorboard(cfg, run.run_dir) if info.is_main else None
    bar = tqdm(total=total, initial=run.start, disable=not (progress and info.is_main), desc=cfg.name,
               dynamic_ncols=True)
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
            validate_now = validator is not None and cfg.train.val_every and done % cfg.train.val_every == 0 \
                and done < total

            # ---- the host reads the device only here: finiteness first, so nothing non-finite is logged or saved
            if log_now or save_now or validate_now:
                watch.check(info, run.checkpoint)

            # ---- log: one JSON line per log_every iterations, TensorBoard optional, the bar's postfix
            if log_now and info.is_main:
                now = time.time()
                ips = cfg.data.batch_size * (done - last_it) / max(now - last_time, 1e-9)
                last_time, last_it = now, done
                record = {"iteration": it, **{k: float(v) for k, v in out.items()},
                          "dfc_weight": run.schedule.dfc_weight, "dfc_shift": run.schedule.dfc_shift,
                          "feature_samples": run.schedule.samples, "images_per_s": round(ips, 2)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                if writer is not None:
                    for k, v in record.items():
                        writer.add_scalar(f"train/{k}", v, it)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.1f}")
                bar.update(done - bar.n)

            # ---- periodic validation (no CRF): reported beside the last step, labelled; rank 0 evaluates
            if validate_now:
                best = _validate(run, validator, done, best, log)

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
        write_run(run.run_dir, provenance=provenance(
            seed=seed, device=str(device), weights=model.backbone.weights_source, wall_time_s=wall,
            extra={"iterations": total, "resumed_from": run.start if resume else None, "world_size": info.world}))
    barrier(info)
    return TrainResult(run_dir=run.run_dir, iterations=total, checkpoint=run.checkpoint, model=model,
                       best_on_validation=best, is_main=info.is_main, wall_time_s=wall)


def _validate(run: Run, validator: Validator, done: int, best: dict | None, log) -> dict | None:
    """Validate (rank 0, other ranks wait), log it, and return the best so far by cluster mIoU.

    The release selects its checkpoint on the evaluation split (METHOD.md §2.4, §9 #12); here that number is only
    reported beside the last-step result and labelled. The head goes back to training mode afterwards (evaluation
    switches dropout off).
    """
    if run.info.is_main:
        m = validator(run.model.eval())
        run.model.train()
        record = {"iteration": done - 1, "validation": {k: {"accuracy": v["accuracy"], "mIoU": v["mIoU"]}
                                                        for k, v in m.items() if k in ("cluster", "linear")}}
        log.write(json.dumps(record) + "\n")
        log.flush()
        if best is None or m["cluster"]["mIoU"] > best["metrics"]["cluster"]["mIoU"]:
            best = {"label": "best on the evaluation split (selected on test data, as the release does; "
                             "not a held-out result)", "after_iterations": done,
                    "metrics": {k: m[k] for k in ("cluster", "linear")}}
    barrier(run.info)
    return best


def _tensorboard(cfg: Config, run_dir: Path):
    if not cfg.train.tensorboard:
        return None
    try:
        # optional dependency (the tensorboard extra)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'depthg[tensorboard]'.")
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
