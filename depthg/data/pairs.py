"""What training and evaluation read: kNN training pairs and centre-cropped evaluation images (METHOD.md §1.6-1.7).

:class:`TrainPairs` wraps a source dataset (:mod:`depthg.data.datasets`, five-cropped where the dataset is) with
its kNN file; :class:`EvalSet` wraps the uncropped evaluation split. ``build_train_set`` / ``build_eval_set``
are the edge adapters that unpack a :class:`depthg.config.Config`.

Shapes: R resolution; items hold img [3,R,R], label [R,R], depth [1,R,R].
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from depthg.data import labels as L
from depthg.data.datasets import SourceDataset, _prep, effective_crop, source_dataset, train_source
from depthg.data.knn_file import knn_path, legacy_knn_path, load_knn
from depthg.data.labels import dataset_info
from depthg.data.transforms import depth_tensor, image_tensor, label_tensor
from depthg.errors import ConfigError, DataError
from depthg.paths import dataset_folder


class TrainPairs(Dataset):
    """Anchor + kNN partner (METHOD.md §1.7): partner = nns[index][r], r uniform in 1..num_neighbors (rank 0, the
    item itself, is never drawn). r comes from a torch generator seeded by (seed, epoch, index), so the pairs do not
    depend on worker count or the global RNG; call :meth:`set_epoch` before each epoch's iterator is created."""

    def __init__(
        self,
        source: SourceDataset,
        nns: np.ndarray,
        *,
        res: int,
        num_neighbors: int = 7,
        depth_loading: str = "paper",
        image_interpolation: str = "paper",
        seed: int = 0,
        depth_model: str = "",
        allow_other_depth_model: bool = False,
    ):
        assert source.with_depth, f"{source.name}: training pairs need depth (with_depth=True)"
        if nns.shape[0] != len(source) or not 1 <= num_neighbors < nns.shape[1]:
            raise DataError(
                f"kNN table of shape {nns.shape} does not fit {source.name}/{source.split} with "
                f"{len(source)} items and num_neighbors={num_neighbors} (needs 1 <= num_neighbors < k)."
            )
        self.source, self.nns, self.res, self.num_neighbors = source, nns, res, num_neighbors
        self.depth_loading, self.image_interpolation = depth_loading, image_interpolation
        self.seed, self.epoch = seed, 0
        self.depth_model, self.allow_other_depth_model = depth_model, allow_other_depth_model

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def partner(self, index: int) -> tuple[int, int]:
        """(rank r in 1..num_neighbors, partner index nns[index, r]) for this epoch."""
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) & (2**63 - 1))
        r = int(torch.randint(1, self.num_neighbors + 1, (), generator=g))
        return r, int(self.nns[index, r])

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item = self.source[index]
        check_depth_model(item, self.depth_model, self.allow_other_depth_model, self.source)
        img = image_tensor(item["image"], self.res, interpolation=self.image_interpolation)
        label = _label_or_ignore(item["label"], item["image"], self.res)
        depth = depth_tensor(
            item["depth"],
            self.res,
            fidelity=self.depth_loading,
            dataset=self.source.name,
            is_8bit=item["depth_bits"] == 8,
            value_range=item.get("depth_range"),
        )
        return img, label, depth

    def __getitem__(self, index: int) -> dict:
        _, index_pos = self.partner(index)
        img, label, depth = self._load(index)
        img_pos, label_pos, depth_pos = self._load(index_pos)
        return dict(
            img=img,
            label=label,
            depth=depth,
            img_pos=img_pos,
            label_pos=label_pos,
            depth_pos=depth_pos,
            index=index,
            index_pos=index_pos,
        )


class EvalSet(Dataset):
    """Centre crop at the evaluation resolution, no depth (METHOD.md §1.6: 320 px, crop_type None)."""

    def __init__(self, source: SourceDataset, *, res: int = 320, image_interpolation: str = "paper"):
        self.source, self.res, self.image_interpolation = source, res, image_interpolation

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        item = self.source[index]
        return dict(
            img=image_tensor(item["image"], self.res, interpolation=self.image_interpolation),
            label=_label_or_ignore(item["label"], item["image"], self.res),
            index=index,
        )


def _label_or_ignore(label: np.ndarray | None, image: Image.Image, res: int) -> torch.Tensor:
    """Unlabelled items (directory sets without labels/) get an all-ignore label, as the release does."""
    if label is None:
        label = np.full((image.height, image.width), L.IGNORE, np.int64)
    return label_tensor(label, res)


def check_depth_model(item: dict, wanted: str, allow_other: bool, source: SourceDataset) -> None:
    """The item's depth map must come from ``wanted`` (data.depth_model; "" accepts any): a reference run on maps
    of another estimator would not be the paper's experiment. ``allow_other`` turns the refusal into one warning."""
    made_by = item.get("depth_model")
    if not wanted or made_by == wanted:
        return
    message = (
        f"{source.name}/{source.split} item {item['key']!r}: its depth map was made by {made_by!r}, but "
        f"data.depth_model={wanted!r}. Generate the maps with that model ({_prep('depth', source.name)} "
        f"--model {wanted}, then {_prep('fivecrop', source.name)} --overwrite where the dataset is "
        f"five-cropped), or set data.allow_other_depth_model=true to train on them anyway."
    )
    if not allow_other:
        raise DataError(message)
    if not getattr(source, "_warned_depth_model", False):
        source._warned_depth_model = True
        warnings.warn(message + " (allowed: data.allow_other_depth_model=true)", stacklevel=3)


def _check_n_classes(cfg, name: str) -> None:
    info = dataset_info(name, n_classes=cfg.model.n_classes)
    if info.n_classes != cfg.model.n_classes:
        raise ConfigError(
            f"model.n_classes={cfg.model.n_classes} but dataset {name!r} has {info.n_classes} classes; "
            f"set model.n_classes={info.n_classes}."
        )


def train_knn_paths(cfg, data_dir=None) -> tuple:
    """(ours, legacy) kNN file paths for training ``cfg``; training reads ours if present, else the release's.

    The release's file name encodes crop_type even for Potsdam, which is never cropped (METHOD.md §1.1, §1.5)."""
    d = cfg.data
    data_dir = data_dir or d.data_dir or None
    name = dataset_folder(d.dataset)
    ours = knn_path(name, "train", cfg.model.backbone, effective_crop(d.dataset, d.crop_type), d.knn_res, data_dir)
    return ours, legacy_knn_path(name, "train", cfg.model.backbone, d.crop_type, d.knn_res, data_dir)


def build_train_set(cfg) -> TrainPairs:
    """The training pairs of a depthg.config.Config (the edge adapter: unpacks data, model and fidelity fields)."""
    d, name = cfg.data, cfg.data.dataset
    _check_n_classes(cfg, name)
    source = train_source(
        name,
        d.data_dir or None,
        "train",
        crop=d.crop_type,
        ratio=d.crop_ratio,
        with_depth=True,
        n_classes=cfg.model.n_classes,
        depth_model=d.depth_model,
    )
    if d.depth_model:  # refuse maps of another model before training starts (each item is checked as it loads)
        check_depth_model(source[0], d.depth_model, d.allow_other_depth_model, source)
    crop = effective_crop(name, d.crop_type)
    derived_name = dataset_folder(name)
    ours, legacy = train_knn_paths(cfg)
    args = (
        f" --splits train --backbone {cfg.model.backbone} --res {d.knn_res} --crop {crop} "
        f"--ratio {d.crop_ratio:g} --fidelity {cfg.fidelity.knn_features}"
    )
    # the kNN rows must index these items in this order, not merely as many (depthg.data.item_order)
    expect = dict(
        dataset=name,
        split="train",
        backbone=cfg.model.backbone,
        res=d.knn_res,
        n_items=len(source),
        order=source.order_identity(),
        order_source=source.order_source,
        rebuild=_prep("knn", name, args + " --overwrite"),
    )
    if ours.is_file():
        nns, meta = load_knn(ours, expect=dict(expect, crop=crop))
    elif legacy.is_file():
        nns, meta = load_knn(legacy, expect=dict(expect, dataset=derived_name, crop=d.crop_type))
    else:
        raise DataError(
            f"no kNN file for {name}/train (looked for {ours} and {legacy}); create it with {_prep('knn', name, args)}."
        )
    if meta.get("knn_features", cfg.fidelity.knn_features) != cfg.fidelity.knn_features:
        warnings.warn(
            f"kNN file was computed with knn_features={meta['knn_features']!r} but the config says "
            f"{cfg.fidelity.knn_features!r}; using it (the neighbours differ only slightly).",
            stacklevel=2,
        )
    return TrainPairs(
        source,
        nns,
        res=d.res,
        num_neighbors=d.num_neighbors,
        depth_loading=cfg.fidelity.depth_loading,
        image_interpolation=cfg.fidelity.image_interpolation,
        seed=cfg.train.seed,
        depth_model=d.depth_model,
        allow_other_depth_model=d.allow_other_depth_model,
    )


def build_eval_set(cfg, split: str = "val") -> EvalSet:
    """The evaluation set: source images (never cropped), centre crop at cfg.eval.res, no depth."""
    _check_n_classes(cfg, cfg.data.dataset)
    source = source_dataset(
        cfg.data.dataset, cfg.data.data_dir or None, split, with_depth=False, n_classes=cfg.model.n_classes
    )
    return EvalSet(source, res=cfg.eval.res, image_interpolation=cfg.fidelity.image_interpolation)
