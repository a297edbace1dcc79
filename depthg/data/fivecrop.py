"""Five-crop stage: each source image, its label and its depth cut identically into five crops (METHOD.md §1.4).

Shapes: H, W source image; h, w crop = (floor(ratio H), floor(ratio W)).

Geometry is torchvision's ``five_crop`` as the release calls it (``DG src/crop_datasets.py:68-80``): order top-left,
top-right, bottom-left, bottom-right, centre, where the centre offset is ``int(round((H - h) / 2))`` (Python's
round, half to even, as torchvision's ``center_crop``). Crop k of source item i gets index n = 5 i + k.

Written under ``derived/five_crop_<ratio>/{img,label,depth}/<split>/<n>.<png|jpg>`` (data contract):
- images as lossless RGB PNG (fidelity ``crop_format=paper``), or as the release wrote them, JPEG at PIL's default
  quality 75 (``reference``, ``<n>.jpg``, DG src/crop_datasets.py:174-204), whose compression noise the features see;
- labels as label + 1 in uint8, so 0 = ignore (``DG src/crop_datasets.py:189``);
- depth as our 16-bit PNG + sidecar (``depthg.data.depth_io.write_depth``), keeping the source depth's units.
Nothing is written into the source tree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from depthg.data.datasets import source_dataset
from depthg.data.depth_estimation import depth_dir
from depthg.data.depth_io import sidecar_path, write_depth
from depthg.data.item_order import N_CROPS, order_identity, write_order_file
from depthg.data.stage import StageResult, recorded_params, run_stage
from depthg.errors import DataError
from depthg.files import atomic_write
from depthg.paths import derived_dir

CROP_NAMES = ("tl", "tr", "bl", "br", "centre")
JPEG_QUALITY = 75  # PIL's default, which the release's save(...jpg) used
# crop_format fidelity -> image suffix of the crops
IMAGE_SUFFIX = {"paper": ".png", "reference": ".jpg"}


def five_crop_dir(dataset: str, data_dir=None, ratio: float = 0.5) -> Path:
    """``<data>/<dataset>/derived/five_crop_<ratio>`` (ratio printed with %g: 0.5 -> "0.5"); ``directory:<folder>``
    sets use their folder name."""
    return derived_dir(dataset, data_dir) / f"five_crop_{ratio:g}"


def five_crop_boxes(height: int, width: int, ratio: float = 0.5) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of the five crops, in the order tl, tr, bl, br, centre (torchvision ``five_crop``)."""
    h, w = int(ratio * height), int(ratio * width)  # floor for positive sizes, as int(0.5 * H) in the release
    if not (0 < h <= height and 0 < w <= width):
        raise DataError(
            f"five-crop ratio {ratio} gives a {h}x{w} crop of a {height}x{width} image; use 0 < --ratio <= 1."
        )
    centre = (int(round((height - h) / 2.0)), int(round((width - w) / 2.0)))
    return [(0, 0, h, w), (0, width - w, h, w), (height - h, 0, h, w), (height - h, width - w, h, w), (*centre, h, w)]


def five_crop(a: np.ndarray, ratio: float = 0.5) -> list[np.ndarray]:
    """Array [H,W,...] -> five arrays [h,w,...] in the order of :func:`five_crop_boxes`."""
    return [a[top : top + h, left : left + w] for top, left, h, w in five_crop_boxes(a.shape[0], a.shape[1], ratio)]


def crop_paths(root: Path, split: str, n: int, image_suffix: str = ".png") -> dict[str, Path]:
    """Where crop n of ``split`` lives under a five-crop root (the image as .png or .jpg)."""
    paths = {kind: root / kind / split / f"{n}.png" for kind in ("img", "label", "depth")}
    paths["img"] = paths["img"].with_suffix(image_suffix)
    return paths


def encode_label(label: np.ndarray, where: str) -> np.ndarray:
    """int64 label with -1 = ignore -> uint8 label + 1 (0 = ignore), as the release stores cropped labels."""
    if label.size and (label.min() < -1 or label.max() > 254):
        raise DataError(
            f"label of {where} holds values outside -1..254 ({label.min()}..{label.max()}); "
            f"they cannot be stored as label+1 in uint8. Check the dataset's label mapping."
        )
    return (label + 1).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _save_image(array: np.ndarray, path: Path) -> None:
    """RGB crop as PNG (lossless) or, for a .jpg path, JPEG quality 75 as the release."""
    if path.suffix == ".jpg":
        with atomic_write(path) as tmp:
            Image.fromarray(array).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    else:
        _save_png(array, path)


def write_item_crops(
    item: dict, i: int, root: Path, split: str, ratio: float, *, dataset: str, image_suffix: str = ".png"
) -> None:
    """Crop one source item (dict with key, image, label, depth) and write its five crops n = 5 i + k."""
    key = item["key"]
    image = np.asarray(item["image"].convert("RGB"))  # [H,W,3] uint8
    height, width = image.shape[:2]
    for name in ("label", "depth"):
        if item.get(name) is not None and item[name].shape != (height, width):
            raise DataError(
                f"{dataset}/{split} item {key!r}: {name} is {item[name].shape[0]}x{item[name].shape[1]} "
                f"but the image is {height}x{width}; regenerate the {name} for this image."
            )
    boxes = five_crop_boxes(height, width, ratio)
    images = five_crop(image, ratio)
    labels = five_crop(item["label"], ratio) if item.get("label") is not None else [None] * N_CROPS
    depths = five_crop(item["depth"], ratio) if item.get("depth") is not None else [None] * N_CROPS
    units = item.get("depth_units") or "relative"
    # The source map's range and bit depth travel with each crop: the release's crops hold values normalised over
    # the *full* image (METHOD.md §1.3-1.4), which a reader needs for reference-fidelity depth loading.
    full = (
        {}
        if item.get("depth") is None
        else {
            "source_min": float(item["depth"].min()),
            "source_max": float(item["depth"].max()),
            "source_bits": item.get("depth_bits"),
        }
    )
    for k in range(N_CROPS):
        paths = crop_paths(root, split, N_CROPS * i + k, image_suffix)
        if labels[k] is not None:
            _save_png(encode_label(labels[k], f"{dataset}/{split} item {key!r}"), paths["label"])
        if depths[k] is not None:
            write_depth(
                paths["depth"],
                np.ascontiguousarray(depths[k]),
                source=f"five-crop of {dataset}/{key}",
                units=units,
                extra={
                    "depth_model": item.get("depth_model"),  # the model of the source map
                    "five_crop": {
                        "source_key": key,
                        "crop": CROP_NAMES[k],
                        "box": list(boxes[k]),
                        "ratio": ratio,
                        **full,
                    },
                },
            )
        _save_image(np.ascontiguousarray(images[k]), paths["img"])  # last: the image marks the crop as written


def _done(root: Path, split: str, i: int, *, label: bool, depth: bool, suffix: str) -> bool:
    for k in range(N_CROPS):
        p = crop_paths(root, split, N_CROPS * i + k, suffix)
        if not p["img"].is_file() or (label and not p["label"].is_file()):
            return False
        if depth and not (p["depth"].is_file() and sidecar_path(p["depth"]).is_file()):
            return False
    return True


def _remove(root: Path, split: str, i: int) -> None:
    for k in range(N_CROPS):
        p = crop_paths(root, split, N_CROPS * i + k)
        for path in (p["img"], p["img"].with_suffix(".jpg"), p["label"], p["depth"], sidecar_path(p["depth"])):
            path.unlink(missing_ok=True)


def run_fivecrop(
    dataset: str,
    data_dir,
    splits,
    *,
    ratio: float = 0.5,
    fidelity: str = "paper",
    depth_model: str = "",
    rank: int = 0,
    world: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> list[tuple[str, StageResult]]:
    """The five-crop stage over ``splits``; this rank handles source items i % world == rank. ``fidelity`` is the
    ``crop_format`` aspect: "paper" writes PNG images, "reference" JPEG quality 75. ``depth_model`` (the config's
    data.depth_model) equal to the release's reads the authors' released depth maps before ours."""
    if fidelity not in IMAGE_SUFFIX:
        raise DataError(f"five-crop fidelity must be one of {', '.join(IMAGE_SUFFIX)}, got {fidelity!r}.")
    suffix = IMAGE_SUFFIX[fidelity]

    root = five_crop_dir(dataset, data_dir, ratio)
    results = []
    for split in splits:
        src = source_dataset(dataset, data_dir, split, depth_model=depth_model)
        if len(src) == 0:
            raise DataError(f"{dataset}/{split} has no images; check --data-dir and the dataset layout.")
        first = src[0]  # what the dataset holds decides which crops exist, and is recorded in the manifest
        has_label, has_depth = first.get("label") is not None, first.get("depth") is not None
        # the depth stage's parameters, when our depth maps are the source: regenerated depth makes the crops stale
        depth_stage = recorded_params(depth_dir(dataset, data_dir), split) if has_depth else None
        # which source item each crop index stands for (crop n = 5 i + k): its identity in the manifest, its list
        # in order_<split>.txt, which the kNN files of these crops are checked against (depthg.data.item_order)
        write_order_file(root / f"order_{split}.txt", src.keys())
        params = {
            "dataset": dataset,
            "ratio": ratio,
            "n_items": len(src),
            "label": has_label,
            "depth": has_depth,
            "source_order": order_identity(src.keys()),
            "depth_stage": depth_stage,
            "image_format": "png" if suffix == ".png" else f"jpeg-q{JPEG_QUALITY}",
        }

        def process(batch: list[int], split=split, src=src, first=first) -> None:
            for i in batch:
                write_item_crops(
                    first if i == 0 else src[i], i, root, split, ratio, dataset=dataset, image_suffix=suffix
                )

        results.append(
            (
                split,
                run_stage(
                    root,
                    "fivecrop",
                    split,
                    params,
                    len(src),
                    done=lambda i, split=split, lab=has_label, dep=has_depth: _done(
                        root, split, i, label=lab, depth=dep, suffix=suffix
                    ),
                    remove=lambda i, split=split: _remove(root, split, i),
                    process=process,
                    overwrite=overwrite,
                    rank=rank,
                    world=world,
                    desc=f"fivecrop {dataset}/{split}",
                    progress=progress,
                ),
            )
        )
    return results
