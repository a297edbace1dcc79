"""The identity of an ordered item list: which image each index of a split stands for.

A kNN file holds item indices (METHOD.md §1.5). They mean the right images only under the item order they were
computed on: the release numbers its five-crops in the order its source loader lists the images (torchvision's
unsorted ``os.listdir`` for Cityscapes), this project in sorted order, so a file of the right length can still pair
every image with another image's neighbours. Every kNN file and five-crop set therefore records the identity of its
ordered item list, the sha256 of the ordered item ids, and training refuses a kNN file whose identity is not its
training set's.

Item ids are the items' relative keys (``<city>/<stem>``, the COCO id, the synthetic ``00012``); a five-crop item is
``<source key>#<k>`` with k = 0..4 in five_crop's order (crop n = 5 i + k of source item i, METHOD.md §1.4). An
order file lists source keys, one per line, in order: the five-crop stage writes ``order_<split>.txt`` into its set;
for the authors' files the user writes them (the release's crop set ``cropped/.../order_<split>.txt``, its kNN file
``nns/<stem>.order.txt``), listing the items in the order the release used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from depthg.errors import DataError
from depthg.files import write_text

N_CROPS = 5  # = depthg.data.fivecrop.N_CROPS
ORDER_SUFFIX = ".order.txt"


def order_identity(item_ids: Sequence[str]) -> str:
    """sha256 (hex) of the ordered item ids joined by newlines: equal iff the same items in the same order."""
    return hashlib.sha256("\n".join(item_ids).encode("utf-8")).hexdigest()


def five_crop_ids(source_keys: Sequence[str]) -> list[str]:
    """Source keys in crop order -> the ids of their five-crops, ``<key>#<k>``, crop n = 5 i + k."""
    return [f"{key}#{k}" for key in source_keys for k in range(N_CROPS)]


def write_order_file(path: str | os.PathLike, keys: Sequence[str]) -> Path:
    return write_text(Path(path), "".join(k + "\n" for k in keys))


def read_order_file(path: str | os.PathLike) -> list[str]:
    """The keys of an order file (one per line, blank lines ignored); DataError if missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"order file {path} does not exist.")
    keys = [s.strip() for s in path.read_text().splitlines() if s.strip()]
    if not keys:
        raise DataError(f"order file {path} lists no items; write one relative item key per line, in order.")
    return keys
