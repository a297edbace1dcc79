"""A generated on-disk training set at the real sizes, for the loader benchmark (``python -m depthg.bench gpu``).

COCO-sized source items (480 x 640 RGB, 27-class labels, float depth) are five-cropped by the project's own writer
(:func:`depthg.data.fivecrop.write_item_crops`: PNG crops of 240 x 320, label+1 PNGs, 16-bit depth with its
sidecar) into ``<data>/cocostuff27/derived/five_crop_0.5/``, with a kNN file beside it, so the project's dataset
classes (:func:`depthg.data.pairs.build_train_set`) load it exactly as they load a prepared COCO-Stuff set.

Content is smooth rather than noise, so PNG sizes and decode times are closer to photographs': images are bicubic
upsamplings of a coarse random image plus grain, depth a vertical ramp plus a smooth bump field, labels blocks.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from depthg.data.fivecrop import N_CROPS, five_crop_dir, write_item_crops
from depthg.data.item_order import five_crop_ids, order_identity, write_order_file
from depthg.data.knn_file import knn_path, save_knn

DATASET = "cocostuff27"
COCO_SIZE = (480, 640)  # H, W of a typical COCO image


def _smooth(rng: np.random.Generator, size: tuple[int, int], coarse: tuple[int, int], channels: int) -> np.ndarray:
    """A bicubic upsampling of a coarse random field: float32 [H,W,channels] in [0, 1]."""
    small = (rng.random((*coarse, channels)) * 255).astype(np.uint8)
    mode = "RGB" if channels == 3 else "L"
    big = Image.fromarray(small if channels == 3 else small[..., 0], mode).resize(size[::-1], Image.BICUBIC)
    out = np.asarray(big, dtype=np.float32) / 255
    return out if channels == 3 else out[..., None]


def source_item_key(i: int) -> str:
    return f"{i:012d}"


def source_item(i: int, size: tuple[int, int] = COCO_SIZE, n_classes: int = 27) -> dict:
    """One deterministic COCO-sized item: PIL RGB image, int64 label [H,W] in 0..n_classes-1, float32 depth."""
    rng = np.random.default_rng(i)
    H, W = size
    rgb = _smooth(rng, size, (12, 16), 3) * 235 + rng.integers(0, 20, (H, W, 3))
    label = np.kron(rng.integers(0, n_classes, (6, 8)), np.ones((-(-H // 6), -(-W // 8)), np.int64))[:H, :W]
    ramp = np.linspace(20.0, 2.0, H, dtype=np.float32)[:, None]
    depth = ramp + 3 * _smooth(rng, size, (6, 8), 1)[..., 0]
    return {
        "key": source_item_key(i),
        "image": Image.fromarray(rgb.clip(0, 255).astype(np.uint8)),
        "label": label,
        "depth": depth.astype(np.float32),
        "depth_units": "metres",
        "depth_bits": 16,
    }


def _write(args: tuple[int, str, tuple[int, int]]) -> None:
    i, root, size = args
    write_item_crops(source_item(i, size), i, Path(root), "train", 0.5, dataset=DATASET)


def write_training_set(
    data_dir: str | os.PathLike,
    n_sources: int,
    *,
    size: tuple[int, int] = COCO_SIZE,
    backbone: str = "vit_small_patch8",
    knn_res: int = 224,
    workers: int = 0,
) -> int:
    """Write ``n_sources`` items as 5 * n_sources training crops and a random kNN file; returns the crop count.

    ``workers`` > 0 writes in that many processes (0: in this one).
    """
    root = five_crop_dir(DATASET, data_dir)
    jobs = [(i, str(root), tuple(size)) for i in range(n_sources)]
    if workers > 0:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        for job in jobs:
            _write(job)
    n = N_CROPS * n_sources
    keys = [source_item_key(i) for i in range(n_sources)]  # the crops' source items, in crop order
    write_order_file(root / "order_train.txt", keys)
    rng = np.random.default_rng(0)
    nns = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, (n, 7))], axis=1)  # self + 7 partners
    save_knn(
        knn_path(DATASET, "train", backbone, "five", knn_res, data_dir),
        nns,
        dataset=DATASET,
        split="train",
        backbone=backbone,
        weights="random",
        res=knn_res,
        crop="five",
        knn_features="reference",
        order=order_identity(five_crop_ids(keys)),
    )
    return n
