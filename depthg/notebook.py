"""The notebooks' edge: resolve their parameters into a Config, and make sure the dataset is prepared.

:func:`prepare` is the first call of every notebook. For ``synthetic`` it generates the world and its kNN file
through the cached stages (:func:`depthg.data.synthetic.write_synthetic`, :func:`depthg.data.knn.run_knn`), which
skip work already done. For a real dataset it checks what training and evaluation need (source images and labels,
depth for the training images, the five-crop set where the dataset is cropped, the kNN file of the configured
backbone and resolution) and raises one :class:`~depthg.errors.DataError` listing the ``python -m depthg prep ...``
commands still to run, in order; with ``run_stages=True`` it runs those stages itself first.

:func:`resolve_config` turns notebook parameters (papermill passes strings) into a validated Config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthg.config import Config
from depthg.data.datasets import effective_crop, train_source
from depthg.data.depth_estimation import DEFAULT_MODEL, PAPER_MODEL, run_depth
from depthg.data.fivecrop import run_fivecrop
from depthg.data.knn import run_knn
from depthg.data.labels import dataset_info
from depthg.data.pairs import build_eval_set, build_train_set
from depthg.data.readiness import check_command, knn_file, knn_k, knn_weights_changed, missing_steps
from depthg.data.synthetic import write_synthetic
from depthg.errors import ConfigError, DataError
from depthg.paths import data_root, dataset_base, repo_root
from depthg.presets import DEFAULT_PRESETS, load_preset
from depthg.training.checkpoints import load_trained_model
from depthg.training.train import run_directory, train

SYNTHETIC_DEFAULT_SIZE = (200, 50)  # train, val images (as `python -m depthg prep synthetic`)


def as_list(value: Any, kind: type = str) -> list:
    """A papermill parameter as a list: None -> [], a list stays, '0,1,2' or '0 1 2' or 3 -> items of ``kind``."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = value.strip().strip("[]()").replace(",", " ").split()
    else:
        items = [value]
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise ConfigError(f"cannot read {value!r} as a list of {kind.__name__}") from None


def display_path(path: str | Path) -> str:
    """A path as notebooks print it: relative to the repository when inside it, so outputs do not carry the
    machine's absolute paths."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def resolve_config(
    dataset: str,
    *,
    preset: str | None = None,
    data_dir: str | None = None,
    fidelity: str | None = None,
    weights: str | None = None,
    iterations: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    max_images: int | None = None,
    crf: bool | None = None,
    overrides: Any = None,
) -> Config:
    """The preset of ``dataset`` (or ``preset``) with the notebook parameters applied; ``overrides`` (a list or a
    whitespace-separated string of section.key=value) come last and win. None leaves the preset's value."""

    dataset_info(dataset)  # unknown name -> DataError listing the valid ones
    base = dataset_base(dataset)
    if preset is None:
        if base not in DEFAULT_PRESETS:
            raise ConfigError(
                f"dataset {dataset!r} has no default preset; pass preset (one of "
                f"{', '.join(sorted(set(DEFAULT_PRESETS.values())))}) and model.n_classes=... in "
                f"overrides."
            )
        preset = DEFAULT_PRESETS[base]
    named: dict[str, Any] = {"data.dataset": dataset}
    if data_dir:
        named["data.data_dir"] = str(data_dir)
    if fidelity:
        named["fidelity"] = fidelity
    for key, value in (
        ("model.weights", weights),
        ("train.iterations", iterations),
        ("train.seed", seed),
        ("train.device", device),
        ("train.threads", threads),
        ("eval.max_images", max_images),
        ("eval.crf", crf),
    ):
        if value is not None:
            named[key] = value
    cfg = load_preset(preset, named)
    return cfg.with_overrides(as_list(overrides))


@dataclass
class Prepared:
    """What :func:`prepare` found or made (paths relative to the repository where possible)."""

    dataset: str
    data_dir: Path
    n_train: int  # training items (five-crop crops where the dataset is cropped)
    n_val: int  # evaluation images
    knn_file: Path
    actions: list[str] = field(default_factory=list)

    def summary(self) -> str:
        done = "; ".join(self.actions) or "already prepared"
        return (
            f"{self.dataset} in {display_path(self.data_dir)}: {self.n_train} training items, {self.n_val} "
            f"evaluation images, kNN file {display_path(self.knn_file)} ({done})"
        )


def prepare(
    dataset: str,
    data_dir: str | None = None,
    *,
    cfg: Config | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    seed: int | None = None,
    run_stages: bool = False,
    depth_model: str | None = None,
    device: str = "auto",
    progress: bool = False,
) -> Prepared:
    """Make sure ``dataset`` is ready for training and evaluation with ``cfg`` (default: its preset).

    synthetic: generate the world and its kNN file; an existing world is kept unless ``n_train``, ``n_val`` or
    ``seed`` ask for another one (None: the existing world's value, else 200, 50 and 0). Real datasets: check; with
    ``run_stages`` run depth -> fivecrop -> knn on the training split
    first (depth with ``depth_model``, default Depth Anything V2 Small; needs the model weights). Raises DataError
    naming the missing ``python -m depthg prep`` commands.
    """
    cfg = cfg or resolve_config(dataset, data_dir=data_dir)
    if cfg.data.dataset != dataset:
        raise ConfigError(f"prepare({dataset!r}) got a config for dataset {cfg.data.dataset!r}.")
    data_dir = data_dir or cfg.data.data_dir or None
    if dataset == "synthetic":
        return _synthetic(cfg, data_dir, n_train, n_val, seed, device, progress)
    actions = _run_stages(cfg, data_dir, depth_model, device, progress) if run_stages else []
    missing = missing_steps(cfg, data_dir)
    if missing:
        lines = "\n".join(f"  {i}. {s.what}: {s.command}" for i, s in enumerate(missing, 1))
        where = f" -p data_dir {data_dir}" if data_dir else ""
        preset = None if DEFAULT_PRESETS.get(dataset_base(dataset)) == cfg.name else cfg.name
        raise DataError(
            f"dataset {dataset!r} is not prepared under {data_root(data_dir)}. Run, in this order:\n"
            f"{lines}\n(or run notebooks/01_data_prep.ipynb with -p dataset {dataset}{where}; "
            f"`{check_command(cfg, data_dir, preset)}` shows what exists)."
        )

    train, val = build_train_set(cfg), build_eval_set(cfg)  # any remaining inconsistency raises here
    return Prepared(dataset, data_root(data_dir), len(train), len(val), knn_file(cfg, data_dir), actions)


# ---- synthetic ---------------------------------------------------------------------------------------------------


def _synthetic(cfg: Config, data_dir, n_train, n_val, seed, device, progress) -> Prepared:

    root = data_root(data_dir) / "synthetic"
    manifest = root / "manifest.json"
    before = json.loads(manifest.read_text()) if manifest.is_file() else None
    # what is not asked for is the existing world's (the one 01_data_prep made), else the defaults
    old = before or dict(zip(("n_train", "n_val", "seed", "res"), (*SYNTHETIC_DEFAULT_SIZE, 0, cfg.data.res)))
    n_train, n_val, seed = (
        old[k] if v is None else v for k, v in (("n_train", n_train), ("n_val", n_val), ("seed", seed))
    )
    same = (n_train, n_val, seed) == (old["n_train"], old["n_val"], old["seed"])
    res = old["res"] if same else cfg.data.res
    write_synthetic(root, n_train=n_train, n_val=n_val, res=res, seed=seed, progress=progress)
    after = json.loads(manifest.read_text())
    changed = after != before
    actions = [f"generated the world ({n_train} + {n_val} images at {res} px)"] if changed else []
    if cfg.data.crop_type == "five":
        run_fivecrop("synthetic", data_dir, ["train"], ratio=cfg.data.crop_ratio, overwrite=changed, progress=progress)
        actions.append("five-crop")
    knn = knn_file(cfg, data_dir)
    if changed or not knn.is_file() or knn_weights_changed(cfg, data_dir):
        # training reads whichever kNN file exists for its backbone and resolution; make it only when missing, when
        # the world it indexes was regenerated, or when the backbone's weights are not the ones it was made with
        run_knn(
            "synthetic",
            data_dir,
            "train",
            backbone=cfg.model.backbone,
            weights=cfg.model.weights,
            res=cfg.data.knn_res,
            crop=cfg.data.crop_type,
            ratio=cfg.data.crop_ratio,
            k=knn_k(n_train, cfg.data.num_neighbors, where="synthetic/train"),
            device=device,
            fidelity=cfg.fidelity.knn_features,
            seed=0,
            overwrite=True,
            progress=progress,
        )
        actions.append("computed the kNN file")
    return Prepared("synthetic", data_root(data_dir), n_train, n_val, knn, actions)


# ---- real datasets -----------------------------------------------------------------------------------------------


def _run_stages(cfg: Config, data_dir, depth_model, device, progress) -> list[str]:
    """depth -> fivecrop -> knn on the training split, each only when :func:`missing_steps` still lists it."""

    d = cfg.data
    todo = lambda: {step.stage for step in missing_steps(cfg, data_dir)}
    actions = []
    if "source" in todo():
        return actions  # nothing to prepare from; the check reports what to download
    if "depth" in todo():
        # a reference preset asks for the release's model (data.depth_model) and its 8-bit encoding
        model = depth_model or d.depth_model or DEFAULT_MODEL
        run_depth(
            d.dataset,
            data_dir,
            ["train"],
            model=model,
            device=device,
            progress=progress,
            encoding="release8" if model == PAPER_MODEL else "float16",
        )
        actions.append("depth maps")
    if "fivecrop" in todo():
        run_fivecrop(
            d.dataset,
            data_dir,
            ["train"],
            ratio=d.crop_ratio,
            fidelity=cfg.fidelity.crop_format,
            depth_model=d.depth_model,
            progress=progress,
        )
        actions.append("five-crop")
    if "knn" in todo():
        crop = effective_crop(d.dataset, d.crop_type)
        n = len(train_source(d.dataset, data_dir, "train", crop=crop, ratio=d.crop_ratio, with_depth=False))
        run_knn(
            d.dataset,
            data_dir,
            "train",
            backbone=cfg.model.backbone,
            weights=cfg.model.weights,
            res=d.knn_res,
            crop=crop,
            ratio=d.crop_ratio,
            k=knn_k(n, d.num_neighbors, where=f"{d.dataset}/train"),
            device=device,
            fidelity=cfg.fidelity.knn_features,
            bf16=cfg.train.bf16,
            overwrite=knn_weights_changed(cfg, data_dir) is not None,  # the weights changed: the old file goes
            progress=progress,
        )
        actions.append("kNN file")
    return actions


def trained_model(
    cfg: Config,
    checkpoint: str | Path | None = None,
    *,
    fallback_iterations: int = 100,
    results_dir: str | None = None,
    progress: bool = False,
):
    """(model in eval mode, its config, checkpoint path, whether it was trained now) for the figures.

    ``checkpoint`` None: the run 02_train makes for ``cfg`` (results/runs/<run name>/, :func:`depthg.paths.run_name`),
    and if that does not exist a short run of ``fallback_iterations`` is trained (without evaluation) under
    ``figures-<run name>``. The returned config is the checkpoint's, with this ``cfg``'s data location and
    evaluation settings.
    """
    path = Path(checkpoint) if checkpoint else run_directory(cfg, None, results_dir) / "checkpoints" / "last.pt"
    trained = False
    if checkpoint is None and not path.is_file():
        short = cfg.with_overrides({"train.iterations": fallback_iterations})
        path = train(
            short,
            run_name=run_directory(cfg, None, results_dir, kind="figures").name,
            results_dir=results_dir,
            progress=progress,
        ).checkpoint
        trained = True
    model, ckpt_cfg, _ = load_trained_model(path)
    if ckpt_cfg.data.dataset != cfg.data.dataset:
        raise ConfigError(
            f"checkpoint {path} was trained on {ckpt_cfg.data.dataset!r}, not {cfg.data.dataset!r}; "
            f"pass a checkpoint of {cfg.data.dataset!r} or leave checkpoint=None."
        )
    ckpt_cfg = ckpt_cfg.with_overrides(
        {
            "data.data_dir": cfg.data.data_dir,
            "data.num_workers": cfg.data.num_workers,
            **{f"eval.{k}": v for k, v in cfg.eval.__dict__.items()},
        }
    )
    return model, ckpt_cfg, path, trained
