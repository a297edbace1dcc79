"""The kNN file: nearest-neighbour indices with the metadata that says what they were computed on.

Shapes: N items of the split, k neighbours per item (30 as the release, METHOD.md §1.5). ``nns`` is int64 [N,k],
row i holding item i's neighbours by decreasing cosine similarity (column 0 is normally i itself).

Ours: ``<derived>/knn/nns_<backbone>_<split>_<crop>_<res>.npz`` holding ``nns`` and ``meta`` (a JSON string with
dataset, split, backbone, weights, res, crop, knn_features, n_items). The loader refuses a file whose metadata
does not match what training asks for, naming both values: the release looked files up by name only and its
precompute wrote res=392 under a name training read as 224 (METHOD.md §1.5, §9 #8).

The release's files ``<data>/nns/nns_<model_type>_<dataset>_<split>_<crop>_<res>.npz`` hold only ``nns``; their
metadata is parsed from the file name (crop "None" there is our "none"; model_type "vit_small" carries no patch
size, so it is compared with our backbone's family, e.g. vit_small_patch8 -> vit_small).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from depthg.errors import DataError
from depthg.files import atomic_write
from depthg.paths import data_root, derived_dir

FORMAT = "depthg-knn"
_LEGACY_NAME = re.compile(r"^nns_(?P<rest>.+)_(?P<split>[^_]+)_(?P<crop>[^_]+)_(?P<res>\d+)\.npz$")
_LEGACY_MODEL_TYPES = ("vit_small", "vit_base", "resnet50", "mae")


def knn_path(dataset: str, split: str, backbone: str, crop: str, res: int, data_dir=None) -> Path:
    """Where our kNN file of this dataset/split/backbone/crop/resolution lives."""
    return derived_dir(dataset, data_dir) / "knn" / f"nns_{backbone}_{split}_{crop}_{res}.npz"


def legacy_model_type(backbone: str) -> str:
    """Our timm-style backbone name -> the release's model_type (vit_small_patch8 -> vit_small)."""
    return re.sub(r"_patch\d+.*$", "", backbone)


def legacy_knn_path(dataset: str, split: str, backbone: str, crop: str, res: int, data_dir=None) -> Path:
    """The release's file name (DG src/data.py:1056-1057); its crop is "five" or "None"."""
    crop = "None" if crop == "none" else crop
    return data_root(data_dir) / "nns" / f"nns_{legacy_model_type(backbone)}_{dataset}_{split}_{crop}_{res}.npz"


def save_knn(path: str | os.PathLike, nns: np.ndarray, *, dataset: str, split: str, backbone: str, weights: str,
             res: int, crop: str, knn_features: str) -> Path:
    """Write ``nns`` int [N,k] with its metadata; written to a temporary name and renamed (never half a file)."""
    nns = np.asarray(nns)
    assert nns.ndim == 2 and np.issubdtype(nns.dtype, np.integer), f"nns must be int [N,k], got {nns.dtype} {nns.shape}"
    n = nns.shape[0]
    if nns.size and (nns.min() < 0 or nns.max() >= n):
        raise DataError(f"refusing to write kNN file {path}: indices must lie in 0..{n - 1}")
    meta = dict(format=FORMAT, dataset=dataset, split=split, backbone=backbone, weights=str(weights), res=int(res),
                crop=crop, knn_features=knn_features, n_items=int(n))
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy appends no second .npz
        np.savez_compressed(fh, nns=nns.astype(np.int64), meta=np.array(json.dumps(meta)))
    return path


def load_knn(path: str | os.PathLike, *, expect: dict | None = None) -> tuple[np.ndarray, dict]:
    """(nns int64 [N,k], metadata). Every key of ``expect`` present in the metadata must match; ``expect["n_items"]``
    (the dataset's length) must equal N, and every index must lie in 0..N-1. Mismatches raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"kNN file {path} does not exist; create it with `python -m depthg prep knn ...`.")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "nns" not in z.files:
                raise DataError(f"kNN file {path} has no 'nns' array; recreate it with `python -m depthg prep knn`.")
            nns = z["nns"]
            meta = json.loads(str(z["meta"])) if "meta" in z.files else _legacy_meta(path)
    except DataError:
        raise
    except Exception as e:  # zip/npz/JSON errors of a corrupt file
        raise DataError(f"kNN file {path} cannot be read ({e}); recreate it with `python -m depthg prep knn`.") from e
    if nns.ndim != 2 or not np.issubdtype(nns.dtype, np.integer):
        raise DataError(f"kNN file {path}: 'nns' must be an integer [N,k] array, got {nns.dtype} {nns.shape}.")
    meta.setdefault("n_items", int(nns.shape[0]))
    _check(path, meta, nns, dict(expect or {}))
    return nns.astype(np.int64), meta


def _legacy_meta(path: Path) -> dict:
    m = _LEGACY_NAME.match(path.name)
    if m is None:
        raise DataError(f"kNN file {path} has no metadata and its name does not follow the release's "
                        f"nns_<model_type>_<dataset>_<split>_<crop>_<res>.npz; recreate it with "
                        f"`python -m depthg prep knn`.")
    rest = m["rest"]
    model_type = next((t for t in _LEGACY_MODEL_TYPES if rest.startswith(t + "_")), rest.split("_", 1)[0])
    crop = m["crop"]
    return dict(format="release", dataset=rest[len(model_type) + 1:], split=m["split"], backbone=model_type,
                res=int(m["res"]), crop="none" if crop == "None" else crop, legacy=True)


def _check(path: Path, meta: dict, nns: np.ndarray, expect: dict) -> None:
    n_items = expect.pop("n_items", None)
    for key, want in expect.items():
        if key not in meta:
            continue
        have = meta[key]
        if key == "backbone" and meta.get("legacy"):
            want = legacy_model_type(str(want))
        if str(have) != str(want):
            raise DataError(f"kNN file {path} was computed for {key}={have!r} but training asks for {key}={want!r}; "
                            f"use the matching file or create one with `python -m depthg prep knn` "
                            f"(its --{key.replace('_', '-')} option).")
    n = nns.shape[0]
    if n_items is not None and n != n_items:
        raise DataError(f"kNN file {path} has {n} rows but the dataset has {n_items} items; it belongs to another "
                        f"version of the data: recreate it with `python -m depthg prep knn --overwrite`.")
    if nns.size and (nns.min() < 0 or nns.max() >= n):
        raise DataError(f"kNN file {path} holds indices outside 0..{n - 1} (found {nns.min()}..{nns.max()}); "
                        f"recreate it with `python -m depthg prep knn --overwrite`.")
