"""The training loop: plain PyTorch, iteration-based, resumable, torchrun-ready (DESIGN.md §6; METHOD.md §2.4-2.5).

``python -m depthg train --preset NAME [section.key=value ...]`` calls :func:`train`. One iteration: frozen backbone
features of the image and its kNN partner (bf16 autocast on CUDA), head, correlation terms with DFC and optional
3D-LHP (:mod:`depthg.step`), probes on detached codes, three Adam optimisers (head 5e-4, probes 5e-3, no weight
decay, no LR schedule, METHOD.md §2.4), then the schedules advance (:mod:`depthg.schedules`, state apart from the
immutable config).

Robustness: checkpoints are written atomically every ``train.checkpoint_every`` iterations and at the end;
``resume=True`` restores model, optimisers, schedule state and every RNG, and the batch order is a function of
(seed, iteration) (:class:`depthg.distributed.ResumableBatchSampler`), so a run killed part-way and resumed ends
with the same weights as an uninterrupted one. A non-finite loss stops the run naming the iteration and the term;
the last good checkpoint stays on disk.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from depthg import checkpoints
from depthg.config import Config
from depthg.data.pairs import build_train_set
from depthg.distributed import (DistInfo, ResumableBatchSampler, barrier, init_distributed, resolve_device,
                                shutdown_distributed)
from depthg.errors import ConfigError, TrainingError
from depthg.model import DepthGModel
from depthg.paths import runs_dir
from depthg.results import provenance, write_run
from depthg.schedules import Schedule
from depthg.step import StepSettings, TrainStep


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    checkpoint: Path
    metrics: dict | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def _rng_state(generator: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a tensor, so checkpoints load with torch.load(weights_only=True)
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                        gauss),
             "python": random.getstate(), "sampling": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    generator.set_state(state["sampling"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng(generator: torch.Generator, info: DistInfo) -> list:
    """Every rank's RNG states (rank 0 writes them all into the checkpoint)."""
    mine = _rng_state(generator)
    if not info.enabled:
        return [mine]
    out = [None] * info.world
    torch.distributed.all_gather_object(out, mine)
    return out


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _truncate_log(path: Path, start: int) -> None:
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
          evaluate_at_end: bool = True, progress: bool = True) -> TrainResult:
    """Train ``cfg`` into ``results/runs/<run_name>/`` and (optionally) evaluate the last step."""
    t0 = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    requested = cfg.train.device
    info = init_distributed("cuda" if requested.startswith("cuda") or
                            (requested == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        device = resolve_device(requested, info)
        return _train(cfg, device, info, run_name, results_dir, resume, evaluate_at_end, progress, t0)
    finally:
        shutdown_distributed()


def _train(cfg, device, info, run_name, results_dir, resume, evaluate_at_end, progress, t0) -> TrainResult:
    seed = cfg.train.seed
    run_dir = run_directory(cfg, run_name, results_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    log_path = run_dir / "metrics.jsonl"
    seed_everything(seed + info.rank)  # per-rank seeds: dropout and sampling differ across ranks
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + info.rank)

    dataset = build_train_set(cfg)  # checks model.n_classes against the dataset
    seed_everything(seed + info.rank)  # model init independent of what building the dataset consumed
    model, step, optimizers = build_training(cfg, device)
    schedule = make_schedule(cfg).start()
    start = 0
    if resume:
        if not ckpt_path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {ckpt_path}; start without --resume.")
        state = checkpoints.load_training_state(ckpt_path, cfg, map_location=device)
        checkpoints.restore_training_state(state, model=model, step=step, optimizers=optimizers)
        schedule.load_state_dict(state["schedule"])
        rng = state["rng"]
        if len(rng) == info.world:
            _set_rng_state(rng[info.rank], generator)
        start = state["iteration"]
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(run_dir / "config.json")
        if resume:
            _truncate_log(log_path, start)
        elif log_path.exists():
            log_path.unlink()
    ddp_step = DistributedDataParallel(step) if info.enabled else step

    total = cfg.train.iterations
    sampler = ResumableBatchSampler(len(dataset), cfg.data.batch_size, seed=seed, start=start, total=total,
                                    rank=info.rank, world=info.world)
    loader = torch.utils.data.DataLoader(EpochPairs(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                         pin_memory=device.type == "cuda",
                                         # its own generator: creating the iterator must not draw from the
                                         # global RNG, or a resumed run's dropout would drift
                                         generator=torch.Generator().manual_seed(seed),
                                         persistent_workers=cfg.data.num_workers > 0)
    writer = _tensorboard(cfg, run_dir) if info.is_main else None
    bar = tqdm(total=total, initial=start, disable=not (progress and info.is_main), desc=cfg.name,
               dynamic_ncols=True)
    last_time, last_it, it, best = time.time(), start, start, None
    log = log_path.open("a") if info.is_main else None
    try:
        for it, batch in zip(range(start, total), loader):
            batch = _to_device(batch, device)
            out = _one_iteration(model, ddp_step, optimizers, batch, schedule, generator, cfg, info, it, ckpt_path)
            schedule.advance()
            if info.is_main and (it % cfg.train.log_every == 0 or it == total - 1):
                now = time.time()
                ips = cfg.data.batch_size * (it + 1 - last_it) / max(now - last_time, 1e-9)
                last_time, last_it = now, it + 1
                record = {"iteration": it, **{k: float(v) for k, v in out.items()},
                          "dfc_weight": schedule.dfc_weight, "dfc_shift": schedule.dfc_shift,
                          "feature_samples": schedule.samples, "images_per_s": round(ips, 2)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                if writer is not None:
                    for k, v in record.items():
                        writer.add_scalar(f"train/{k}", v, it)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.1f}")
                bar.update(it + 1 - bar.n)
            if cfg.train.val_every and (it + 1) % cfg.train.val_every == 0 and it + 1 < total:
                best = _validate(model, cfg, info, it + 1, best, log)
            if (it + 1) % cfg.train.checkpoint_every == 0 or it + 1 == total:
                _save(ckpt_path, cfg, model, step, optimizers, schedule, it + 1, generator, info)
    finally:
        bar.close()
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()
    if total == start:  # nothing to train (e.g. iterations=0 or resumed at the end): still leave a checkpoint
        _save(ckpt_path, cfg, model, step, optimizers, schedule, start, generator, info)
    barrier(info)

    metrics = None
    if info.is_main:
        if evaluate_at_end:
            from depthg.evaluate import evaluate_model
            metrics = evaluate_model(model, cfg, progress=progress)
        summary = {"last_step": metrics} if metrics else None
        if summary and best is not None:
            summary["best_on_validation"] = best
        write_run(run_dir, metrics=summary, provenance=provenance(
            seed=seed, device=str(device), weights=model.backbone.weights_source, wall_time_s=time.time() - t0,
            extra={"iterations": total, "resumed_from": start if resume else None, "world_size": info.world}))
    barrier(info)
    return TrainResult(run_dir=run_dir, iterations=total, checkpoint=ckpt_path, metrics=metrics)


def _validate(model, cfg: Config, info: DistInfo, iteration: int, best: dict | None, log) -> dict | None:
    """Periodic validation (``train.val_every``) without CRF, logged; returns the best so far by cluster mIoU.

    The release selects its checkpoint on the evaluation split (METHOD.md §2.4, §9 #12); here that number is only
    reported beside the last-step result and labelled, and no checkpoint is chosen by it. Rank 0 evaluates while
    the other ranks wait; the head goes back to training mode afterwards (evaluation switches dropout off).
    """
    if info.is_main:
        from depthg.evaluate import evaluate_model

        m = evaluate_model(model, cfg, crf=False, progress=False)
        model.train()
        record = {"iteration": iteration - 1, "validation": {k: {"accuracy": v["accuracy"], "mIoU": v["mIoU"]}
                                                             for k, v in m.items() if k in ("cluster", "linear")}}
        log.write(json.dumps(record) + "\n")
        log.flush()
        if best is None or m["cluster"]["mIoU"] > best["metrics"]["cluster"]["mIoU"]:
            best = {"label": "best on the evaluation split (selected on test data, as the release does; "
                             "not a held-out result)", "after_iterations": iteration,
                    "metrics": {k: m[k] for k in ("cluster", "linear")}}
    barrier(info)
    return best


def _one_iteration(model, ddp_step, optimizers, batch, schedule, generator, cfg, info, it, ckpt_path) -> dict:
    B = batch["img"].shape[0]
    # one backbone pass over image and partner together (frozen, no_grad, bf16 on CUDA)
    feats, _ = model.features(torch.cat([batch["img"], batch["img_pos"]]))
    f, f_pos = feats[:B], feats[B:]
    out = ddp_step(f, f_pos, batch["depth"], batch["depth_pos"], batch["label"],
                   samples=schedule.samples, dfc_weight=schedule.dfc_weight, dfc_shift=schedule.dfc_shift,
                   generator=generator)
    bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
    flag = torch.tensor([float(bool(bad))], device=f.device)
    if info.enabled:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        where = f"term(s) {', '.join(bad)}" if bad else "another rank"
        raise TrainingError(f"non-finite loss at iteration {it} in {where}; the last good checkpoint is "
                            f"{ckpt_path if ckpt_path.exists() else 'not written yet'}. Lower the learning "
                            f"rate or check the inputs of that batch.")
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    for opt in optimizers.values():
        opt.step()
    return {k: v.detach() for k, v in out.items()}


def _save(path, cfg, model, step, optimizers, schedule, iteration, generator, info) -> None:
    rng = _gather_rng(generator, info)
    if info.is_main:
        checkpoints.save_training_state(path, cfg=cfg, model=model, step=step, optimizers=optimizers,
                                        schedule=schedule.state_dict(), iteration=iteration, rng=rng)


def _tensorboard(cfg: Config, run_dir: Path):
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'depthg[tensorboard]'.")
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
