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

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from torch.utils.data import Dataset

from depthg.data import labels as L
from depthg.data.depth_io import RELEASED_MAPS_MODEL, depth_model_of, read_depth
from depthg.data.item_order import five_crop_ids, order_identity, read_order_file
from depthg.data.labels import dataset_info
from depthg.errors import DataError
from depthg.files import is_temp
from depthg.paths import data_root, dataset_base, dataset_folder, derived_dir

__all__ = ["dataset_info", "source_dataset", "five_crop_dataset", "train_source"]
_UNCROPPED = ("potsdam", "potsdamraw")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _prep(stage: str, name: str, extra: str = "") -> str:
    return f"`python -m depthg prep {stage} --dataset {name}{extra}`"


def _root(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise DataError(
            f"dataset {name!r}: {path} does not exist. Put the dataset there in the layout of "
            f"METHOD.md §1.1 (STEGO's preprocessed download), or point data.data_dir / DEPTHG_DATA_DIR "
            f"at the folder that holds it."
        )
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

    def __init__(
        self,
        name: str,
        split: str,
        *,
        with_depth: bool,
        n_classes: int | None = None,
        derived_name: str | None = None,
        data_dir=None,
    ):
        self.name, self.split, self.with_depth = name, split, with_depth
        # directory sets without a given class count accept any stored id 0..254 (255 = ignore)
        self.n_classes = dataset_info(name, n_classes=n_classes).n_classes or 255
        self._keys: list[str] = []
        # the ids behind each index, for the item-order identity kNN files are checked against
        # (depthg.data.item_order); None: unknown (the release's crop set without its order file)
        self.item_ids: list[str] | None = None
        self.order_source = f"the {name}/{split} item list"
        # where depth is looked for, in order: (folder, file name pattern of the key); ours first (data contract)
        self.depth_locations = [(derived_dir(derived_name or name, data_dir) / "depth" / split, "{}.png")]
        self.depth_hint = _prep("depth", name)
        self.depth_regen_hint = _prep("depth", name, " --overwrite")  # how to replace a map that does not fit
        # with the release's depth model asked for, its released maps (the later locations) are read first
        self.prefer_released_depth = False

    def _set_keys(self, keys: list[str], where: Path) -> None:
        if not keys:
            raise DataError(
                f"dataset {self.name!r} split {self.split!r} has no items in {where}; check the layout "
                f"(METHOD.md §1.1) and data.data_dir."
            )
        self._keys = keys
        self.item_ids = list(keys)

    def keys(self) -> list[str]:
        return list(self._keys)

    def order_identity(self) -> str | None:
        """sha256 of the ordered item ids (depthg.data.item_order), None when the order is unknown."""
        return None if self.item_ids is None else order_identity(self.item_ids)

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
            raise DataError(
                f"label file {label_path} is {label.shape} but its image {self.image_path(i)} is {size}; "
                f"the label does not belong to this image: restore it from the dataset download."
            )
        item = dict(
            key=key,
            image=image,
            label=label,
            depth=None,
            depth_bits=None,
            depth_units=None,
            depth_range=None,
            depth_model=None,
        )
        if self.with_depth:
            paths = self.depth_paths(i)
            if self.prefer_released_depth:  # the authors' maps first (reference presets), then ours
                paths = paths[1:] + paths[:1]
            path = next((p for p in paths if p.is_file()), None)
            if path is None:
                raise DataError(
                    f"{self.name}/{self.split} item {key!r} has no depth map (looked for "
                    f"{', '.join(map(str, paths))}); create them with {self.depth_hint}."
                )
            depth, meta = read_depth(path, with_meta=True)
            if depth.shape != size:
                raise DataError(
                    f"depth file {path} is {depth.shape} but its image is {size}; regenerate it with "
                    f"{self.depth_regen_hint}."
                )
            crop = meta.get("five_crop") or {}
            source_range = (
                (crop["source_min"], crop["source_max"], crop.get("source_bits")) if "source_min" in crop else None
            )
            item.update(
                depth=depth,
                depth_bits=meta["bits"],
                depth_units=meta.get("units"),
                depth_range=source_range,
                depth_model=depth_model_of(meta),
            )
        return item


class CocoStuff27(SourceDataset):
    """cocostuff/: curated train list (subset None) / val list subset 7 (METHOD.md §1.1, DG src/data.py:318-324)."""

    _LISTS = {
        "train": ("train2017", "Coco164kFull_Stuff_Coarse.txt"),
        "val": ("val2017", "Coco164kFull_Stuff_Coarse_7.txt"),
    }

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
            self._set_keys(
                sorted(
                    (s for s in stems if re.fullmatch(r"\d+_\d+_\d+", s)),
                    key=lambda s: tuple(int(x) for x in s.split("_")),
                ),
                self.root / "imgs",
            )
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

    def __init__(
        self,
        name,
        split,
        img_dir: Path,
        label_dir: Path | None,
        map_label,
        *,
        with_depth: bool,
        n_classes=None,
        derived_name=None,
        data_dir=None,
        suffixes=_IMAGE_SUFFIXES,
    ):
        super().__init__(
            name, split, with_depth=with_depth, n_classes=n_classes, derived_name=derived_name, data_dir=data_dir
        )
        self.img_dir, self.label_dir, self.map_label = _root(img_dir, f"{name}/{split}"), label_dir, map_label
        # temporary files of a killed writer (depthg.files.is_temp) are not items
        files = {p.stem: p for p in self.img_dir.iterdir() if p.suffix.lower() in suffixes and not is_temp(p)}
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
    return Folder(
        f"directory:{folder}",
        split,
        root / "imgs" / split,
        labels,
        L.map_plain,
        with_depth=with_depth,
        n_classes=n_classes,
        derived_name=folder,
        data_dir=data_dir,
    )


def _synthetic(data_dir, split: str, with_depth: bool) -> Folder:
    """<data>/synthetic/{img,label,depth}/<split>/<n:05d>.png (depthg.data.synthetic)."""
    root = _root(data_root(data_dir) / "synthetic", "synthetic")
    ds = Folder(
        "synthetic",
        split,
        root / "img" / split,
        root / "label" / split,
        L.map_plain,
        with_depth=with_depth,
        data_dir=data_dir,
        suffixes=(".png",),
    )
    ds.depth_locations.append((root / "depth" / split, "{}.png"))
    ds.depth_hint = "`python -m depthg prep synthetic` with the world's --n-train/--n-val/--res/--seed"
    ds.depth_regen_hint = f"{ds.depth_hint} after deleting that file (missing scenes are rendered again)"
    _check_synthetic_split(ds, root, split)
    return ds


def _check_synthetic_split(ds: Folder, root: Path, split: str) -> None:
    """The synthetic world's manifest says how many scenes a split has: every one must be there (a split that lost
    an image would otherwise be evaluated on fewer images without a word)."""
    manifest = root / "manifest.json"
    try:
        recorded = json.loads(manifest.read_text()) if manifest.is_file() else {}
        expected = int(recorded[f"n_{split}"]) if f"n_{split}" in recorded else None
    except (ValueError, TypeError) as e:
        raise DataError(
            f"synthetic manifest {manifest} is damaged ({type(e).__name__}: {e}); rerun "
            f"`python -m depthg prep synthetic` with the world's parameters."
        ) from None
    if expected is None:
        return
    missing = sorted(set(f"{i:05d}" for i in range(expected)) - set(ds.keys()))
    if missing:
        paths = ", ".join(str(root / "img" / split / f"{k}.png") for k in missing[:5])
        raise DataError(
            f"synthetic {split} split has {expected - len(missing)} of its {expected} images; missing "
            f"{paths}{' ...' if len(missing) > 5 else ''}. Rerun `python -m depthg prep synthetic` "
            f"with the world's --n-train/--n-val/--res/--seed: it renders the missing scenes."
        )


def five_crop_dataset(
    name: str, data_dir, split: str, *, ratio: float = 0.5, with_depth: bool = True, n_classes: int | None = None
) -> Folder:
    """The five-crop set of ``name`` (METHOD.md §1.4): ours, else the release's ``cropped/`` set."""
    derived_name = dataset_folder(name)
    # = depthg.data.fivecrop.five_crop_dir (not imported: the prep stages depend on this module, not the reverse)
    ours = derived_dir(derived_name, data_dir) / f"five_crop_{ratio:g}"
    legacy = data_root(data_dir) / "cropped" / f"{derived_name}_five_crop_{ratio:g}"
    root = ours if (ours / "img" / split).is_dir() else legacy
    if not (root / "img" / split).is_dir():
        raise DataError(
            f"no five-crop set for {name}/{split} (looked in {ours} and {legacy}); create it with "
            f"{_prep('fivecrop', name, f' --splits {split} --ratio {ratio:g}')}."
        )
    is_legacy = root == legacy
    label_dir = root / "label" / split
    ds = Folder(
        name,
        split,
        root / "img" / split,
        label_dir if label_dir.is_dir() else None,
        L.map_cropped,
        with_depth=with_depth,
        n_classes=n_classes,
        derived_name=derived_name,
        data_dir=data_dir,
        suffixes=(".jpg",) if is_legacy else (".png", ".jpg"),
    )  # ours: PNG, or JPEG in reference
    missing = sorted(set(range(len(ds))) - {int(k) for k in ds.keys() if k.isdigit()})
    if missing:
        raise DataError(
            f"five-crop set {root / 'img' / split} lacks crop(s) {missing[:10]}; rerun "
            f"{_prep('fivecrop', name, f' --splits {split}')}."
        )
    # which source item each crop index stands for: the order file the five-crop stage writes (for the release's
    # set, one the user writes: its source items in the release's order); without it the order is unknown
    order_file = root / f"order_{split}.txt"
    ds.order_source = str(order_file)
    ds.item_ids = five_crop_ids(read_order_file(order_file)) if order_file.is_file() else None
    if ds.item_ids is not None and len(ds.item_ids) != len(ds):
        raise DataError(
            f"order file {order_file} lists {len(ds.item_ids) // 5} source items for {len(ds)} crops; "
            f"it belongs to another crop set: rerun {_prep('fivecrop', name, f' --splits {split}')} "
            f"with --overwrite."
        )
    # the crops carry their own depth: ours 16-bit <n>.png, the release's 8-bit <n>_zoedepth.png
    ds.depth_locations = [(root / "depth" / split, "{}_zoedepth.png" if is_legacy else "{}.png")]
    ds.depth_hint = _prep("depth", name) + " then " + _prep("fivecrop", name, " --overwrite")
    ds.depth_regen_hint = ds.depth_hint
    return ds


def source_dataset(
    name: str,
    data_dir=None,
    split: str = "train",
    *,
    with_depth: bool = True,
    n_classes: int | None = None,
    depth_model: str = "",
) -> SourceDataset:
    """Full-resolution items of ``split`` of dataset ``name`` (see the module docstring). ``depth_model`` equal to
    the release's (ZoeD_M12_N) reads the authors' released depth maps before ours, where both exist."""
    ds = _source_dataset(name, data_dir, split, with_depth=with_depth, n_classes=n_classes)
    ds.prefer_released_depth = depth_model == RELEASED_MAPS_MODEL
    return ds


def _source_dataset(name: str, data_dir, split: str, *, with_depth: bool, n_classes: int | None) -> SourceDataset:
    base = dataset_base(name)
    dataset_info(name, n_classes=n_classes if base == "directory" else None)  # unknown name -> DataError
    if base == "directory":
        if ":" not in name:
            raise DataError(
                "name a directory dataset 'directory:<folder>', the folder under the data root that "
                "holds imgs/<split>/."
            )
        return _directory(dataset_folder(name), data_dir, split, with_depth, n_classes)
    if base == "synthetic":
        return _synthetic(data_dir, split, with_depth)
    if base in ("potsdam", "potsdamraw"):
        return Potsdam(data_dir, split, with_depth=with_depth, raw=base == "potsdamraw")
    return {"cocostuff27": CocoStuff27, "cityscapes": Cityscapes27}[base](data_dir, split, with_depth=with_depth)


def effective_crop(name: str, crop: str) -> str:
    """Potsdam is never cropped (METHOD.md §1.1): its training items are the source images whatever crop_type says."""
    return "none" if name in _UNCROPPED else crop


def train_source(
    name: str,
    data_dir=None,
    split: str = "train",
    *,
    crop: str = "five",
    ratio: float = 0.5,
    with_depth: bool = True,
    n_classes: int | None = None,
    depth_model: str = "",
) -> SourceDataset:
    """The items training (and the kNN stage) uses: the five-crop set, or the source set when not cropped."""
    if effective_crop(name, crop) == "five":
        dataset_info(name, n_classes=n_classes)
        try:
            return five_crop_dataset(name, data_dir, split, ratio=ratio, with_depth=with_depth, n_classes=n_classes)
        except DataError:
            # no crops because there are no source images: that is the first thing to fix, so say that
            source_dataset(name, data_dir, split, with_depth=False, n_classes=n_classes)
            raise
    return source_dataset(name, data_dir, split, with_depth=with_depth, n_classes=n_classes, depth_model=depth_model)


def _split_value(table: dict, split: str, name: str):
    if split not in table:
        raise DataError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(table)}.")
    return table[split]
