"""Checkpoint files: safe reading, backbone weights inside them, and this project's training checkpoints.

Training checkpoints (:func:`save_training_state`) hold the head, probes, optimisers, schedule state and every
rank's RNG state, written atomically, so a killed run resumes to the weights an uninterrupted one reaches; the
frozen backbone is not stored, only its source. The authors' released Lightning checkpoints are imported by
:mod:`depthg.released`.

Reading never executes code from a file: ``torch.load(weights_only=True)`` first; files that pickle other classes
(omegaconf configs, Lightning's AttributeDict, argparse.Namespace in DINO files) are read with a restricted
unpickler that turns every class outside a small allowlist into an inert placeholder, and
:func:`plain_container` turns those placeholders back into dicts and lists. So neither omegaconf nor Lightning
has to be installed.

Shapes: K code dim, C backbone channels, n clusters or classes.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from depthg.errors import TrainingError, WeightsError

# ---------------------------------------------------------------------------------------------------- reading files


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Any:
    """The object stored in a ``.pth``/``.ckpt``/``.bin`` (torch) or ``.safetensors`` file, read safely."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path, device=str(map_location))
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:  # pickles classes beyond tensors and containers: use placeholders
            return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_restricted)
    except Exception as err:
        raise WeightsError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


class _Placeholder(dict):
    """Inert stand-in for a pickled class outside the allowlist; keeps constructor args, state and dict items."""

    qualname = "?"
    args: tuple = ()
    state: Any = None

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):  # called when the pickle invokes the class (REDUCE)
        self.args = args

    def __setstate__(self, state):  # BUILD: the object's __dict__ or __getstate__ result
        self.state = state

    def __call__(self, *args, **kwargs):  # a placeholder used as a callable (getattr(cls, name)(...)) stays inert
        return type(self)(*args)


_PLACEHOLDERS: dict[str, type] = {}
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str", "bytes",
                  "bytearray", "complex", "slice", "range", "object"}
_SAFE_GLOBALS = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("copyreg", "_reconstructor"),
                 ("_codecs", "encode")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        root = module.split(".")[0]
        if (module, name) in _SAFE_GLOBALS or (module == "builtins" and name in _SAFE_BUILTINS):
            return super().find_class(module, name)
        if root == "numpy" and (name in {"_reconstruct", "scalar", "dtype", "ndarray"} or module == "numpy.dtypes"):
            return super().find_class(module, name)  # numpy arrays and scalars in hyper-parameters
        if root == "torch":
            obj = getattr(importlib.import_module(module), name, None)
            # tensor rebuild functions, dtypes, layouts, sizes and tensor classes; storages are mapped by torch
            if (name.startswith("_rebuild") or isinstance(obj, (torch.dtype, torch.layout, torch.memory_format))
                    or obj in (torch.Size, torch.device)
                    or (isinstance(obj, type) and issubclass(obj, torch.Tensor))):
                return obj
        key = f"{module}.{name}"
        if key not in _PLACEHOLDERS:
            _PLACEHOLDERS[key] = type(name, (_Placeholder,), {"qualname": key})
        return _PLACEHOLDERS[key]


_restricted = types.ModuleType("depthg_restricted_pickle")
_restricted.Unpickler = _RestrictedUnpickler
_restricted.load = lambda fh, **kw: _RestrictedUnpickler(fh, **kw).load()
_restricted.__dict__.update(UnpicklingError=pickle.UnpicklingError)


def plain_container(obj: Any) -> Any:
    """Placeholders (omegaconf DictConfig/ListConfig/nodes, Lightning AttributeDict, ...) -> dicts/lists/values."""
    if isinstance(obj, _Placeholder):
        state = obj.state
        if isinstance(state, dict) and "_content" in state:  # omegaconf containers keep their items in _content
            return plain_container(state["_content"])
        if isinstance(state, dict) and "_val" in state:  # omegaconf value nodes
            return plain_container(state["_val"])
        if len(obj):  # dict subclasses (Lightning's AttributeDict)
            return {k: plain_container(v) for k, v in obj.items()}
        if isinstance(state, dict):
            return {k: plain_container(v) for k, v in state.items()}
        if len(obj.args) == 1:
            return plain_container(obj.args[0])
        return f"<{obj.qualname}>"
    if isinstance(obj, dict):
        return {k: plain_container(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_container(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------ backbone weights

RELEASED_BACKBONE_PREFIX = "net.model."
_NESTING_KEYS = ("teacher", "state_dict", "model", "student")  # DINO saves student and teacher; eval uses teacher


def is_released_checkpoint(obj: Any) -> bool:
    """A STEGO/DepthG Lightning checkpoint: a ``state_dict`` holding ``net.model.*`` keys."""
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and any(
        isinstance(k, str) and k.startswith(RELEASED_BACKBONE_PREFIX) for k in obj["state_dict"])


def vit_state_from_checkpoint(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The ViT state dict (timm/DINO key names) inside a released .ckpt, DINO .pth or timm state dict."""
    if is_released_checkpoint(obj):
        n = len(RELEASED_BACKBONE_PREFIX)
        return {k[n:]: v for k, v in obj["state_dict"].items() if k.startswith(RELEASED_BACKBONE_PREFIX)}
    state = obj
    while isinstance(state, dict) and (key := next((k for k in _NESTING_KEYS if isinstance(state.get(k), dict)),
                                                   None)):
        state = state[key]
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"{path} holds no tensor state dict (looked under {', '.join(_NESTING_KEYS)})")
    out = {}
    for k, v in state.items():
        if not torch.is_tensor(v):
            continue
        for prefix in ("module.", "backbone."):  # DDP wrapper and DINO's multi-crop wrapper (DG modules.py:52-68)
            k = k.removeprefix(prefix)
        if not k.startswith("head."):  # DINO projection head / classifier: not part of the feature extractor
            out[k] = v
    return out


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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
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
    from depthg.config import Config
    from depthg.model import DepthGModel  # not at the top: depthg.model imports this module (via backbone)

    state = _read_train_checkpoint(path, map_location)
    cfg = Config.from_dict(state["config"])
    model = DepthGModel.from_config(cfg.model)
    if model.backbone.weights_source != state["backbone_weights"]:
        warnings.warn(f"{path} was trained with backbone weights {state['backbone_weights']}, evaluating with "
                      f"{model.backbone.weights_source}", stacklevel=2)
    restore_training_state(state, model=model, step=None, optimizers=None)
    return model.eval(), cfg, state
