"""Label mappings and class names of every dataset (METHOD.md §1.2).

Shapes: H, W label height and width. Every mapping takes a raw label array [H,W] as stored on disk and returns
int64 [H,W] with class ids 0..n_classes-1 and -1 = ignore (one convention everywhere: valid = 0 <= y < n,
METHOD.md §9 #20). A value that is neither a class nor ignore after mapping is a DataError naming the file: the
release silently turns such values into class 0 (COCO, Potsdam), which hides broken label files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# the generator owns its classes and colours
from depthg.data.synthetic.classes import CLASS_COLORS as SYNTHETIC_CLASS_COLORS
from depthg.data.synthetic.classes import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from depthg.errors import DataError
from depthg.paths import dataset_base

IGNORE = -1
DATASET_NAMES = ("cocostuff27", "cityscapes", "potsdam", "potsdamraw", "directory", "synthetic")

# ---- COCO-Stuff 182 fine ids -> 27 coarse ids (IIC curation, as in STEGO/DepthG src/data.py Coco) ---------------
# Coarse 0-11 are the thing supercategories, 12-26 the stuff supercategories. Fine ids are COCO-Stuff's 0-based
# label-map values (0 person ... 90 toothbrush are things, 91 banner ... 181 wood are stuff).
_COCO_THINGS = {  # coarse id: fine id range (inclusive), things are contiguous blocks
    0: (71, 76),
    1: (77, 82),
    2: (51, 60),
    3: (61, 70),
    4: (83, 90),
    5: (43, 50),
    6: (25, 32),
    7: (15, 24),
    8: (9, 14),
    9: (0, 0),
    10: (33, 42),
    11: (1, 8),
}
_COCO_STUFF = {  # coarse id: fine ids, stuff supercategories are scattered over 91..181
    12: (101, 102),
    13: (100, 113, 114, 115, 116, 117),
    14: (120, 121, 152, 169),
    15: (97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164),
    16: (99, 131, 138, 142),
    17: (91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167),
    18: tuple(range(170, 177)),
    19: (179, 180),
    20: (94, 95, 127, 150, 157, 165),
    21: (110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158),
    22: (93, 96, 118, 123, 128, 133, 141, 162, 168),
    23: (105, 156),
    24: (126, 134, 149, 159, 161, 181),
    25: (98, 112, 137, 145, 163),
    26: (119, 147, 154, 177, 178),
}


def _coco_table() -> np.ndarray:
    table = np.full(182, -2, np.int64)  # -2: not yet assigned (checked below)
    for coarse, (lo, hi) in _COCO_THINGS.items():
        table[lo : hi + 1] = coarse
    for coarse, fine in _COCO_STUFF.items():
        table[list(fine)] = coarse
    assert (table >= 0).all(), f"COCO fine ids without a coarse class: {np.flatnonzero(table < 0).tolist()}"
    return table


COCO_FINE_TO_COARSE = _coco_table()  # int64 [182]
COCO_FIRST_STUFF = 12

CITYSCAPES_FIRST_NONVOID = 7  # labelId 7 = road (DG src/data.py:475)
POTSDAM_FINE_TO_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}  # DG src/data.py:163-167; 255 -> ignore

COCO27_CLASS_NAMES = (  # DG src/train_segmentation.py:47-54, in coarse-id order
    "electronic",
    "appliance",
    "food",
    "furniture",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    "ceiling",
    "floor",
    "food",
    "furniture",
    "rawmaterial",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
)
CITYSCAPES27_CLASS_NAMES = (  # labelIds 7..33 (DG src/train_segmentation.py:38-45)
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)
POTSDAM3_CLASS_NAMES = ("roads and cars", "buildings and clutter", "trees and vegetation")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    n_classes: int
    class_names: tuple[str, ...]
    colors: np.ndarray | None = None  # uint8 [n,3] display colours where the dataset has its own, else None


def dataset_info(name: str, *, n_classes: int | None = None) -> DatasetInfo:
    """Classes of dataset ``name``. A ``directory:<folder>`` set has the ``n_classes`` given (model.n_classes), or
    n_classes = 0 and no names when none is given (its classes are not fixed by the dataset)."""
    base = dataset_base(name)
    if base == "cocostuff27":
        return DatasetInfo(name, 27, COCO27_CLASS_NAMES)
    if base == "cityscapes":
        return DatasetInfo(name, 27, CITYSCAPES27_CLASS_NAMES)
    if base in ("potsdam", "potsdamraw"):
        return DatasetInfo(name, 3, POTSDAM3_CLASS_NAMES)
    if base == "synthetic":
        return DatasetInfo(name, len(SYNTHETIC_CLASS_NAMES), SYNTHETIC_CLASS_NAMES, SYNTHETIC_CLASS_COLORS)
    if base == "directory":
        n = n_classes or 0
        return DatasetInfo(name, n, tuple(f"class {i}" for i in range(n)))
    raise DataError(
        f"unknown dataset {name!r}; valid datasets: {', '.join(DATASET_NAMES)} "
        f"(directory as 'directory:<folder under the data root>')."
    )


# ---- mappings: raw array as stored -> int64 with -1 = ignore ----------------------------------------------------


def _as_int(raw: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise DataError(f"label file {path} must hold a single-channel [H,W] map, got shape {raw.shape}.")
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.array_equal(raw, np.round(raw)):
            raise DataError(f"label file {path} holds non-integer values; labels must be class ids.")
    return raw.astype(np.int64)


def _bad_values(path, values, allowed: str) -> DataError:
    shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
    return DataError(
        f"label file {path} holds value(s) {shown} that are not {allowed}; the file is corrupt or "
        f"belongs to another dataset: replace it."
    )


def map_cocostuff27(raw: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """COCO-Stuff fine ids 0..181 -> 27 coarse ids; 255 (unlabeled) -> -1; anything else is a DataError."""
    fine = _as_int(raw, path)
    ignore = fine == 255
    bad = ~ignore & ((fine < 0) | (fine >= len(COCO_FINE_TO_COARSE)))
    if bad.any():
        raise _bad_values(path, np.unique(fine[bad]).tolist(), "COCO-Stuff fine ids 0..181 or 255 (unlabeled)")
    out = COCO_FINE_TO_COARSE[np.where(ignore, 0, fine)]
    out[ignore] = IGNORE
    return out


def map_cityscapes27(raw: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Cityscapes labelIds -> labelId - 7; negatives (void ids 0..6) -> -1.

    Results >= 27 (e.g. 255 - 7 in some converted files) are ignored (-1) too: the release leaves them in the
    tensor and drops them with its `0 <= y < 27` masks (METHOD.md §1.2), which is the same as ignoring them.
    """
    out = _as_int(raw, path) - CITYSCAPES_FIRST_NONVOID
    out[(out < 0) | (out >= len(CITYSCAPES27_CLASS_NAMES))] = IGNORE
    return out


def map_potsdam3(raw: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Potsdam fine {0,4} -> 0, {1,5} -> 1, {2,3} -> 2, 255 -> -1; any other value is a DataError (the release
    maps them silently to 0, DG src/data.py:231-235)."""
    fine = _as_int(raw, path)
    out = np.full(fine.shape, IGNORE, np.int64)
    known = fine == 255
    for f, c in POTSDAM_FINE_TO_COARSE.items():
        hit = fine == f
        out[hit] = c
        known |= hit
    if not known.all():
        raise _bad_values(path, np.unique(fine[~known]).tolist(), "Potsdam ids 0..5 or 255 (ignore)")
    return out


def map_plain(raw: np.ndarray, n_classes: int, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Labels stored as class ids with 255 = ignore (synthetic world, directory datasets)."""
    out = _as_int(raw, path)
    out[out == 255] = IGNORE
    return check_range(out, n_classes, path)


def map_cropped(raw: np.ndarray, n_classes: int, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Five-crop label PNGs store label + 1 as uint8, 0 = ignore (DG src/crop_datasets.py:189, data.py:900)."""
    return check_range(_as_int(raw, path) - 1, n_classes, path)


def check_range(label: np.ndarray, n_classes: int, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Refuse a mapped label holding a value that is neither a class 0..n_classes-1 nor ignore (-1)."""
    bad = (label < IGNORE) | (label >= n_classes)
    if bad.any():
        raise _bad_values(
            path, np.unique(label[bad]).tolist(), f"(after the label mapping) classes 0..{n_classes - 1} or ignore"
        )
    return label
