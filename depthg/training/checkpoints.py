"""This project's training checkpoints: save, resume and load for evaluation.

A training checkpoint (:func:`save_training_state`) holds the head, probes, optimisers, schedule state and every
rank's RNG state, written atomically, so a killed run resumes to the weights an uninterrupted one reaches; the
frozen backbone is not stored, only its source.

Shapes: K code dim, C backbone channels, n clusters or classes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from depthg.config import Config
from depthg.errors import TrainingError, WeightsError
from depthg.files import atomic_write
from depthg.model.segmenter import DepthGModel
from depthg.model.weights import read_checkpoint

# ---- this project's training checkpoints (save, resume, evaluate) ----------------------------------------------

TRAIN_FORMAT = "depthg-train-v1"
# Keys that may differ between a run and its resumption: they do not change what an iteration computes.
_RESUME_FREE = {("train", "iterations"), ("train", "checkpoint_every"), ("train", "log_every"), ("train", "device"),
                ("train", "tensorboard"), ("train", "val_every"), ("data", "num_workers"), ("data", "data_dir"),
                ("eval",)}


def save_training_state(path, *, cfg, model, step, optimizers, schedule, iteration, rng) -> Path:
    """Everything a resumed run needs, written atomically (temp file, fsync, rename): a killed run never leaves a
    truncated checkpoint, and the previous one stays valid until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": TRAIN_FORMAT,
        "config": cfg.to_dict(),
        "iteration": int(iteration),
        "head": model.head.state_dict(),
        "cluster_probe": model.cluster_probe.state_dict(),
        "linear_probe": model.linear_probe.state_dict(),
        "lhp_projection": step.lhp_projection.state_dict() if step.lhp_projection is not None else None,
        # The frozen backbone is not stored: its source (hub id, file + sha256, or the fixed-seed random init) is.
        "backbone_weights": model.backbone.weights_source,
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedule": schedule,
        "rng": rng,
    }
    with atomic_write(path, fsync=True) as tmp:
        torch.save(state, tmp)
    return path


def _read_train_checkpoint(path, map_location) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist.")
    state = read_checkpoint(path, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise WeightsError(f"{path} is not a depthg training checkpoint (format {TRAIN_FORMAT}); for an authors' "
                           f"released Lightning .ckpt use `python -m depthg eval {path}`.")
    return state


def _config_differences(a: dict, b: dict, prefix=()) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = prefix + (k,)
        if key in _RESUME_FREE or key[:1] in _RESUME_FREE:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_differences(va, vb, key)
        elif va != vb:
            out.append(f"{'.'.join(key)}: checkpoint {va!r} vs now {vb!r}")
    return out


def load_training_state(path, cfg=None, *, map_location="cpu") -> dict:
    """Read a training checkpoint; with ``cfg``, refuse one written under a config that computes differently."""
    state = _read_train_checkpoint(path, map_location)
    if cfg is not None:
        diff = _config_differences(state["config"], cfg.to_dict())
        if diff:
            raise TrainingError(f"cannot resume from {path}: the config differs ({'; '.join(diff)}). Resume with "
                                f"the run's own config.json or start a new run name.")
    return state


def restore_training_state(state: dict, *, model, step, optimizers) -> None:
    model.head.load_state_dict(state["head"])
    model.cluster_probe.load_state_dict(state["cluster_probe"])
    model.linear_probe.load_state_dict(state["linear_probe"])
    if step is not None and step.lhp_projection is not None:
        step.lhp_projection.load_state_dict(state["lhp_projection"])
    if optimizers is not None:
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])


def load_trained_model(path, *, map_location="cpu"):
    """(DepthGModel in eval mode, Config, raw state) from this project's checkpoint, for evaluation."""

    state = _read_train_checkpoint(path, map_location)
    cfg = Config.from_dict(state["config"])
    model = DepthGModel.from_config(cfg.model)
    if model.backbone.weights_source != state["backbone_weights"]:
        warnings.warn(f"{path} was trained with backbone weights {state['backbone_weights']}, evaluating with "
                      f"{model.backbone.weights_source}", stacklevel=2)
    restore_training_state(state, model=model, step=None, optimizers=None)
    return model.eval(), cfg, state
