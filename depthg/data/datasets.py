"""Datasets: full-resolution source sets per layout and the five-crop sets (training views: depthg.data.pairs).

Shapes: H, W source size; R side of the square crop; N items; k kNN columns.

Source sets (METHOD.md §1.1 layouts under ``data_root(data_dir)``) return, without resizing, dicts
``{"key", "image": PIL RGB, "label": int64 [H,W] (-1 ignore) or None, "depth": float32 [H,W] or None,
"depth_bits": 8 | 16 | None, "depth_units"}``. ``key`` is the item's relative stem, which names its derived files.
Depth is looked up in our files first (``<derived>/depth/<split>/<key>.png``, 16-bit), then at the release's
intended ``_zoedepth.png`` location (METHOD.md §1.3); a missing file is a DataError in every fidelity (data
contract), never zeros as in the release (DG src/data.py:211-216).

Training reads the five-crop set for every dataset except Potsdam (never cropped, METHOD.md §1.1): ours under
``<derived>/five_crop_<ratio>/`` (PNG images), else the release's ``cropped/<dataset>_five_crop_<ratio>/`` (JPEG
images, ``<n>_zoedepth.png`` depth). ``directory`` datasets are named ``directory:<folder>``
(``<data>/<folder>/imgs/<split>/*``, optional ``labels/<split>/<stem>.png`` with class ids, 255 = ignore).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from torch.utils.data import Dataset

from depthg.data import labels as L
from depthg.data.depth_io import read_depth
from depthg.data.labels import dataset_info
from depthg.errors import DataError
from depthg.paths import data_root, dataset_base, dataset_folder, derived_dir

__all__ = ["dataset_info", "source_dataset", "five_crop_dataset", "train_source"]
_UNCROPPED = ("potsdam", "potsdamraw")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _prep(stage: str, name: str, extra: str = "") -> str:
    return f"`python -m depthg prep {stage} --dataset {name}{extra}`"


def _root(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise DataError(f"dataset {name!r}: {path} does not exist. Put the dataset there in the layout of "
                        f"METHOD.md §1.1 (STEGO's preprocessed download), or point data.data_dir / DEPTHG_DATA_DIR "
                        f"at the folder that holds it.")
    return path


def _read_lines(path: Path, name: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"dataset {name!r}: split list {path} does not exist; it ships with the dataset download.")
    return [s.strip() for s in path.read_text().splitlines() if s.strip()]


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"image file {path} does not exist; restore it or remove its id from the split list.")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for truncated or non-image files
        raise DataError(f"image file {path} cannot be read ({e}); replace it with a valid image.") from e


def _open_label(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"label file {path} does not exist; restore it from the dataset download.")
    try:
        with Image.open(path) as img:
            return np.asarray(img)  # P and L modes give the stored ids, not a palette colour
    except Exception as e:
        raise DataError(f"label file {path} cannot be read ({e}); restore it from the dataset download.") from e


def _load_mat(path: Path, key: str, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist; restore it from the Potsdam download.")
    try:
        return np.asarray(loadmat(str(path))[key])
    except Exception as e:
        raise DataError(f"{what} file {path} cannot be read or has no {key!r} array ({e}); restore it.") from e


def _potsdam_rgb(a: np.ndarray, path: Path) -> Image.Image:
    """Potsdam 'img' [H,W,4] (RGB + IR) -> RGB. uint8 is used as is; float in [0,1] becomes floor(255 x), as the
    release's to_pil_image (DG src/data.py:186); float or int in 0..255 is rounded. Other ranges are refused.
    (A float image whose maximum is <= 1 is read as [0,1]; an almost black 0..255 image would be misread.)"""
    if a.ndim != 3 or a.shape[2] < 3:
        raise DataError(f"image file {path}: 'img' must be [H,W,3 or 4], got shape {a.shape}.")
    rgb = a[..., :3]  # the IR channel is unused, as in the release
    if rgb.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(rgb))
    lo, hi = float(rgb.min()), float(rgb.max())
    if lo < 0 or hi > 255 or not np.isfinite(rgb).all():
        raise DataError(f"image file {path}: 'img' values span {lo}..{hi}; expected uint8, [0,1] or 0..255.")
    if np.issubdtype(rgb.dtype, np.floating) and hi <= 1:
        x = np.floor(rgb.astype(np.float32) * np.float32(255))  # float32 mul + truncation = torch's .mul(255).byte()
    else:
        x = np.round(rgb)
    return Image.fromarray(np.ascontiguousarray(x.astype(np.uint8)))


class SourceDataset(Dataset):
    """Full-resolution items of one split. Subclasses list the keys (:meth:`_set_keys`) and say where an item's
    image and label files are (:meth:`image_path`, :meth:`label_path`) and how to read them."""

    def __init__(self, name: str, split: str, *, with_depth: bool, n_classes: int | None = None,
                 derived_name: str | None = None, data_dir=None):
        self.name, self.split, self.with_depth = name, split, with_depth
        # directory sets without a given class count accept any stored id 0..254 (255 = ignore)
        self.n_classes = dataset_info(name, n_classes=n_classes).n_classes or 255
        self._keys: list[str] = []
        # where depth is looked for, in order: (folder, file name pattern of the key); ours first (data contract)
        self.depth_locations = [(derived_dir(derived_name or name, data_dir) / "depth" / split, "{}.png")]
        self.depth_hint = _prep("depth", name)

    def _set_keys(self, keys: list[str], where: Path) -> None:
        if not keys:
            raise DataError(f"dataset {self.name!r} split {self.split!r} has no items in {where}; check the layout "
                            f"(METHOD.md §1.1) and data.data_dir.")
        self._keys = keys

    def keys(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def image_path(self, i: int) -> Path:
        raise NotImplementedError

    def label_path(self, i: int) -> Path | None:
        """None for unlabelled sets."""
        raise NotImplementedError

    def read_image(self, path: Path) -> Image.Image:
        return _open_image(path)

    def read_label(self, path: Path) -> np.ndarray:
        """The stored label mapped to int64 classes with -1 = ignore (depthg.data.labels)."""
        raise NotImplementedError

    def depth_paths(self, i: int) -> list[Path]:
        return [folder / pattern.format(self._keys[i]) for folder, pattern in self.depth_locations]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self._keys):
            raise IndexError(f"{self.name}/{self.split}: index {i} outside 0..{len(self._keys) - 1}")
        key, image, label_path = self._keys[i], self.read_image(self.image_path(i)), self.label_path(i)
        label = None if label_path is None else self.read_label(label_path)
        size = (image.height, image.width)
        if label is not None and label.shape != size:
            raise DataError(f"label file {label_path} is {label.shape} but its image {self.image_path(i)} is {size}; "
                            f"the label does not belong to this image: restore it from the dataset download.")
        item = dict(key=key, image=image, label=label, depth=None, depth_bits=None, depth_units=None,
                    depth_range=None)
        if self.with_depth:
            paths = self.depth_paths(i)
            path = next((p for p in paths if p.is_file()), None)
            if path is None:
                raise DataError(f"{self.name}/{self.split} item {key!r} has no depth map (looked for "
                                f"{', '.join(map(str, paths))}); create them with {self.depth_hint}.")
            depth, meta = read_depth(path, with_meta=True)
            if depth.shape != size:
                raise DataError(f"depth file {path} is {depth.shape} but its image is {size}; regenerate it with "
                                f"{self.depth_hint} (--overwrite).")
            crop = meta.get("five_crop") or {}
            source_range = (crop["source_min"], crop["source_max"], crop.get("source_bits")) \
                if "source_min" in crop else None
            item.update(depth=depth, depth_bits=meta["bits"], depth_units=meta.get("units"), depth_range=source_range)
        return item


class CocoStuff27(SourceDataset):
    """cocostuff/: curated train list (subset None) / val list subset 7 (METHOD.md §1.1, DG src/data.py:318-324)."""

    _LISTS = {"train": ("train2017", "Coco164kFull_Stuff_Coarse.txt"),
              "val": ("val2017", "Coco164kFull_Stuff_Coarse_7.txt")}

    def __init__(self, data_dir, split: str, *, with_depth: bool = True):
        super().__init__("cocostuff27", split, with_depth=with_depth, data_dir=data_dir)
        self.root = _root(data_root(data_dir) / "cocostuff", self.name)
        self.dir, list_name = _split_value(self._LISTS, split, self.name)
        split_list = self.root / "curated" / self.dir / list_name
        self._set_keys(_read_lines(split_list, self.name), split_list)
        self.depth_locations.append((self.root / "depth" / self.dir, "{}_zoedepth.png"))

    def image_path(self, i):
        return self.root / "images" / self.dir / f"{self._keys[i]}.jpg"

    def label_path(self, i):
        return self.root / "annotations" / self.dir / f"{self._keys[i]}.png"

    def read_label(self, path):
        return L.map_cocostuff27(_open_label(path), path)


class Cityscapes27(SourceDataset):
    """cityscapes/leftImg8bit/<split>/<city>/<stem>.png with gtFine labelIds; keys ``<city>/<stem>``, sorted (the
    release's torchvision loader used unsorted os.listdir order)."""

    def __init__(self, data_dir, split: str, *, with_depth: bool = True):
        super().__init__("cityscapes", split, with_depth=with_depth, data_dir=data_dir)
        self.root = _root(data_root(data_dir) / "cityscapes", self.name)
        images = _root(self.root / "leftImg8bit" / split, f"{self.name}/{split}")
        self._set_keys(sorted(f"{p.parent.name}/{p.stem}" for p in images.glob("*/*_leftImg8bit.png")), images)
        self.depth_locations.append((self.root / "depth" / split, "{}_zoedepth.png"))  # stem keeps _leftImg8bit

    def image_path(self, i):
        return self.root / "leftImg8bit" / self.split / f"{self._keys[i]}.png"

    def label_path(self, i):
        stem = self._keys[i][: -len("_leftImg8bit")]
        return self.root / "gtFine" / self.split / f"{stem}_gtFine_labelIds.png"

    def read_label(self, path):
        return L.map_cityscapes27(_open_label(path), path)


class Potsdam(SourceDataset):
    """potsdam/{imgs,gt}/<id>.mat; train = labelled_train.txt, val = labelled_test.txt (DG src/data.py:144-151).
    potsdamraw/processed/{imgs,gt}/<im>_<ih>_<iw>.mat (``raw=True``): all tiles in (im, ih, iw) order for every
    split, as the release (DG src/data.py:244-292); no release depth, ours is used when prepared."""

    _LISTS = {"train": "labelled_train.txt", "val": "labelled_test.txt"}

    def __init__(self, data_dir, split: str, *, with_depth: bool = True, raw: bool = False):
        name = "potsdamraw" if raw else "potsdam"
        super().__init__(name, split, with_depth=with_depth, data_dir=data_dir)
        if raw:
            self.root = _root(data_root(data_dir) / "potsdamraw" / "processed", name)
            stems = [p.stem for p in _root(self.root / "imgs", name).glob("*.mat")]
            self._set_keys(sorted((s for s in stems if re.fullmatch(r"\d+_\d+_\d+", s)),
                                  key=lambda s: tuple(int(x) for x in s.split("_"))), self.root / "imgs")
        else:
            self.root = _root(data_root(data_dir) / "potsdam", name)
            split_list = self.root / _split_value(self._LISTS, split, name)
            self._set_keys(_read_lines(split_list, name), split_list)
            self.depth_locations.append((self.root / "zoe_depth" / split / "imgs", "{}_zoedepth.png"))
        self.has_labels = (self.root / "gt").is_dir() or not raw  # potsdamraw may come without gt/

    def image_path(self, i):
        return self.root / "imgs" / f"{self._keys[i]}.mat"

    def label_path(self, i):
        return self.root / "gt" / f"{self._keys[i]}.mat" if self.has_labels else None

    def read_image(self, path):
        return _potsdam_rgb(_load_mat(path, "img", "image"), path)

    def read_label(self, path):
        return L.map_potsdam3(np.squeeze(_load_mat(path, "gt", "label")), path)


class Folder(SourceDataset):
    """A folder of images: ``<stem>.{jpg,png}`` in ``img_dir``, labels ``<stem>.png`` in ``label_dir`` (optional,
    mapped by ``map_label(raw, n_classes, path)``), numeric stems in numeric order."""

    def __init__(self, name, split, img_dir: Path, label_dir: Path | None, map_label, *, with_depth: bool,
                 n_classes=None, derived_name=None, data_dir=None, suffixes=_IMAGE_SUFFIXES):
        super().__init__(name, split, with_depth=with_depth, n_classes=n_classes, derived_name=derived_name,
                         data_dir=data_dir)
        self.img_dir, self.label_dir, self.map_label = _root(img_dir, f"{name}/{split}"), label_dir, map_label
        files = {p.stem: p for p in self.img_dir.iterdir() if p.suffix.lower() in suffixes}
        self._set_keys(sorted(files, key=lambda s: (len(s), s) if s.isdigit() else (0, s)), self.img_dir)
        self._files = [files[k] for k in self._keys]

    def image_path(self, i):
        return self._files[i]

    def label_path(self, i):
        return None if self.label_dir is None else self.label_dir / f"{self._keys[i]}.png"

    def read_label(self, path):
        return self.map_label(_open_label(path), self.n_classes, path)


def _directory(folder: str, data_dir, split: str, with_depth: bool, n_classes: int | None) -> Folder:
    root = _root(data_root(data_dir) / folder, f"directory:{folder}")
    labels = root / "labels" / split if (root / "labels").is_dir() else None
    return Folder(f"directory:{folder}", split, root / "imgs" / split, labels, L.map_plain, with_depth=with_depth,
                  n_classes=n_classes, derived_name=folder, data_dir=data_dir)


def _synthetic(data_dir, split: str, with_depth: bool) -> Folder:
    """<data>/synthetic/{img,label,depth}/<split>/<n:05d>.png (depthg.data.synthetic)."""
    root = _root(data_root(data_dir) / "synthetic", "synthetic")
    ds = Folder("synthetic", split, root / "img" / split, root / "label" / split, L.map_plain,
                with_depth=with_depth, data_dir=data_dir, suffixes=(".png",))
    ds.depth_locations.append((root / "depth" / split, "{}.png"))
    ds.depth_hint = "`python -m depthg prep synthetic`"
    return ds


def five_crop_dataset(name: str, data_dir, split: str, *, ratio: float = 0.5, with_depth: bool = True,
                      n_classes: int | None = None) -> Folder:
    """The five-crop set of ``name`` (METHOD.md §1.4): ours, else the release's ``cropped/`` set."""
    derived_name = dataset_folder(name)
    # = depthg.data.fivecrop.five_crop_dir (not imported: the prep stages depend on this module, not the reverse)
    ours = derived_dir(derived_name, data_dir) / f"five_crop_{ratio:g}"
    legacy = data_root(data_dir) / "cropped" / f"{derived_name}_five_crop_{ratio:g}"
    root = ours if (ours / "img" / split).is_dir() else legacy
    if not (root / "img" / split).is_dir():
        raise DataError(f"no five-crop set for {name}/{split} (looked in {ours} and {legacy}); create it with "
                        f"{_prep('fivecrop', name, f' --splits {split} --ratio {ratio:g}')}.")
    is_legacy = root == legacy
    label_dir = root / "label" / split
    ds = Folder(name, split, root / "img" / split, label_dir if label_dir.is_dir() else None, L.map_cropped,
                with_depth=with_depth, n_classes=n_classes, derived_name=derived_name, data_dir=data_dir,
                suffixes=(".jpg",) if is_legacy else (".png",))
    missing = sorted(set(range(len(ds))) - {int(k) for k in ds.keys() if k.isdigit()})
    if missing:
        raise DataError(f"five-crop set {root / 'img' / split} lacks crop(s) {missing[:10]}; rerun "
                        f"{_prep('fivecrop', name, f' --splits {split}')}.")
    # the crops carry their own depth: ours 16-bit <n>.png, the release's 8-bit <n>_zoedepth.png
    ds.depth_locations = [(root / "depth" / split, "{}_zoedepth.png" if is_legacy else "{}.png")]
    ds.depth_hint = _prep("depth", name) + " then " + _prep("fivecrop", name, " --overwrite")
    return ds


def source_dataset(name: str, data_dir=None, split: str = "train", *, with_depth: bool = True,
                   n_classes: int | None = None) -> SourceDataset:
    """Full-resolution items of ``split`` of dataset ``name`` (see the module docstring)."""
    base = dataset_base(name)
    dataset_info(name, n_classes=n_classes if base == "directory" else None)  # unknown name -> DataError
    if base == "directory":
        if ":" not in name:
            raise DataError("name a directory dataset 'directory:<folder>', the folder under the data root that "
                            "holds imgs/<split>/.")
        return _directory(dataset_folder(name), data_dir, split, with_depth, n_classes)
    if base == "synthetic":
        return _synthetic(data_dir, split, with_depth)
    if base in ("potsdam", "potsdamraw"):
        return Potsdam(data_dir, split, with_depth=with_depth, raw=base == "potsdamraw")
    return {"cocostuff27": CocoStuff27, "cityscapes": Cityscapes27}[base](data_dir, split, with_depth=with_depth)


def effective_crop(name: str, crop: str) -> str:
    """Potsdam is never cropped (METHOD.md §1.1): its training items are the source images whatever crop_type says."""
    return "none" if name in _UNCROPPED else crop


def train_source(name: str, data_dir=None, split: str = "train", *, crop: str = "five", ratio: float = 0.5,
                 with_depth: bool = True, n_classes: int | None = None) -> SourceDataset:
    """The items training (and the kNN stage) uses: the five-crop set, or the source set when not cropped."""
    if effective_crop(name, crop) == "five":
        dataset_info(name, n_classes=n_classes)
        return five_crop_dataset(name, data_dir, split, ratio=ratio, with_depth=with_depth, n_classes=n_classes)
    return source_dataset(name, data_dir, split, with_depth=with_depth, n_classes=n_classes)


def _split_value(table: dict, split: str, name: str):
    if split not in table:
        raise DataError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(table)}.")
    return table[split]
