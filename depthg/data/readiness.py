"""What is prepared for training and evaluating a config, and the commands that make the rest.

The one owner of that question: ``python -m depthg prep check`` prints :func:`report`, and the notebooks'
:func:`depthg.notebook.prepare` runs or names the :func:`missing_steps`. Both read the same :class:`Step` list, so
the commands a user is told to run are the ones the check looks for, with the values of the config in use
(backbone, kNN resolution, crop, ratio, data root), never placeholders.

Only files are counted (no image is decoded), so a check of a real dataset takes seconds.

Training needs (DESIGN.md §5): the source train and val splits; a depth map per training image; the five-crop set
where the dataset is cropped (every dataset but Potsdam, METHOD.md §1.1); the kNN file of the configured backbone
and resolution, with more neighbours than ``data.num_neighbors`` (METHOD.md §1.5, §1.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from depthg.config import Config
from depthg.data.datasets import effective_crop, five_crop_dataset, source_dataset
from depthg.data.knn_file import knn_path
from depthg.data.pairs import train_knn_paths
from depthg.data.stage import recorded_params
from depthg.errors import ConfigError, DataError
from depthg.model.backbone import weights_identity
from depthg.paths import data_root, dataset_folder, derived_dir

KNN_K = 30  # neighbours stored per image, as the release (METHOD.md §1.5); fewer on small sets (knn_k)
STAGES = ("source", "depth", "fivecrop", "knn")


@dataclass(frozen=True)
class Step:
    """One thing missing: the stage that makes it, what is missing, and the command to run (or what to get)."""

    stage: str  # one of STAGES
    what: str
    command: str


def prep_command(stage: str, cfg: Config, data_dir=None, extra: str = "") -> str:
    """``python -m depthg prep <stage> --dataset D [--data-dir R] --splits train<extra>``."""
    data_dir = data_dir or cfg.data.data_dir or None
    where = f" --data-dir {data_dir}" if data_dir else ""
    return f"python -m depthg prep {stage} --dataset {cfg.data.dataset}{where} --splits train{extra}"


def check_command(cfg: Config, data_dir=None, preset: str | None = None) -> str:
    """The ``prep check`` command that reports on ``cfg``'s dataset in the same data root."""
    data_dir = data_dir or cfg.data.data_dir or None
    where = f" --data-dir {data_dir}" if data_dir else ""
    return f"python -m depthg prep check --dataset {cfg.data.dataset}{where}" + (
        f" --preset {preset}" if preset else ""
    )


def knn_k(n_items: int, num_neighbors: int, k: int | None = None, *, where: str = "") -> int:
    """The k to store for ``n_items`` training items: ``k`` if given, else min(KNN_K, n_items).

    A kNN row holds the item itself first (rank 0), and training draws its partner from ranks 1..num_neighbors
    (METHOD.md §1.7), so k must satisfy num_neighbors < k <= n_items. The error says which side to move.
    """
    k = min(KNN_K, n_items) if k is None else k
    if num_neighbors < k <= n_items:
        return k
    what = f" ({where})" if where else ""
    if n_items <= num_neighbors:
        raise ConfigError(
            f"{n_items} training items{what} are too few for data.num_neighbors={num_neighbors}: the "
            f"kNN file needs num_neighbors < k <= {n_items}. Train with a smaller "
            f"data.num_neighbors (e.g. data.num_neighbors={max(n_items - 1, 1)}; also "
            f"data.batch_size <= {n_items}) and compute the file with --k {n_items}, or add images."
        )
    raise ConfigError(
        f"--k {k}{what}: k counts the item itself and must satisfy data.num_neighbors "
        f"({num_neighbors}) < k <= {n_items} (the training items); pass --k {min(KNN_K, n_items)}."
    )


def knn_file(cfg: Config, data_dir=None) -> Path:
    """The kNN file training will read (depthg.data.pairs.train_knn_paths: ours first, then the release's)."""
    ours, legacy = train_knn_paths(cfg, data_dir)
    return legacy if legacy.is_file() and not ours.is_file() else ours


def knn_weights_changed(cfg: Config, data_dir=None) -> str | None:
    """How the weights of our kNN file differ from the config's (``model.weights``), or None when they do not.

    Compares content (:func:`depthg.model.backbone.weights_identity`): re-made bundled weights under the same name
    count as other weights. A release kNN file, or ours without a recorded run, carries nothing to compare.
    """
    ours, _ = train_knn_paths(cfg, data_dir)
    recorded = recorded_params(ours.parent, ours.stem) if ours.is_file() else None
    if recorded is None:
        return None
    now = weights_identity(cfg.model.backbone, cfg.model.weights)
    had = recorded.get("weights_id")
    return None if had == now else f"made with other weights ({had or 'not recorded'}, the config's are {now})"


def missing_steps(cfg: Config, data_dir=None) -> list[Step]:
    """What training and evaluating ``cfg`` still lacks, in the order to make it."""
    d, name, n_classes = cfg.data, cfg.data.dataset, cfg.model.n_classes
    data_dir = data_dir or d.data_dir or None
    problems = {}
    for split in ("train", "val"):
        try:
            source_dataset(name, data_dir, split, with_depth=False, n_classes=n_classes)
        except DataError as e:
            problems.setdefault(str(e), []).append(split)
    out = [
        Step("source", f"the {' and '.join(splits)} split{'s' * (len(splits) > 1)}", f"get the dataset: {e}")
        for e, splits in problems.items()
    ]
    if any("train" in splits for splits in problems.values()):
        return out  # nothing else can be checked without the training images
    src = source_dataset(name, data_dir, "train", with_depth=True, n_classes=n_classes)
    no_depth = sum(not any(p.is_file() for p in src.depth_paths(i)) for i in range(len(src)))
    if no_depth:
        out.append(
            Step("depth", f"depth maps for {no_depth}/{len(src)} training images", prep_command("depth", cfg, data_dir))
        )
    crop = effective_crop(name, d.crop_type)
    if crop == "five":
        try:
            n_items = len(
                five_crop_dataset(name, data_dir, "train", ratio=d.crop_ratio, with_depth=False, n_classes=n_classes)
            )
        except DataError:
            out.append(
                Step(
                    "fivecrop",
                    f"the five-crop training set (ratio {d.crop_ratio:g})",
                    prep_command("fivecrop", cfg, data_dir, f" --ratio {d.crop_ratio:g}"),
                )
            )
            n_items = 5 * len(src)  # what the stage will write
    else:
        n_items = len(src)
    stale = knn_weights_changed(cfg, data_dir)
    if not knn_file(cfg, data_dir).is_file() or stale:
        neighbours, problem = d.num_neighbors, f"; the file there was {stale}" if stale else ""
        if n_items <= neighbours:  # too small for data.num_neighbors: the stage would stop; say the fix here
            neighbours = max(n_items - 1, 1)
            problem = (
                f"; only {n_items} training items, fewer than data.num_neighbors={d.num_neighbors} + 1: "
                f"train with data.num_neighbors={neighbours} (and data.batch_size <= {n_items})"
            )
        k = knn_k(n_items, neighbours, where=f"{name}/train")
        weights = "" if cfg.model.weights == "hub" else f" --weights {cfg.model.weights}"
        ratio = f" --ratio {d.crop_ratio:g}" if crop == "five" else ""
        out.append(
            Step(
                "knn",
                f"the kNN file ({cfg.model.backbone}, {d.knn_res} px, k={k}){problem}",
                prep_command(
                    "knn",
                    cfg,
                    data_dir,
                    f" --backbone {cfg.model.backbone}{weights} --res {d.knn_res} --crop {crop}"
                    f"{ratio} --k {k} --num-neighbors {neighbours} "
                    f"--fidelity {cfg.fidelity.knn_features}{' --overwrite' if stale else ''}",
                ),
            )
        )
    return out


def report(cfg: Config, data_dir=None, splits=("train", "val")) -> tuple[str, list[Step]]:
    """(text, missing steps): per split what exists (images, labels, depth, five-crop where cropped, kNN files),
    then the commands for the rest, numbered in order, or that everything training needs is prepared."""
    d, name = cfg.data, cfg.data.dataset
    data_dir = data_dir or d.data_dir or None
    crop = effective_crop(name, d.crop_type)
    lines = [
        f"dataset {name} under {data_root(data_dir)} (preset {cfg.name}: {cfg.model.backbone}, kNN at "
        f"{d.knn_res} px, {'five-crop ' + format(d.crop_ratio, 'g') if crop == 'five' else 'not cropped'}):"
    ]
    for split in splits:
        try:
            src = source_dataset(name, data_dir, split, with_depth=False, n_classes=cfg.model.n_classes)
        except DataError:
            lines.append(f"  {split}: MISSING (below)")
            continue
        n = len(src)
        labelled = sum(1 for i in range(n) if (p := src.label_path(i)) is not None and p.is_file())
        depth = sum(any(p.is_file() for p in src.depth_paths(i)) for i in range(n))
        parts = [f"{n} images", f"labels for {labelled}/{n}", f"depth for {depth}/{n}"]
        if crop == "five":
            crops = derived_dir(dataset_folder(name), data_dir) / f"five_crop_{d.crop_ratio:g}" / "img" / split
            # PNG crops, or JPEG ones (fidelity.crop_format=reference)
            parts.append(f"five-crop {len(list(crops.glob('*.[pj][np]g'))) if crops.is_dir() else 0}/{5 * n}")
        knn = sorted(
            p.name
            for p in knn_path(dataset_folder(name), split, cfg.model.backbone, crop, d.knn_res, data_dir).parent.glob(
                f"nns_*_{split}_*.npz"
            )
        )
        parts.append(f"kNN files: {', '.join(knn) or 'none'}")
        lines.append(f"  {split}: " + "; ".join(parts))
    missing = missing_steps(cfg, data_dir)
    if missing:
        lines.append("missing for training and evaluation; run, in this order:")
        lines += [f"  {i}. {s.what}: {s.command}" for i, s in enumerate(missing, 1)]
    else:
        lines.append("everything training and evaluation need is prepared.")
    return "\n".join(lines), missing
