"""Writing files so that a killed process never leaves a half-written one: one owner of atomic writes.

Every output of the project (run records, checkpoints, stage manifests, crops, depth maps, kNN files) is written to a
temporary sibling and renamed over the target (``os.replace`` is atomic on POSIX), so readers see either the old
file or the complete new one. Temporary names follow one scheme, ``.<stem>.<pid>.tmp<suffix>``: hidden, unique per
process (several torchrun ranks write into one folder), and ending in the target's suffix so writers that choose the
format by suffix (PIL, numpy) still work. :func:`is_temp` recognises them, so stages can ignore and clean leftovers
of a killed run.

The one lock mechanism (:func:`file_lock`, ``fcntl.flock``) is here too: stage manifests wait for it, run folders
and stage outputs refuse a second writer and name the holder (pid, command, start time written into the lock file).
The kernel drops a flock when its process dies, so a killed holder never leaves a stale lock. A foundation module:
it imports only :mod:`depthg.errors`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from depthg.errors import BusyError, OutputError

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


def temp_owner(path: str | os.PathLike) -> int | None:
    """The pid in a temporary name of :func:`temp_sibling` (``.<stem>.<pid>.tmp<suffix>``), or None."""
    name = Path(path).name
    head = name[1 : name.rfind(TEMP_MARK)] if is_temp(name) else ""
    pid = head.rsplit(".", 1)[-1]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_leftovers(folder: str | os.PathLike) -> int:
    """Delete, under ``folder``, the temporary files whose writing process is gone (killed mid-write); returns how
    many. Files of live processes (another rank writing now) are left alone."""
    removed, stack = 0, [Path(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif (
                is_temp(entry.name)
                and (pid := temp_owner(entry.name)) is not None
                and pid != os.getpid()
                and not _alive(pid)
            ):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


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


# (path, inode, size, mtime_ns) -> digest: a weights file is hashed by the readiness check, the kNN stage's
# parameters and the loader in one process; read it once. A replaced file (atomic rename: new inode) or an edited
# one (new mtime) is read again.
_sha256_cache: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (once per version of the file in a process)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _sha256_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _sha256_cache[key] = digest.hexdigest()
    return _sha256_cache[key]


# ---- locks ---------------------------------------------------------------------------------------------------------

_held: dict[str, int] = {}  # lock files this process holds -> depth (re-entrant: train inside train_and_evaluate)
_held_guard = threading.Lock()


def lock_holder(path: str | os.PathLike) -> str:
    """What a lock file says about its holder: ``pid N (command, since time)``, or ``an unknown process``."""
    try:
        info = json.loads(Path(path).read_text() or "{}")
        return f"pid {info['pid']} ({info['command']!r}, since {info['started_utc']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True, what: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created) and write this process into it.

    ``wait=True`` blocks until it is free (short critical sections: manifests, merges); ``wait=False`` raises
    BusyError naming ``what`` and the holder (long-running writers: a run folder, a stage output). Re-entrant within
    one process.
    """
    path = Path(path)
    key = str(path.resolve())
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # "a+": never truncate a holder's note before holding the lock
    except OSError as err:
        raise OutputError(
            f"cannot create the lock file {path} ({err.strerror}); the folder must be writable."
        ) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise BusyError(
                f"{what or path} is in use by {lock_holder(path)}; wait for it to finish, or stop it "
                f"(the lock file {path} frees itself when its process ends)."
            ) from None
        try:
            fh.truncate(0)
            fh.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "command": " ".join(sys.argv),
                        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    }
                )
            )
            fh.flush()
            with _held_guard:
                _held[key] = 1
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            fcntl.flock(fh, fcntl.LOCK_UN)
