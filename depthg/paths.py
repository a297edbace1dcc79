"""Every path the project uses comes from here (DESIGN.md §10.9): no absolute paths in code, configs or notebooks.

Roots can be moved with environment variables, so notebooks and CI can point at other places without edits:
``DEPTHG_DATA_DIR`` (datasets and derived data) and ``DEPTHG_RESULTS_DIR`` (tables, figures, runs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from depthg.errors import ConfigError


def repo_root() -> Path:
    """The checkout holding this package (the folder with pyproject.toml)."""
    return Path(__file__).resolve().parent.parent


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Root of all datasets: the explicit ``data_dir`` if given, else $DEPTHG_DATA_DIR, else <repo>/data."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("DEPTHG_DATA_DIR")
    return Path(env).expanduser().resolve() if env else repo_root() / "data"


def results_root(results_dir: str | os.PathLike | None = None) -> Path:
    """Root of results: the explicit ``results_dir`` if given, else $DEPTHG_RESULTS_DIR, else <repo>/results."""
    if results_dir:
        return Path(results_dir).expanduser().resolve()
    env = os.environ.get("DEPTHG_RESULTS_DIR")
    return Path(env).expanduser().resolve() if env else repo_root() / "results"


def derived_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where the preparation stages of ``dataset`` write (crops, depth, kNN): <data>/<dataset>/derived.

    Derived data never goes into a source image folder (METHOD.md §9 #7). ``dataset`` may be a dataset name
    (``directory:<folder>`` -> <data>/<folder>/derived) or a folder name.
    """
    return data_root(data_dir) / dataset_folder(dataset) / "derived"


def dataset_base(dataset: str) -> str:
    """The kind of a dataset name: ``directory:<folder>`` -> ``directory``; other names unchanged. The one parser
    of the ``directory:<folder>`` form."""
    return dataset.split(":", 1)[0]


def dataset_folder(dataset: str) -> str:
    """The folder of a dataset under the data root: ``<folder>`` for ``directory:<folder>``, else the name."""
    return dataset.split(":", 1)[-1]


def runs_dir(results_dir: str | os.PathLike | None = None) -> Path:
    return results_root(results_dir) / "runs"


def figures_dir(results_dir: str | os.PathLike | None = None) -> Path:
    return results_root(results_dir) / "figures"


def file_tag(dataset: str) -> str:
    """A dataset name usable in file names (directory:<folder> -> directory-<folder>)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset)


def bundled_weights_path(backbone: str) -> Path:
    """The project's own pretrained weights of ``backbone`` (DINO on the synthetic world's training images, made by
    ``python -m depthg prep pretrain``), shipped in the package: depthg/assets/<backbone>_synthetic_dino.safetensors
    with its manifest (.json) beside it."""
    return Path(__file__).resolve().parent / "assets" / f"{backbone}_synthetic_dino.safetensors"


# ---- run folders -------------------------------------------------------------------------------------------------


def run_name(dataset: str, preset: str, seed: int, *, kind: str | None = None) -> str:
    """The default name of a run folder: ``[<kind>-][<dataset>-]<preset>-seed<seed>``.

    The dataset is left out only where the preset's name already says it (``synthetic-seed0``,
    ``potsdam_vits8-seed0`` for Potsdam), so ``potsdamraw`` trained with ``potsdam_vits8`` is
    ``potsdamraw-potsdam_vits8-seed0`` and a folder of photos trained with ``synthetic`` is
    ``directory-<folder>-synthetic-seed0``. ``kind`` prefixes other uses (``eval``, ``figures``). Runs that differ
    in anything else (an override) share the name; :func:`claim_run_dir` refuses to mix them.
    """
    tag, preset = file_tag(dataset), file_tag(preset)
    said = preset == tag or preset.startswith(f"{tag}_")
    return "-".join(p for p in (kind, None if said else tag, preset, f"seed{seed}") if p)


def git(*args: str, root: Path | None = None) -> str | None:
    """stdout of ``git <args>`` in the checkout (10 s limit); None outside a git work tree or without git."""
    try:
        return subprocess.run(
            ["git", *args], cwd=root or repo_root(), capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def committed_files(path: str | os.PathLike) -> list[str]:
    """Files under ``path`` that git tracks in this checkout (results a commit holds); [] outside a git tree."""
    path = Path(path).resolve()
    root = repo_root()
    if not path.is_relative_to(root):
        return []
    return (git("ls-files", "--", str(path.relative_to(root))) or "").split()


def claim_run_dir(run_dir: str | os.PathLike, config: dict, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check that a run of ``config`` (a resolved config as a dict) may write ``run_dir``; return it.

    Refused, with the ways out, unless ``overwrite``: a folder whose ``config.json`` is another config, and a folder
    holding results the repository commits (``make reproduce`` asks for those). A folder of the same config is the
    same experiment and is rerun. With ``resume`` the checkpoint decides (depthg.training.checkpoints refuses an
    incompatible config and allows, e.g., more iterations).
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.json"
    if overwrite or resume or not saved.is_file():
        return run_dir
    ways = (
        "pass another run name (--run-name NAME / -p run_name NAME), another results folder (--results-dir / "
        "-p results_dir), or --overwrite (-p overwrite True) to replace it"
    )
    try:
        other = json.loads(saved.read_text())
    except (OSError, ValueError):
        other = None
    if other != config:
        diff = sorted(_differences(other, config)) if isinstance(other, dict) else ["unreadable config.json"]
        shown = ", ".join(diff[:6]) + (", ..." if len(diff) > 6 else "")
        raise ConfigError(f"run folder {run_dir} holds a run of another config ({shown}); {ways}.")
    tracked = committed_files(run_dir)
    if tracked:
        raise ConfigError(
            f"run folder {run_dir} holds results committed to the repository ({len(tracked)} files, "
            f"e.g. {tracked[0]}); a run of your own would replace them: {ways}."
        )
    return run_dir


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out
