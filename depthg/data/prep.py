"""Preparation stages as cached, idempotent steps, and the ``python -m depthg prep ...`` command line.

DESIGN.md §5, §10.10 (deep-spectral-segmentation's ``extract_*`` stages). Every stage
- writes ``<stage dir>/manifest.json``: for each run key (a split, or a kNN file) the parameters that decide the
  outputs, plus the package version (recorded, not compared: a new release does not invalidate prepared data);
- skips items whose outputs exist when the recorded parameters equal the requested ones; outputs found without a
  manifest entry are of unknown origin and are redone;
- refuses, with a DataError that says to pass ``--overwrite``, when the recorded parameters differ;
- shards items by rank: item i is handled by rank i % world, from ``--rank/--world`` or torchrun's RANK/WORLD_SIZE,
  so ``torchrun --nproc_per_node=N -m depthg prep depth ...`` splits the work without a process group;
- shows a tqdm progress bar per rank.

Outputs are written under temporary names and renamed, so an interrupted stage never leaves an output that looks
finished. At the bottom, ``add_prep_parser(subparsers)`` registers ``prep`` for ``depthg.cli``, and ``main(argv)``
runs it alone with the same error handling (one ``error: ...`` line on stderr, exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

import depthg
from depthg.errors import ConfigError, DataError, DepthGError

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


# ---- sharding ----------------------------------------------------------------------------------------------------

def resolve_rank(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """(rank, world): explicit values first, then torchrun's RANK / WORLD_SIZE, else a single process (0, 1)."""
    if world is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"--rank {rank} / --world {world} is not a valid shard: need world >= 1 and "
                          f"0 <= rank < world.")
    return rank, world


def shard(n_items: int, rank: int, world: int) -> range:
    """The items of this rank: i with i % world == rank (disjoint, and together every item once)."""
    assert 0 <= rank < world, f"rank {rank} outside world {world}"
    return range(rank, n_items, world)


# ---- manifest ----------------------------------------------------------------------------------------------------

def _canonical(params: dict) -> dict:
    """JSON round trip, so tuples and lists (and int/float keys) compare as they will after reading back."""
    return json.loads(json.dumps(params, sort_keys=True))


@contextlib.contextmanager
def stage_lock(stage_dir: Path, name: str = ".manifest.lock"):
    """Exclusive lock on a file of the stage dir (default: the manifest's), as several ranks write at once."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    with open(stage_dir / name, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_manifest(stage_dir: Path) -> dict:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"stage manifest {path} is not valid JSON ({e}); delete it and rerun with --overwrite.") from e
    if not isinstance(data, dict) or not isinstance(data.get("runs", {}), dict):
        raise DataError(f"stage manifest {path} has an unknown layout; delete it and rerun with --overwrite.")
    return data


def recorded_params(stage_dir: Path, key: str) -> dict | None:
    """The parameters a finished or partial run ``key`` of this stage was made with, or None."""
    run = read_manifest(stage_dir).get("runs", {}).get(key)
    return None if run is None else run.get("params")


def check_run(stage_dir: Path, stage: str, key: str, params: dict, *, overwrite: bool) -> bool:
    """Whether outputs of run ``key`` already there were made with ``params`` and may be kept (skip-finished).

    A recorded entry with other parameters is refused unless ``overwrite``; no entry means outputs of unknown
    origin, which are not kept.
    """
    old = recorded_params(Path(stage_dir), key)
    params = _canonical(params)
    if old is not None and old != params and not overwrite:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {params.get(k)!r}" for k in sorted(set(old) | set(params))
                            if old.get(k) != params.get(k))
        raise DataError(f"{stage} outputs for {key!r} in {stage_dir} were made with other parameters ({changes}); "
                        f"rerun with --overwrite to replace them, or use the recorded parameters.")
    return old == params and not overwrite


def record_run(stage_dir: Path, stage: str, key: str, params: dict) -> None:
    """Write ``params`` as the entry of run ``key`` in the stage manifest (atomically, under a lock)."""
    stage_dir = Path(stage_dir)
    with stage_lock(stage_dir):
        manifest = read_manifest(stage_dir)
        manifest["stage"] = stage
        manifest.setdefault("runs", {})[key] = {"params": _canonical(params), "depthg_version": depthg.__version__}
        tmp = stage_dir / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, stage_dir / MANIFEST)


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` (same suffix, so writers that pick the format by suffix still work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


# ---- the item loop -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageResult:
    processed: int  # items of this rank computed now
    skipped: int  # items of this rank already finished with the same parameters
    total: int  # items of this rank


def run_stage(
    stage_dir: Path,
    stage: str,
    key: str,
    params: dict,
    n_items: int,
    *,
    done: Callable[[int], bool],
    remove: Callable[[int], None],
    process: Callable[[list[int]], None],
    overwrite: bool = False,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 1,
    desc: str = "",
    progress: bool = True,
) -> StageResult:
    """One run of a stage: check the manifest, record it, and ``process`` batches of this rank's unfinished items.

    When existing outputs cannot be kept (``--overwrite``, or no manifest entry) this rank's outputs are removed
    *before* the entry is recorded, so an interrupted run never leaves old outputs under new parameters.
    """
    keep = check_run(stage_dir, stage, key, params, overwrite=overwrite)
    mine = list(shard(n_items, rank, world))
    if not keep:
        for i in mine:
            remove(i)
    record_run(stage_dir, stage, key, params)
    todo = [i for i in mine if not (keep and done(i))]
    label = f"{desc} [rank {rank}/{world}]" if world > 1 else desc
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=label, unit="item", position=rank,
              disable=not progress, leave=world == 1) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            process(batch)
            bar.update(len(batch))
    return StageResult(processed=len(todo), skipped=len(mine) - len(todo), total=len(mine))


# ---- command line ------------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, *, splits: bool = True) -> None:
    p.add_argument("--dataset", required=True, help="cocostuff27, cityscapes, potsdam, potsdamraw, synthetic or "
                                                    "directory:<folder>")
    p.add_argument("--data-dir", help="data root (default: $DEPTHG_DATA_DIR or <repo>/data)")
    if splits:
        p.add_argument("--splits", "--split", nargs="+", default=list(SPLITS), help="splits to prepare")
        p.add_argument("--rank", type=int, help="this process's shard (default: $RANK or 0)")
        p.add_argument("--world", type=int, help="number of shards (default: $WORLD_SIZE or 1)")
        p.add_argument("--overwrite", action="store_true", help="recompute outputs made with other parameters")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_prep_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prep`` and its stages on ``subparsers`` (used by depthg.cli and by :func:`main`)."""
    prep = subparsers.add_parser("prep", help="prepare data: synthetic world, five-crop, depth maps, kNN",
                                 description="Cached, idempotent data preparation. Order for a real dataset: "
                                             "depth -> fivecrop -> knn; `prep check` says what is missing.")
    sub = prep.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("synthetic", help="generate the synthetic RGB-D world")
    p.add_argument("--data-dir", help="data root (default: $DEPTHG_DATA_DIR or <repo>/data)")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-val", type=int, default=50)
    p.add_argument("--res", type=int, default=112, help="image side (the synthetic preset trains at 112)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synthetic)

    p = sub.add_parser("pretrain", help="DINO self-supervised pretraining of the synthetic world's backbone")
    p.add_argument("overrides", nargs="*", help="key=value parameters of depthg.training.pretrain.PretrainConfig")
    p.add_argument("--out", help="weights file (.safetensors; default: the bundled file in depthg/assets)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (part of the result: recorded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("fivecrop", help="five-crop image, label and depth (METHOD.md §1.4)")
    _common(p)
    p.add_argument("--ratio", type=float, default=0.5, help="crop side as a fraction of the image side")
    p.set_defaults(func=_cmd_fivecrop)

    p = sub.add_parser("depth", help="monocular depth maps with a transformers model (METHOD.md §1.3)")
    _common(p)
    p.add_argument("--model", default=None, help="HF model id or a local model directory (default: "
                                                 "depth-anything/Depth-Anything-V2-Small-hf; the paper: "
                                                 "Intel/zoedepth-nyu-kitti)")
    p.add_argument("--output-kind", choices=("auto", "disparity", "metric"), default="auto",
                   help="what the model outputs; auto: metric for ZoeDepth-like models, else disparity")
    p.add_argument("--eps", type=float, default=0.1, help="disparity -> depth: 1/(normalised disparity + eps)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.set_defaults(func=_cmd_depth)

    p = sub.add_parser("knn", help="nearest neighbours of pooled backbone features (METHOD.md §1.5)")
    _common(p)
    p.add_argument("--backbone", default="vit_small_patch8")
    p.add_argument("--weights", default="hub", help="hub, random or a weight file")
    p.add_argument("--res", type=int, default=224, help="feature resolution; also in the file name (§9 #8)")
    p.add_argument("--crop", choices=("five", "none"), default="five", help="five-crop set or the source images")
    p.add_argument("--ratio", type=float, default=0.5, help="five-crop ratio (with --crop five)")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--chunk-size", type=int, default=None, help="rows per similarity chunk (default: from a "
                                                                "256 MB budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--fidelity", choices=("paper", "reference"), default="paper",
                   help="paper: eval-mode features, bilinear resize; reference: Dropout2d(0.1) active and "
                        "NEAREST resize as the release")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference-fidelity dropout")
    p.add_argument("--merge", action="store_true", help="only merge existing feature shards into the kNN file")
    p.set_defaults(func=_cmd_knn)

    p = sub.add_parser("check", help="report what is prepared for a dataset and how to prepare the rest")
    _common(p, splits=False)
    p.add_argument("--splits", "--split", nargs="+", default=list(SPLITS))
    p.add_argument("--ratio", type=float, default=0.5)
    p.set_defaults(func=_cmd_check)
    return prep


def _shard_args(args) -> dict:
    rank, world = resolve_rank(args.rank, args.world)
    return dict(rank=rank, world=world, overwrite=args.overwrite, progress=not args.no_progress)


def _check_data_dir(args) -> None:
    from depthg.data.labels import dataset_info
    from depthg.paths import data_root

    dataset_info(args.dataset)  # unknown name -> DataError listing the valid ones
    root = data_root(args.data_dir)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; pass --data-dir or set DEPTHG_DATA_DIR.")


def _report(stage: str, results: Iterable[tuple[str, StageResult]]) -> None:
    for split, r in results:
        print(f"{stage} {split}: {r.processed} computed, {r.skipped} already done, {r.total} items in this shard")


def _cmd_synthetic(args) -> int:
    from depthg.data.synthetic import write_synthetic
    from depthg.paths import data_root

    for name, v in (("--n-train", args.n_train), ("--n-val", args.n_val), ("--res", args.res)):
        if v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}.")
    root = write_synthetic(data_root(args.data_dir) / "synthetic", n_train=args.n_train, n_val=args.n_val,
                           res=args.res, seed=args.seed)
    print(f"synthetic world written to {root}")
    return 0


def _cmd_pretrain(args) -> int:
    from depthg.training.pretrain import main

    return main(args)


def _cmd_fivecrop(args) -> int:
    from depthg.data.fivecrop import run_fivecrop

    _check_data_dir(args)
    _report("fivecrop", run_fivecrop(args.dataset, args.data_dir, args.splits, ratio=args.ratio, **_shard_args(args)))
    return 0


def _cmd_depth(args) -> int:
    from depthg.data.depth_estimation import DEFAULT_MODEL, run_depth

    _check_data_dir(args)
    _report("depth", run_depth(args.dataset, args.data_dir, args.splits, model=args.model or DEFAULT_MODEL,
                               output_kind=args.output_kind, eps=args.eps, batch_size=args.batch_size,
                               device=args.device, **_shard_args(args)))
    return 0


def _cmd_knn(args) -> int:
    from depthg.data.knn import run_knn

    _check_data_dir(args)
    for split in args.splits:
        path = run_knn(args.dataset, args.data_dir, split, backbone=args.backbone, weights=args.weights,
                       res=args.res, crop=args.crop, ratio=args.ratio, k=args.k, chunk_size=args.chunk_size,
                       batch_size=args.batch_size, device=args.device, fidelity=args.fidelity, seed=args.seed,
                       merge_only=args.merge, **_shard_args(args))
        pending = "this shard's features written; the file follows once every shard exists (or run with --merge)"
        print(f"knn {split}: {path or pending}")
    return 0


def prepared_report(dataset: str, data_dir, splits, *, ratio: float = 0.5) -> str:
    """What is prepared for ``dataset`` per split (source, depth, five-crop, kNN files) and the commands for the rest.

    Counts files only (no image is decoded), so it is quick on real datasets.
    """
    from depthg.data.datasets import effective_crop, source_dataset
    from depthg.data.depth_estimation import depth_dir
    from depthg.data.fivecrop import N_CROPS, five_crop_dir

    base = f"python -m depthg prep {{}} --dataset {dataset}" + (f" --data-dir {data_dir}" if data_dir else "")
    lines, todo = [f"dataset {dataset}:"], []
    for split in splits:
        try:
            src = source_dataset(dataset, data_dir, split, with_depth=False)
        except DataError as e:
            lines.append(f"  {split}: source missing ({e})")
            continue
        n = len(src)
        with_depth = sum(any(p.is_file() for p in src.depth_paths(i)) for i in range(n))
        ours = sum((depth_dir(dataset, data_dir) / split / f"{key}.png").is_file() for key in src.keys())
        crops = len(list((five_crop_dir(dataset, data_dir, ratio) / "img" / split).glob("*.png")))
        knn_dir = five_crop_dir(dataset, data_dir, ratio).parent / "knn"
        knn = sorted(p.name for p in knn_dir.glob(f"nns_*_{split}_*.npz"))
        lines.append(f"  {split}: {n} source images; depth for {with_depth}/{n} ({ours} by the depth stage); "
                     f"five-crop ({ratio:g}) {crops}/{N_CROPS * n}; kNN files: {', '.join(knn) or 'none'}")
        if with_depth < n:
            todo.append(base.format("depth") + f" --splits {split}")
        if effective_crop(dataset, "five") == "five" and crops < N_CROPS * n:
            todo.append(base.format("fivecrop") + f" --splits {split} --ratio {ratio:g}")
        if not knn:
            todo.append(base.format("knn") + f" --splits {split} --backbone <model.backbone> --res <data.knn_res>")
    lines.append("to prepare the rest:" if todo else "everything is prepared.")
    lines += [f"  {c}" for c in todo]
    return "\n".join(lines)


def _cmd_check(args) -> int:
    _check_data_dir(args)
    print(prepared_report(args.dataset, args.data_dir, args.splits, ratio=args.ratio))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m depthg.data.prep ...`` = ``python -m depthg prep ...``: a DepthGError is one line, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m depthg.data.prep")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prep_parser(sub)
    args = parser.parse_args(["prep", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except DepthGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
