"""Tiny fake dataset trees in the real layouts (METHOD.md §1.1, data contract), for tests of every data helper.

Every ``make_*`` writes under ``data_dir`` (a tmp folder) and returns a :class:`FakeTree` with the keys per split and
the raw arrays it wrote (``raw[split][key]`` = dict of image uint8 [H,W,3], label as stored, depth float32 [H,W]),
so tests can compare what a loader returns with what is on disk. Images are random noise, depth a noisy ramp (so a
min-max normalisation is non-trivial); everything is deterministic from ``seed``. Sizes are tiny to keep tests fast.

Depth kinds (``depth=`` tuple): "zoe" writes the release's 8-bit ``<stem>_zoedepth.png`` at its intended location
(METHOD.md §1.3), "ours" writes our 16-bit PNG + sidecar under ``<data>/<dataset>/derived/depth/<split>/<key>.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from depthg.data.datasets import train_source
from depthg.data.depth_io import write_depth
from depthg.data.item_order import ORDER_SUFFIX, write_order_file
from depthg.data.knn_file import knn_path, legacy_knn_path, save_knn
from depthg.errors import DataError
from depthg.paths import derived_dir

SPLITS = ("train", "val")
COCO_FINE_IDS = (0, 2, 17, 61, 101, 123, 156, 170, 255)  # person, car, dog, chair, ceiling, grass, sky, wall, unlabeled


@dataclass
class FakeTree:
    data_dir: Path
    dataset: str
    keys: dict[str, list[str]] = field(default_factory=dict)
    raw: dict[str, dict[str, dict]] = field(default_factory=dict)

    def add(self, split: str, key: str, **arrays) -> None:
        self.keys.setdefault(split, []).append(key)
        self.raw.setdefault(split, {})[key] = arrays


# ---- primitive writers -------------------------------------------------------------------------------------------


def noise_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def ramp_depth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [h,w] in metres: farther towards the top, plus noise (larger = farther)."""
    rows = np.linspace(20.0, 2.0, h, dtype=np.float32)[:, None]
    return (rows + rng.uniform(0, 1.5, (h, w))).astype(np.float32)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_depth8(path: Path, depth: np.ndarray) -> Path:
    """The release's 8-bit depth: per-image min-max, * 255, truncated (METHOD.md §1.3)."""
    norm = (depth - depth.min()) / (depth.max() - depth.min())
    return write_png(path, (norm * 255).astype(np.uint8))


def write_depth16(path: Path, depth: np.ndarray) -> Path:
    write_depth(path, depth, source="fake", units="metres")
    return path


def write_mat(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), arrays)
    return path


def _depths(tree: FakeTree, split: str, key: str, depth: np.ndarray, kinds, zoe_path: Path | None) -> None:
    if "zoe" in kinds:
        assert zoe_path is not None, f"{tree.dataset} has no release depth location"
        write_depth8(zoe_path, depth)
    if "ours" in kinds:
        write_depth16(derived_dir(tree.dataset, tree.data_dir) / "depth" / split / f"{key}.png", depth)


# ---- dataset layouts ---------------------------------------------------------------------------------------------


def make_cocostuff(data_dir, *, n=(3, 2), size=(24, 32), depth=("zoe",), seed=0) -> FakeTree:
    """cocostuff/{images,annotations,depth}/{train2017,val2017}/ + curated lists (train: subset None, val: 7).
    Labels are fine ids drawn from COCO_FINE_IDS (255 = unlabeled)."""
    data_dir, rng = Path(data_dir), np.random.default_rng(seed)
    tree, root = FakeTree(data_dir, "cocostuff27"), Path(data_dir) / "cocostuff"
    lists = {
        "train": ("train2017", "Coco164kFull_Stuff_Coarse.txt"),
        "val": ("val2017", "Coco164kFull_Stuff_Coarse_7.txt"),
    }
    for split, count in zip(SPLITS, n):
        sdir, list_name = lists[split]
        ids = [f"{1000 * (split == 'val') + i:012d}" for i in range(count)]
        for key in ids:
            img, d = noise_image(rng, *size), ramp_depth(rng, *size)
            lab = rng.choice(COCO_FINE_IDS, size).astype(np.uint8)
            write_png(root / "images" / sdir / f"{key}.jpg", img)
            write_png(root / "annotations" / sdir / f"{key}.png", lab)
            _depths(tree, split, key, d, depth, root / "depth" / sdir / f"{key}_zoedepth.png")
            tree.add(split, key, image=img, label=lab, depth=d)
        (root / "curated" / sdir).mkdir(parents=True, exist_ok=True)
        (root / "curated" / sdir / list_name).write_text("".join(k + "\n" for k in ids))
    return tree


def make_cityscapes(data_dir, *, cities=None, per_city=2, size=(16, 32), depth=("zoe",), seed=0) -> FakeTree:
    """cityscapes/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png, gtFine ..._gtFine_labelIds.png
    (labelIds 0..33), depth/<split>/<city>/<stem>_zoedepth.png."""
    data_dir, rng = Path(data_dir), np.random.default_rng(seed)
    cities = cities or {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
    tree, root = FakeTree(data_dir, "cityscapes"), Path(data_dir) / "cityscapes"
    for split in SPLITS:
        for city in cities[split]:
            for j in range(per_city):
                prefix = f"{city}_{j:06d}_000019"
                key = f"{city}/{prefix}_leftImg8bit"
                img, d = noise_image(rng, *size), ramp_depth(rng, *size)
                lab = rng.integers(0, 34, size, dtype=np.uint8)
                write_png(root / "leftImg8bit" / split / f"{key}.png", img)
                write_png(root / "gtFine" / split / city / f"{prefix}_gtFine_labelIds.png", lab)
                _depths(tree, split, key, d, depth, root / "depth" / split / f"{key}_zoedepth.png")
                tree.add(split, key, image=img, label=lab, depth=d)
    return tree


def _potsdam_image(rng, size, img_kind: str):
    rgbi = rng.integers(0, 256, (*size, 4), dtype=np.uint8)  # RGB + IR
    if img_kind == "float01":
        return rgbi, rgbi.astype(np.float32) / 255
    if img_kind == "float255":
        return rgbi, rgbi.astype(np.float32)
    return rgbi, rgbi


def make_potsdam(data_dir, *, n=(3, 2), size=(20, 20), img_kind="uint8", depth=("zoe",), seed=0) -> FakeTree:
    """potsdam/{imgs,gt}/<id>.mat ("img" [H,W,4] as uint8, float [0,1] or float 0..255; "gt" ids 0..5 and 255),
    labelled_train.txt / labelled_test.txt, zoe_depth/<split>/imgs/<id>_zoedepth.png."""
    data_dir, rng = Path(data_dir), np.random.default_rng(seed)
    tree, root = FakeTree(data_dir, "potsdam"), Path(data_dir) / "potsdam"
    for split, count, list_name in zip(SPLITS, n, ("labelled_train.txt", "labelled_test.txt")):
        ids = [f"{split}_{i}" for i in range(count)]
        for key in ids:
            rgbi, stored = _potsdam_image(rng, size, img_kind)
            gt = rng.choice(np.array([0, 1, 2, 3, 4, 5, 255], np.uint8), size)
            d = ramp_depth(rng, *size)
            write_mat(root / "imgs" / f"{key}.mat", img=stored)
            write_mat(root / "gt" / f"{key}.mat", gt=gt)
            _depths(tree, split, key, d, depth, root / "zoe_depth" / split / "imgs" / f"{key}_zoedepth.png")
            tree.add(split, key, image=rgbi[..., :3], label=gt, depth=d)
        root.mkdir(parents=True, exist_ok=True)
        (root / list_name).write_text("".join(k + "\n" for k in ids))
    return tree


def make_potsdamraw(data_dir, *, n_images=2, tiles=2, size=(16, 16), labels=True, seed=0) -> FakeTree:
    """potsdamraw/processed/{imgs,gt}/<im>_<ih>_<iw>.mat for im < n_images, ih, iw < tiles (same items per split)."""
    data_dir, rng = Path(data_dir), np.random.default_rng(seed)
    tree, root = FakeTree(data_dir, "potsdamraw"), Path(data_dir) / "potsdamraw" / "processed"
    for im in range(n_images):
        for ih in range(tiles):
            for iw in range(tiles):
                key = f"{im}_{ih}_{iw}"
                rgbi, stored = _potsdam_image(rng, size, "uint8")
                gt = rng.choice(np.array([0, 1, 2, 3, 4, 5, 255], np.uint8), size)
                write_mat(root / "imgs" / f"{key}.mat", img=stored)
                if labels:
                    write_mat(root / "gt" / f"{key}.mat", gt=gt)
                for split in SPLITS:
                    tree.add(split, key, image=rgbi[..., :3], label=gt if labels else None, depth=None)
    return tree


def make_directory(
    data_dir, folder="mydir", *, n=(3, 2), size=(18, 24), n_classes=4, labels=True, depth=(), seed=0
) -> FakeTree:
    """<folder>/imgs/<split>/<stem>.jpg|png and, with ``labels``, <folder>/labels/<split>/<stem>.png (class ids,
    255 = ignore). Dataset name: ``directory:<folder>``; "ours" depth goes to <folder>/derived/depth."""
    data_dir, rng = Path(data_dir), np.random.default_rng(seed)
    tree, root = FakeTree(data_dir, folder), Path(data_dir) / folder
    for split, count in zip(SPLITS, n):
        for i in range(count):
            key, ext = f"img_{i:03d}", (".png" if i % 2 else ".jpg")
            img, d = noise_image(rng, *size), ramp_depth(rng, *size)
            lab = rng.choice(np.array([*range(n_classes), 255], np.uint8), size)
            write_png(root / "imgs" / split / f"{key}{ext}", img)
            if labels:
                write_png(root / "labels" / split / f"{key}.png", lab)
            _depths(tree, split, key, d, depth, None)
            tree.add(split, key, image=img, label=lab if labels else None, depth=d)
    return tree


def make_synthetic(data_dir, *, n=(4, 2), size=(16, 16), seed=0) -> FakeTree:
    """synthetic/{img,label,depth}/<split>/<n:05d>.png (labels 0..5, 255 ignore; depth 16-bit + sidecar) and a
    manifest.json: the layout depthg.data.synthetic writes, without rendering scenes."""
    data_dir, rng = Path(data_dir), np.random.default_rng(seed)
    tree, root = FakeTree(data_dir, "synthetic"), Path(data_dir) / "synthetic"
    for split, count in zip(SPLITS, n):
        for i in range(count):
            key = f"{i:05d}"
            img, d = noise_image(rng, *size), ramp_depth(rng, *size)
            lab = rng.choice(np.array([0, 1, 2, 3, 4, 5, 255], np.uint8), size)
            write_png(root / "img" / split / f"{key}.png", img)
            write_png(root / "label" / split / f"{key}.png", lab)
            write_depth16(root / "depth" / split / f"{key}.png", d)
            tree.add(split, key, image=img, label=lab, depth=d)
    (root / "manifest.json").write_text(json.dumps({"fake": True, "seed": seed}))
    return tree


def make_five_crop(
    data_dir,
    dataset="cocostuff27",
    *,
    n=(10, 5),
    size=(12, 16),
    n_classes=27,
    legacy=False,
    ratio=0.5,
    seed=0,
    order: bool | None = None,
) -> FakeTree:
    """A five-crop set with ``n`` crops per split: ours under <dataset>/derived/five_crop_<ratio>/ (PNG images,
    label+1 PNG, 16-bit depth), or with ``legacy`` the release's cropped/<dataset>_five_crop_<ratio>/ (JPEG images,
    label+1 PNG, 8-bit <n>_zoedepth.png). Stored labels are label+1 (0 = ignore). ``order`` (default: ours, when n
    is a multiple of 5) writes order_<split>.txt, the source keys src0000.. in crop order."""
    data_dir, rng = Path(data_dir), np.random.default_rng(seed)
    tree = FakeTree(data_dir, dataset)
    root = (
        Path(data_dir) / "cropped" / f"{dataset}_five_crop_{ratio:g}"
        if legacy
        else derived_dir(dataset, data_dir) / f"five_crop_{ratio:g}"
    )
    for split, count in zip(SPLITS, n):
        for i in range(count):
            img, d = noise_image(rng, *size), ramp_depth(rng, *size)
            stored = rng.integers(0, n_classes + 1, size, dtype=np.uint8)  # label + 1
            write_png(root / "img" / split / f"{i}.{'jpg' if legacy else 'png'}", img)
            write_png(root / "label" / split / f"{i}.png", stored)
            if legacy:
                write_depth8(root / "depth" / split / f"{i}_zoedepth.png", d)
            else:
                write_depth16(root / "depth" / split / f"{i}.png", d)
            tree.add(split, str(i), image=img, label=stored, depth=d)
        if order or (order is None and not legacy and count % 5 == 0):
            assert count % 5 == 0, "an order file needs whole source items (5 crops each)"
            write_order_file(root / f"order_{split}.txt", [f"src{j:04d}" for j in range(count // 5)])
    return tree


def make_knn(
    data_dir,
    dataset,
    split,
    n_items,
    *,
    backbone="vit_small_patch8",
    res=224,
    crop="five",
    k=30,
    legacy=False,
    knn_features="paper",
    seed=0,
    order_keys=None,
) -> Path:
    """A kNN file for ``n_items`` items: row i = [i, k-1 random other items] (repeats allowed when n_items < k).
    Ours (with metadata) at knn_path(...), recording the item order of the dataset's training items when they exist,
    or with ``legacy`` the release's metadata-free file under <data>/nns/ (with ``order_keys``, its order file)."""
    assert n_items >= 2, "a kNN table needs at least two items"
    rng = np.random.default_rng(seed)
    others = rng.integers(1, n_items, (n_items, k - 1))  # offsets 1..n-1 so no neighbour is the item itself
    nns = np.concatenate([np.arange(n_items)[:, None], (np.arange(n_items)[:, None] + others) % n_items], 1)
    name = dataset.split(":", 1)[-1]
    if legacy:
        path = legacy_knn_path(name, split, backbone, crop, res, data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, nns=nns)
        if order_keys is not None:
            write_order_file(path.with_suffix(ORDER_SUFFIX), order_keys)
        return path
    try:
        items = train_source(dataset, data_dir, split, crop=crop, with_depth=False)
        order, order_source = items.order_identity(), items.order_source
    except DataError:  # no dataset yet: a file without an order, which training refuses
        order = order_source = None
    return save_knn(
        knn_path(name, split, backbone, crop, res, data_dir),
        nns,
        dataset=dataset,
        split=split,
        backbone=backbone,
        weights="random",
        res=res,
        crop=crop,
        knn_features=knn_features,
        order=order,
        order_source=order_source,
    )
