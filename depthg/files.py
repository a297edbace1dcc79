"""Writing files so that a killed process never leaves a half-written one: one owner of atomic writes.

Every output of the project (run records, checkpoints, stage manifests, crops, depth maps, kNN files) is written to a
temporary sibling and renamed over the target (``os.replace`` is atomic on POSIX), so readers see either the old
file or the complete new one. Temporary names follow one scheme, ``.<stem>.<pid>.tmp<suffix>``: hidden, unique per
process (several torchrun ranks write into one folder), and ending in the target's suffix so writers that choose the
format by suffix (PIL, numpy) still work. :func:`is_temp` recognises them, so stages can ignore and clean leftovers
of a killed run. A foundation module: it imports no other depthg module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

TEMP_MARK = ".tmp"


def temp_sibling(path: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path`` in this process (its parent is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.{os.getpid()}{TEMP_MARK}{path.suffix}")


def is_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` (a leftover when no writer is running)."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on an exception it is removed.

    ``fsync`` flushes the data to disk before the rename (checkpoints: the previous one must stay valid until the
    new one is complete even after a power cut).
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def jsonable(x: Any) -> Any:
    """numpy scalars/arrays and NaN into plain JSON (NaN becomes null: absent classes have no IoU)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
