"""Weight files, read safely: checkpoints of any origin, and the ViT backbone weights inside them.

Reading never executes code from a file. Every file goes through ``torch.load(weights_only=True)``, torch's own
unpickler, which resolves a pickled name only by an exact match in a table (so a dotted name cannot walk attributes
to ``eval``, METHOD.md never needs one) and calls nothing outside it. This project's training checkpoints are read
with torch's table alone (:mod:`depthg.training.checkpoints` writes them so). Files from elsewhere may also pickle
the few classes the authors' released Lightning checkpoints and DINO files hold (omegaconf containers and nodes,
Lightning's AttributeDict, argparse.Namespace, numpy scalars): :data:`RELEASED_GLOBALS` names each one and maps it
to an inert placeholder of this module, never to the real class, and :func:`plain_container` turns placeholders back
into dicts, lists and values. So neither omegaconf nor Lightning has to be installed, and any other class in a file
is refused with a WeightsError naming the file. The authors' released checkpoints are imported by
:mod:`depthg.evaluation.released`.
"""

from __future__ import annotations

import collections
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from depthg.errors import WeightsError

# ---------------------------------------------------------------------------------------------------- reading files


class _Placeholder:
    """Inert stand-in for an allow-listed pickled class: keeps constructor args and state, runs nothing."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:  # NEWOBJ: cls.__new__(cls, *args)
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE: cls(*args)
        self.args = args

    def __setstate__(self, state: Any) -> None:  # BUILD: the object's __dict__ (omegaconf: _content, _val, ...)
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder {self.qualname}>"


def _placeholder(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[1], (_Placeholder,), {"qualname": qualname, "__module__": __name__})


class _NumpyDType(_Placeholder):
    """``numpy.dtype(spec, align, copy)`` as pickled for a numpy scalar; BUILD state holds the byte order."""

    qualname = "numpy.dtype"


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar(dtype, bytes)`` for plain numeric/bool dtypes -> the Python value."""
    spec = dtype.args[0] if isinstance(dtype, _NumpyDType) and dtype.args else None
    if not isinstance(spec, str) or not isinstance(data, bytes) or spec[:1] not in ("f", "i", "u", "b", "c"):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {spec!r}: only plain numbers are read")
    order = dtype.state[1] if isinstance(dtype.state, tuple) and len(dtype.state) > 1 else "="
    return np.frombuffer(data, np.dtype(spec).newbyteorder(order if order in "<>" else "="))[0].item()


# Every class a released STEGO/DepthG .ckpt or a DINO .pth pickles besides tensors and containers, by the exact
# name the pickle records (omegaconf 2.0-2.3, pytorch-lightning 1.x/2.x), mapped to what it becomes here.
_OMEGACONF = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
    "omegaconf.nodes.ValueNode",
    "typing.Any",
    "argparse.Namespace",
)
_ATTRIBUTE_DICT = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)
RELEASED_GLOBALS: dict[str, Any] = {
    **{name: _placeholder(name) for name in _OMEGACONF},
    **{name: dict for name in _ATTRIBUTE_DICT},  # a dict subclass without own state: a plain dict
    "numpy.dtype": _NumpyDType,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    # plain types the above refer to (omegaconf's object_type/ref_type, Python 2 era names mapped by torch)
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.tuple": tuple,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.bool": bool,
    "builtins.str": str,
    "builtins.bytes": bytes,
    "collections.defaultdict": collections.defaultdict,
}
_SAFE_GLOBALS = [(obj, name) for name, obj in RELEASED_GLOBALS.items()] + [(_NumpyDType, f"{__name__}._NumpyDType")]


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu", released: bool = True) -> Any:
    """The object stored in a ``.pth``/``.ckpt``/``.bin`` (torch) or ``.safetensors`` file, read without running code.

    ``released=False`` (this project's own checkpoints): torch's weights-only table alone. Otherwise also the
    placeholders of :data:`RELEASED_GLOBALS`. Anything else raises a WeightsError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    if not hasattr(torch.serialization, "safe_globals"):  # fail closed: never fall back to a permissive reader
        raise WeightsError(
            f"cannot read checkpoint {path}: reading it safely needs torch >= 2.6 (this is "
            f"{torch.__version__}); upgrade torch."
        )
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(path, device=str(map_location))
        with torch.serialization.safe_globals(_SAFE_GLOBALS if released else []):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        reason = str(err).split("WeightsUnpickler error: ")[-1].splitlines()[0]
        if found := re.search(r"GLOBAL (\S+) (was not an allowed|whose module)", reason):  # not torch's advice to trust
            reason = f"it pickles {found[1]}, which is not allowed"
        raise WeightsError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {reason} (only tensors, plain "
            f"containers{' and the classes of released STEGO/DepthG checkpoints' if released else ''} "
            f"are read; nothing in a weight file is ever executed)"
        ) from None


def plain_container(obj: Any) -> Any:
    """Placeholders (omegaconf DictConfig/ListConfig/nodes, argparse.Namespace) -> dicts/lists/values."""
    if isinstance(obj, _Placeholder):
        state = obj.state
        if isinstance(state, dict) and "_content" in state:  # omegaconf containers keep their items in _content
            return plain_container(state["_content"])
        if isinstance(state, dict) and "_val" in state:  # omegaconf value nodes
            return plain_container(state["_val"])
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
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("state_dict"), dict)
        and any(isinstance(k, str) and k.startswith(RELEASED_BACKBONE_PREFIX) for k in obj["state_dict"])
    )


def vit_state_from_checkpoint(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The ViT state dict (timm/DINO key names) inside a released .ckpt, DINO .pth or timm state dict."""
    if is_released_checkpoint(obj):
        n = len(RELEASED_BACKBONE_PREFIX)
        return {k[n:]: v for k, v in obj["state_dict"].items() if k.startswith(RELEASED_BACKBONE_PREFIX)}
    state = obj
    while isinstance(state, dict) and (key := next((k for k in _NESTING_KEYS if isinstance(state.get(k), dict)), None)):
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
