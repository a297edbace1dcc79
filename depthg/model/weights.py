"""Weight files, read safely: checkpoints of any origin, and the ViT backbone weights inside them.

Reading never executes code from a file: ``torch.load(weights_only=True)`` first; files that pickle other classes
(omegaconf configs, Lightning's AttributeDict, argparse.Namespace in DINO files) are read with a restricted
unpickler that turns every class outside a small allowlist into an inert placeholder, and
:func:`plain_container` turns those placeholders back into dicts and lists. So neither omegaconf nor Lightning
has to be installed. This project's own training checkpoints are written and read by
:mod:`depthg.training.checkpoints`; the authors' released Lightning checkpoints are imported by
:mod:`depthg.evaluation.released`.
"""

from __future__ import annotations

import importlib
import pickle
import types
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from depthg.errors import WeightsError

# ---------------------------------------------------------------------------------------------------- reading files


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
