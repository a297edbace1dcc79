"""Every path the project uses comes from here (DESIGN.md §10.9): no absolute paths in code, configs or notebooks.

Roots can be moved with environment variables, so notebooks and CI can point at other places without edits:
``DEPTHG_DATA_DIR`` (datasets and derived data) and ``DEPTHG_RESULTS_DIR`` (tables, figures, runs).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


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
