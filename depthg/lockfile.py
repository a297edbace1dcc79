"""The exact environment: ``requirements.lock`` against ``pyproject.toml`` and against what is installed.

``make lock`` compiles pyproject.toml's dependencies (with the ``dev`` extra) with ``uv pip compile`` into
``requirements.lock``: every package pinned with its sha256 hashes, for Python 3.11 on Linux. It then stamps the
sha256 of the dependency lists it compiled from into the lock (``python -m depthg.lockfile stamp``), so a
change to pyproject.toml without a new lock is caught offline (``... check``, run by ``make venv`` and the tests).
``make venv`` installs exactly the lock, then this package itself without dependencies; ``pip install -e .`` stays
open-ended for library users. Provenance records the lock's sha256 and every locked package whose installed
version differs (:func:`lock_state`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from importlib import metadata
from pathlib import Path

from depthg.errors import DepthGError
from depthg.paths import repo_root

LOCK_NAME = "requirements.lock"
LOCK_PYTHON = (3, 11)  # `make lock` resolves for this Python (uv pip compile --python-version)
_STAMP = "# pyproject-dependencies-sha256: "
# name[extras]==version: extras stay in the lock (uv --no-strip-extras), or pip's hash mode refuses e.g. jsonschema
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 project name: ``Pydensecrf2`` and ``pydensecrf_2`` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def inputs_digest(pyproject: Path) -> str:
    """sha256 of what a lock is compiled from: requires-python, dependencies and optional-dependencies."""
    import tomllib  # Python 3.11+, like the lock; provenance (lock_state) must still import on 3.10

    project = tomllib.loads(Path(pyproject).read_text())["project"]
    inputs = {k: project.get(k) for k in ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def stamped_digest(lock: Path) -> str | None:
    """The inputs digest ``make lock`` wrote into ``lock`` (None if it carries none)."""
    for line in Path(lock).read_text().splitlines():
        if line.startswith(_STAMP):
            return line[len(_STAMP) :].strip()
    return None


def stamp(lock: Path, pyproject: Path) -> None:
    """Write pyproject's inputs digest into ``lock``, below uv's header comment (replacing an older stamp)."""
    lines = [ln for ln in Path(lock).read_text().splitlines() if not ln.startswith(_STAMP)]
    at = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
    lines.insert(at, _STAMP + inputs_digest(pyproject))
    Path(lock).write_text("\n".join(lines) + "\n")


def locked_versions(lock: Path) -> dict[str, str]:
    """{normalised name: version} of every ``name==version`` line of a requirements lock."""
    out = {}
    for line in Path(lock).read_text().splitlines():
        m = _PIN.match(line)
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


def check(root: Path | None = None) -> None:
    """Refuse to install a stale lock or one made for another Python, saying what to do."""
    root = root or repo_root()
    lock, pyproject = root / LOCK_NAME, root / "pyproject.toml"
    if sys.version_info[:2] != LOCK_PYTHON:
        want = ".".join(map(str, LOCK_PYTHON))
        raise DepthGError(
            f"{lock.name} is for Python {want}, this is {sys.version.split()[0]}: remove .venv and run "
            f"make with PYTHON=python{want}."
        )
    if not lock.is_file():
        raise DepthGError(f"{lock} is missing: restore it from git or run `make lock`.")
    if stamped_digest(lock) != inputs_digest(pyproject):
        raise DepthGError(
            f"{pyproject.name}'s dependencies changed since {lock.name} was compiled: run `make lock` "
            f"and commit both files."
        )


def lock_state(root: Path | None = None) -> dict:
    """Provenance of the environment: the lock's sha256 and the locked packages installed at another version
    (``{name: {"locked": v, "installed": w or None}}``; empty when the environment is exactly the lock)."""
    lock = (root or repo_root()) / LOCK_NAME
    if not lock.is_file():  # an installed wheel without the checkout: nothing to compare against
        return {"file": None, "sha256": None, "differs": None}
    installed: dict[str, str] = {}
    for dist in metadata.distributions():  # sys.path order: the first copy of a package is the one imported
        if dist.metadata["Name"]:
            installed.setdefault(normalize(dist.metadata["Name"]), dist.version)
    differs = {
        name: {"locked": v, "installed": installed.get(name)}
        for name, v in sorted(locked_versions(lock).items())
        if installed.get(name) != v
    }
    return {"file": LOCK_NAME, "sha256": hashlib.sha256(lock.read_bytes()).hexdigest(), "differs": differs}


def main(argv: list[str] | None = None) -> int:
    """``stamp`` (after uv pip compile, in ``make lock``) or ``check`` (before installing, in ``make venv``)."""
    args = sys.argv[1:] if argv is None else argv
    if args not in (["stamp"], ["check"]):
        print("usage: python -m depthg.lockfile {stamp|check}", file=sys.stderr)
        return 2
    root = repo_root()
    try:
        if args == ["stamp"]:
            stamp(root / LOCK_NAME, root / "pyproject.toml")
        else:
            check(root)
    except DepthGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
