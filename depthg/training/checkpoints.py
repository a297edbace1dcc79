"""This project's training checkpoints: save, resume and load for evaluation.

A training checkpoint (:func:`save_training_state`) holds the head, probes, optimisers, schedule state and every
rank's RNG state, written atomically, so a killed run resumes to the weights an uninterrupted one reaches; the
frozen backbone is not stored, only its source.

Shapes: K code dim, C backbone channels, n clusters or classes.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

from depthg.config import Config
from depthg.errors import TrainingError, WeightsError
from depthg.files import atomic_write, temp_sibling
from depthg.model.segmenter import DepthGModel
from depthg.model.weights import read_checkpoint

# ---- this project's training checkpoints (save, resume, evaluate) ----------------------------------------------

TRAIN_FORMAT = "depthg-train-v1"
# Keys that may differ between a run and its resumption: they do not change what an iteration computes.
_RESUME_FREE = {
    ("train", "iterations"),
    ("train", "checkpoint_every"),
    ("train", "log_every"),
    ("train", "device"),
    ("train", "tensorboard"),
    ("train", "val_every"),
    ("data", "num_workers"),
    ("data", "data_dir"),
    ("eval",),
}
# Keys a resumption may change although they change the computation from there on: the learning rates, as the
# non-finite-loss message recommends lowering them. The change is recorded in the run (resume_changes).
RESUME_ADJUSTABLE = {("train", "lr"), ("train", "probe_lr")}


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
    state = read_checkpoint(path, map_location=map_location, released=False)  # ours: tensors and containers only
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise WeightsError(
            f"{path} is not a depthg training checkpoint (format {TRAIN_FORMAT}); for an authors' "
            f"released Lightning .ckpt use `python -m depthg eval {path}`."
        )
    missing = [k for k in _TRAIN_KEYS if not isinstance(state.get(k), _TRAIN_KEYS[k])]
    if missing:
        raise WeightsError(
            f"{path} has the {TRAIN_FORMAT} format tag but lacks or mangles {', '.join(missing)}: a "
            f"damaged checkpoint; delete it and train again (or resume from a copy)."
        )
    return state


_TRAIN_KEYS = {
    "config": dict,
    "iteration": int,
    "head": dict,
    "cluster_probe": dict,
    "linear_probe": dict,
    "backbone_weights": str,
    "optimizers": dict,
    "schedule": dict,
    "rng": list,
}


def _config_differences(a: dict, b: dict, prefix=()) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = prefix + (k,)
        if key in _RESUME_FREE or key[:1] in _RESUME_FREE or key in RESUME_ADJUSTABLE:
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
            raise TrainingError(
                f"cannot resume from {path}: the config differs ({'; '.join(diff)}). Resume with "
                f"the run's own config.json or start a new run name."
            )
    return state


def resume_changes(state: dict, cfg: Config) -> dict[str, list]:
    """The adjustable keys whose value differs between the checkpoint and ``cfg``: {"train.lr": [old, new]}."""
    old, new = state["config"], cfg.to_dict()
    return {
        ".".join(k): [old[k[0]].get(k[1]), new[k[0]][k[1]]]
        for k in sorted(RESUME_ADJUSTABLE)
        if old.get(k[0], {}).get(k[1]) != new[k[0]][k[1]]
    }


def keep_previous(path: Path) -> None:
    """Before ``path`` is replaced, keep the checkpoint it holds as ``previous.pt`` (a hard link: no copy, and the
    atomic replacement of ``path`` leaves it intact), so a diverged run can fall back to it."""
    path = Path(path)
    if path.is_file():
        tmp = temp_sibling(path.with_name(PREVIOUS))
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, path.with_name(PREVIOUS))


PREVIOUS = "previous.pt"


def keep_last_good(path: Path, bad_iteration: int) -> Path | None:
    """After a non-finite loss at ``bad_iteration``: the last checkpoint whose weights gave finite losses.

    The checkpoint at iteration c holds the weights iteration c computes with; if c == bad_iteration those weights
    are the diverged ones (finite perhaps, ~1e30, but unusable), so ``previous.pt`` takes its place. None if no good
    checkpoint exists (the bad one is removed, so a --resume cannot pick it up).
    """
    path = Path(path)
    if not path.is_file() or load_training_state(path)["iteration"] < bad_iteration:
        return path if path.is_file() else None
    previous = path.with_name(PREVIOUS)
    if previous.is_file() and load_training_state(previous)["iteration"] < bad_iteration:
        os.replace(previous, path)
        return path
    path.unlink()
    return None


def restore_training_state(state: dict, *, model, step, optimizers, path="checkpoint") -> None:
    """Load the state into the model (and step/optimisers); a tensor that does not fit is a WeightsError."""
    try:
        _restore(state, model=model, step=step, optimizers=optimizers)
    except (KeyError, RuntimeError, ValueError) as err:  # load_state_dict: missing/unexpected keys, wrong shapes
        reason = " ".join(str(err).split())[:300]
        raise WeightsError(
            f"{path} does not fit the model of its own config ({type(err).__name__}: {reason}); "
            f"the file is damaged or was edited: delete it and train again."
        ) from None


def _restore(state: dict, *, model, step, optimizers) -> None:
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
        warnings.warn(
            f"{path} was trained with backbone weights {state['backbone_weights']}, evaluating with "
            f"{model.backbone.weights_source}",
            stacklevel=2,
        )
    restore_training_state(state, model=model, step=None, optimizers=None, path=path)
    return model.eval(), cfg, state
