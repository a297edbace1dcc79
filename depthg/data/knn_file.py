"""The kNN file: nearest-neighbour indices with the metadata that says what they were computed on.

Shapes: N items of the split, k neighbours per item (30 as the release, METHOD.md §1.5). ``nns`` is int64 [N,k],
row i holding item i's neighbours by decreasing cosine similarity (column 0 is normally i itself).

Ours: ``<derived>/knn/nns_<backbone>_<split>_<crop>_<res>.npz`` holding ``nns`` and ``meta`` (a JSON string with
dataset, split, backbone, weights, res, crop, knn_features, n_items, and ``order``: the identity of the ordered item
list the indices refer to, :mod:`depthg.data.item_order`). The loader refuses a file whose metadata does not match
what training asks for, naming both values: the release looked files up by name only and its precompute wrote
res=392 under a name training read as 224 (METHOD.md §1.5, §9 #8); an item count that matches is not enough, the
order must too.

The release's files ``<data>/nns/nns_<model_type>_<dataset>_<split>_<crop>_<res>.npz`` hold only ``nns``; their
metadata is parsed from the file name (crop "None" there is our "none"; model_type "vit_small" carries no patch
size, so it is compared with our backbone's family, e.g. vit_small_patch8 -> vit_small). Its item order comes from
``<stem>.order.txt`` beside it (the source keys in the order the release numbered them); without that file a
release kNN file is refused, since nothing says which images its indices mean.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from depthg.data.item_order import ORDER_SUFFIX, five_crop_ids, order_identity, read_order_file
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


def save_knn(
    path: str | os.PathLike,
    nns: np.ndarray,
    *,
    dataset: str,
    split: str,
    backbone: str,
    weights: str,
    res: int,
    crop: str,
    knn_features: str,
    order: str | None = None,
    order_source: str | None = None,
) -> Path:
    """Write ``nns`` int [N,k] with its metadata; written to a temporary name and renamed (never half a file).

    ``order`` is the identity of the ordered items the rows index (depthg.data.item_order) and ``order_source`` the
    file it was read from, for error messages."""
    nns = np.asarray(nns)
    assert nns.ndim == 2 and np.issubdtype(nns.dtype, np.integer), f"nns must be int [N,k], got {nns.dtype} {nns.shape}"
    n = nns.shape[0]
    if nns.size and (nns.min() < 0 or nns.max() >= n):
        raise DataError(f"refusing to write kNN file {path}: indices must lie in 0..{n - 1}")
    meta = dict(
        format=FORMAT,
        dataset=dataset,
        split=split,
        backbone=backbone,
        weights=str(weights),
        res=int(res),
        crop=crop,
        knn_features=knn_features,
        n_items=int(n),
        order=order,
        order_source=order_source,
    )
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy appends no second .npz
        np.savez_compressed(fh, nns=nns.astype(np.int64), meta=np.array(json.dumps(meta)))
    return path


def load_knn(path: str | os.PathLike, *, expect: dict | None = None) -> tuple[np.ndarray, dict]:
    """(nns int64 [N,k], metadata). Every key of ``expect`` present in the metadata must match; ``expect["n_items"]``
    (the dataset's length) must equal N, and every index must lie in 0..N-1. ``expect["order"]`` (with
    ``expect["order_source"]`` naming where the training items' order comes from) must equal the file's recorded
    item order, which a file without one fails. Mismatches raise DataError."""
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
        raise DataError(
            f"kNN file {path} has no metadata and its name does not follow the release's "
            f"nns_<model_type>_<dataset>_<split>_<crop>_<res>.npz; recreate it with "
            f"`python -m depthg prep knn`."
        )
    rest = m["rest"]
    model_type = next((t for t in _LEGACY_MODEL_TYPES if rest.startswith(t + "_")), rest.split("_", 1)[0])
    crop = m["crop"]
    order_file = path.with_suffix(ORDER_SUFFIX)
    order = None
    if order_file.is_file():
        keys = read_order_file(order_file)
        order = order_identity(five_crop_ids(keys) if crop == "five" else keys)
    return dict(
        format="release",
        dataset=rest[len(model_type) + 1 :],
        split=m["split"],
        backbone=model_type,
        res=int(m["res"]),
        crop="none" if crop == "None" else crop,
        legacy=True,
        order=order,
        order_source=str(order_file),
    )


def _check(path: Path, meta: dict, nns: np.ndarray, expect: dict) -> None:
    n_items = expect.pop("n_items", None)
    check_order = "order" in expect
    order, order_source = expect.pop("order", None), expect.pop("order_source", "the training items")
    rebuild = expect.pop("rebuild", "`python -m depthg prep knn ... --overwrite`")
    if check_order:
        _check_order(path, meta, order, order_source, rebuild)
    for key, want in expect.items():
        if key not in meta:
            continue
        have = meta[key]
        if key == "backbone" and meta.get("legacy"):
            want = legacy_model_type(str(want))
        if str(have) != str(want):
            raise DataError(
                f"kNN file {path} was computed for {key}={have!r} but training asks for {key}={want!r}; "
                f"use the matching file or create one with `python -m depthg prep knn` "
                f"(its --{key.replace('_', '-')} option)."
            )
    n = nns.shape[0]
    if n_items is not None and n != n_items:
        raise DataError(
            f"kNN file {path} has {n} rows but the dataset has {n_items} items; it belongs to another "
            f"version of the data: recreate it with `python -m depthg prep knn --overwrite`."
        )
    if nns.size and (nns.min() < 0 or nns.max() >= n):
        raise DataError(
            f"kNN file {path} holds indices outside 0..{n - 1} (found {nns.min()}..{nns.max()}); "
            f"recreate it with `python -m depthg prep knn --overwrite`."
        )


def _check_order(path: Path, meta: dict, order: str | None, order_source: str, command: str) -> None:
    """The kNN file's recorded item order must be the training items' (depthg.data.item_order)."""
    rebuild = f"rebuild it with {command}"
    if order is None:
        raise DataError(
            f"the order of the training items is unknown ({order_source} does not exist), so kNN file "
            f"{path} cannot be checked against them; write {order_source} (the source item keys in the "
            f"order the crops were numbered) or rerun `python -m depthg prep fivecrop ... --overwrite`, "
            f"then {rebuild}."
        )
    have = meta.get("order")
    if have is None and meta.get("legacy"):
        raise DataError(
            f"the release's kNN file {path} comes without the item order it was built on: write "
            f"{meta['order_source']} listing its items (source keys, one per line) in the release's order "
            f"(torchvision's os.listdir order for Cityscapes, the curated list's order for COCO), or "
            f"{rebuild}."
        )
    if have is None:
        raise DataError(
            f"kNN file {path} records no item order (made before item identities were recorded), so "
            f"its indices cannot be matched to the training items ({order_source}); {rebuild}."
        )
    if have != order:
        raise DataError(
            f"kNN file {path} indexes another item order ({meta.get('order_source') or 'its own'}, "
            f"sha256 {have[:12]}) than the training items ({order_source}, sha256 {order[:12]}): its "
            f"partners would belong to other images. Use the kNN file of these items or {rebuild}."
        )
