"""requirements.lock against pyproject.toml (offline), `make venv`'s check, and the provenance of the environment."""

import re
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from depthg.errors import DepthGError
from depthg.lockfile import LOCK_NAME, check, inputs_digest, lock_state, locked_versions, normalize, stamped_digest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / LOCK_NAME
LOCKED_EXTRA = "dev"  # `make lock` compiles pyproject.toml --extra dev
PIN = r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?=="  # name[extras]==


def _direct_requirements() -> list[Requirement]:
    """pyproject's dependencies plus those of the locked extra and the extras it pulls in (depthg[depth,...])."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, todo, out = set(), [LOCKED_EXTRA], [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        extras.add(extra)
        for req in map(Requirement, project["optional-dependencies"][extra]):
            if normalize(req.name) == "depthg":
                todo += [e for e in req.extras if e not in extras]
            else:
                out.append(req)
    return out


def _via_pyproject(lock: Path) -> set[str]:
    """Packages uv annotated ``# via depthg (pyproject.toml)``: the lock's direct requirements."""
    out, current = set(), None
    for line in lock.read_text().splitlines():
        m = re.match(PIN, line)
        if m:
            current = normalize(m.group(1))
        elif current and re.match(r"^\s+#\s+(via\s+)?depthg \(pyproject\.toml\)", line):
            out.add(current)
    return out


def test_lock_was_compiled_from_this_pyproject():
    assert stamped_digest(LOCK) == inputs_digest(ROOT / "pyproject.toml"), (
        "pyproject.toml's dependency lists changed since requirements.lock was compiled: run `make lock`"
    )


def test_every_direct_requirement_is_pinned_within_its_specifier():
    locked = locked_versions(LOCK)
    reqs = _direct_requirements()
    for req in reqs:
        name = normalize(req.name)
        assert name in locked, f"{req} (pyproject.toml) is not in {LOCK_NAME}: run `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK_NAME} pins {name}=={locked[name]}, outside pyproject.toml's {req}: run `make lock`"
        )
    assert _via_pyproject(LOCK) == {normalize(r.name) for r in reqs}, "lock and pyproject list other direct deps"
    # the pair DESIGN.md §9 asks for: the index's torch with its torchvision, not the local CPU-only 2.13.0
    assert locked["torch"] != "2.13.0" and locked["torchvision"].startswith("0.")


def test_every_pin_carries_a_hash():
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    pins = [b for b in blocks if re.match(PIN, b)]
    assert len(pins) == len(locked_versions(LOCK)) > 100
    unhashed = [b.split()[0] for b in pins if "--hash=sha256:" not in b]
    assert not unhashed, f"pins without a hash (uv pip sync --require-hashes refuses them): {unhashed}"


def test_check_refuses_a_stale_lock(tmp_path):
    for name in ("pyproject.toml", LOCK_NAME):
        shutil.copy(ROOT / name, tmp_path / name)
    check(tmp_path)  # this checkout's pair is consistent
    text = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace('"tqdm>=4.60",', '"tqdm>=4.60",\n    "rich>=13",'))
    with pytest.raises(DepthGError, match=r"changed since requirements\.lock was compiled: run `make lock`"):
        check(tmp_path)
    (tmp_path / LOCK_NAME).unlink()
    with pytest.raises(DepthGError, match="requirements.lock is missing"):
        check(tmp_path)


def test_lock_state_lists_packages_installed_at_other_versions(tmp_path):
    pytest_version = metadata.version("pytest")
    (tmp_path / LOCK_NAME).write_text(
        f"pytest=={pytest_version} \\\n    --hash=sha256:00\n"
        "Packaging==0.0.1 \\\n    --hash=sha256:11\n"
        "no-such-package-here==1.0\n"
    )
    state = lock_state(tmp_path)
    assert state["file"] == LOCK_NAME and len(state["sha256"]) == 64
    assert state["differs"] == {
        "packaging": {"locked": "0.0.1", "installed": metadata.version("packaging")},
        "no-such-package-here": {"locked": "1.0", "installed": None},
    }
    assert lock_state(tmp_path / "elsewhere") == {"file": None, "sha256": None, "differs": None}
