"""``python -m depthg prep ...``: the preparation stages' command line (the stages live in :mod:`depthg.data`).

``add_prep_parser(subparsers)`` registers ``prep`` for :mod:`depthg.cli.main`; ``main(argv)`` runs it alone with
the same error handling (one ``error: ...`` line on stderr, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from depthg.data.labels import dataset_info
from depthg.data.stage import SPLITS, StageResult, resolve_rank
from depthg.errors import ConfigError, DataError, DepthGError
from depthg.paths import data_root

# ---- command line ------------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, splits: bool = True) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        help="cocostuff27, cityscapes, potsdam, potsdamraw, synthetic or directory:<folder>: a folder of "
        "your images under the data root, laid out <folder>/imgs/{train,val}/<stem>.{jpg,png} with "
        "optional labels <folder>/labels/{train,val}/<stem>.png (class ids, 255 = ignore)",
    )
    p.add_argument("--data-dir", help="data root (default: $DEPTHG_DATA_DIR or <repo>/data)")
    if splits:
        p.add_argument("--splits", "--split", nargs="+", default=list(SPLITS), help="splits to prepare")
        p.add_argument("--rank", type=int, help="this process's shard (default: $RANK or 0)")
        p.add_argument("--world", type=int, help="number of shards (default: $WORLD_SIZE or 1)")
        p.add_argument("--overwrite", action="store_true", help="recompute outputs made with other parameters")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_prep_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prep`` and its stages on ``subparsers`` (used by depthg.cli.main and by :func:`main`)."""
    prep = subparsers.add_parser(
        "prep",
        help="prepare data: synthetic world, five-crop, depth maps, kNN",
        description="Cached, idempotent data preparation. Order for a real dataset: "
        "depth -> fivecrop -> knn; `prep check` says what is missing. A folder "
        "of your own images is --dataset directory:<folder> with the layout "
        "<data root>/<folder>/imgs/{train,val}/*.{jpg,png} (labels optional: "
        "<folder>/labels/{train,val}/<stem>.png); small sets need "
        "knn --k <= the number of items and > --num-neighbors.",
    )
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
    p.add_argument("--stop-at", type=int, help="stop after this many iterations (checkpoint kept; resume later)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (the bundled weights' recipe), cuda, cuda:1 or auto; recorded, part of the result",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser(
        "fivecrop",
        help="cut every image, label and depth map into five crops (four corners and the centre) for training",
    )
    _common(p)
    p.add_argument("--ratio", type=float, default=0.5, help="crop side as a fraction of the image side")
    p.add_argument(
        "--fidelity",
        choices=("paper", "reference"),
        default="paper",
        help="image format: paper = lossless PNG, reference = JPEG quality 75 as the release",
    )
    p.add_argument(
        "--depth-model",
        default="",
        help="the config's data.depth_model; Intel/zoedepth-nyu reads the authors' released depth maps before ours",
    )
    p.set_defaults(func=_cmd_fivecrop)

    p = sub.add_parser(
        "depth", help="estimate a depth map for every image with a monocular depth model (Hugging Face transformers)"
    )
    _common(p)
    p.add_argument(
        "--model",
        default=None,
        help="HF model id or a local model directory (default: "
        "depth-anything/Depth-Anything-V2-Small-hf; the paper and "
        "the release: Intel/zoedepth-nyu = ZoeD_M12_N)",
    )
    p.add_argument(
        "--encoding",
        choices=("float16", "release8"),
        default="float16",
        help="float16: 16-bit PNG + sidecar; release8: the release's 8-bit min-max maps (reference)",
    )
    p.add_argument(
        "--output-kind",
        choices=("auto", "disparity", "metric"),
        default="auto",
        help="what the model outputs; auto: metric for ZoeDepth-like models, else disparity",
    )
    p.add_argument("--eps", type=float, default=0.1, help="disparity -> depth: 1/(normalised disparity + eps)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.set_defaults(func=_cmd_depth)

    p = sub.add_parser(
        "knn",
        help="find each training image's nearest neighbours by pooled backbone "
        "features (training draws positive pairs from them)",
    )
    _common(p)
    p.add_argument("--backbone", default="vit_small_patch8")
    p.add_argument(
        "--weights",
        default="hub",
        help="hub, bundled (the synthetic backbone in depthg/assets), random or a weight file",
    )
    p.add_argument(
        "--res",
        type=int,
        default=224,
        help="image side in pixels the features are computed at; "
        "part of the kNN file name, so give training's data.knn_res",
    )
    p.add_argument("--crop", choices=("five", "none"), default="five", help="five-crop set or the source images")
    p.add_argument("--ratio", type=float, default=0.5, help="five-crop ratio (with --crop five)")
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="neighbours stored per item, the item itself first (default: 30, the release's, or the "
        "number of items if fewer); needs --num-neighbors < k <= items",
    )
    p.add_argument(
        "--num-neighbors",
        type=int,
        default=7,
        help="the data.num_neighbors training will use (partners are drawn from ranks 1..this); "
        "checked against --k so the file is usable (default: 7, the config default)",
    )
    p.add_argument(
        "--chunk-size", type=int, default=None, help="rows per similarity chunk (default: from a 256 MB budget)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast of the backbone on CUDA (train.bf16); default fp32, as the release",
    )
    p.add_argument(
        "--fidelity",
        choices=("paper", "reference"),
        default="paper",
        help="paper: eval-mode features, bilinear resize; reference: Dropout2d(0.1) active and "
        "NEAREST resize as the release",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the reference-fidelity dropout")
    p.add_argument("--merge", action="store_true", help="only merge existing feature shards into the kNN file")
    p.set_defaults(func=_cmd_knn)

    p = sub.add_parser(
        "check",
        help="report what is prepared for a dataset and how to prepare the rest",
        description="Counts the files training and evaluation need (source images and labels, "
        "depth, five-crop set where the dataset is cropped, kNN file of the preset's "
        "backbone and resolution) and prints the commands for what is missing, with "
        "the preset's values. Exit status 0: everything is prepared; 1: something is "
        "missing (listed); 2: a bad argument.",
    )
    _common(p, splits=False)
    p.add_argument("--splits", "--split", nargs="+", default=list(SPLITS))
    p.add_argument(
        "--preset",
        help="preset whose backbone, resolutions and crop to check (default: the "
        "dataset's; directory:<folder> needs one, e.g. synthetic)",
    )
    p.add_argument(
        "overrides", nargs="*", help="config overrides section.key=value (e.g. data.knn_res=224 model.n_classes=5)"
    )
    p.set_defaults(func=_cmd_check)
    return prep


def _shard_args(args) -> dict:
    rank, world = resolve_rank(args.rank, args.world)
    return dict(rank=rank, world=world, overwrite=args.overwrite, progress=not args.no_progress)


def _check_data_dir(args) -> None:

    dataset_info(args.dataset)  # unknown name -> DataError listing the valid ones
    root = data_root(args.data_dir)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; pass --data-dir or set DEPTHG_DATA_DIR.")


def _report(stage: str, results: Iterable[tuple[str, StageResult]]) -> None:
    for split, r in results:
        print(f"{stage} {split}: {r.processed} computed, {r.skipped} already done, {r.total} items in this shard")


def _cmd_synthetic(args) -> int:
    # lazy: a stage loads torch/transformers only when it runs, so --help stays fast
    from depthg.data.synthetic import write_synthetic

    # the same message style as config validation; 16 px: a half-side five-crop still holds one 8 px patch
    for name, v, low in (("--n-train", args.n_train, 1), ("--n-val", args.n_val, 1), ("--res", args.res, 16)):
        if v < low:
            raise ConfigError(f"{name}={v} is out of range: it must be an integer >= {low}.")
    # lazy: a stage loads torch/transformers only when it runs, so --help stays fast
    from depthg.files import file_lock

    target = data_root(args.data_dir) / "synthetic"
    # one generator per folder: a second one would delete the files the first is writing (the lock lives beside
    # the folder, which the generator may empty)
    with file_lock(target.parent / ".synthetic.lock", wait=False, what=f"synthetic world {target}"):
        _check_json(target / "manifest.json")
        root = write_synthetic(target, n_train=args.n_train, n_val=args.n_val, res=args.res, seed=args.seed)
    print(f"synthetic world written to {root}")
    return 0


def _check_json(path) -> None:
    """A manifest that exists must parse (a torn write, a full disk), or the stage stops with one line."""
    try:
        if path.is_file():
            json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"manifest {path} is damaged ({e}); delete it and rerun the same command.") from None


def _cmd_pretrain(args) -> int:
    # lazy: a stage loads torch/transformers only when it runs, so --help stays fast
    from depthg.training.pretrain import main

    return main(args)


def _cmd_fivecrop(args) -> int:
    # lazy: a stage loads torch/transformers only when it runs, so --help stays fast
    from depthg.data.fivecrop import run_fivecrop

    _check_data_dir(args)
    _report(
        "fivecrop",
        run_fivecrop(
            args.dataset,
            args.data_dir,
            args.splits,
            ratio=args.ratio,
            fidelity=args.fidelity,
            depth_model=args.depth_model,
            **_shard_args(args),
        ),
    )
    return 0


def _cmd_depth(args) -> int:
    # lazy: a stage loads torch/transformers only when it runs, so --help stays fast
    from depthg.data.depth_estimation import DEFAULT_MODEL, run_depth

    _check_data_dir(args)
    _report(
        "depth",
        run_depth(
            args.dataset,
            args.data_dir,
            args.splits,
            model=args.model or DEFAULT_MODEL,
            output_kind=args.output_kind,
            eps=args.eps,
            batch_size=args.batch_size,
            device=args.device,
            encoding=args.encoding,
            **_shard_args(args),
        ),
    )
    return 0


def _cmd_knn(args) -> int:
    # lazy: a stage loads torch/transformers only when it runs, so --help stays fast
    from depthg.data.datasets import train_source
    from depthg.data.knn import run_knn
    from depthg.data.readiness import knn_k

    _check_data_dir(args)
    for split in args.splits:
        # the items the stage indexes, counted before any model loads: a k the set cannot give stops here
        n = len(train_source(args.dataset, args.data_dir, split, crop=args.crop, ratio=args.ratio, with_depth=False))
        k = knn_k(n, args.num_neighbors, args.k, where=f"{args.dataset}/{split}")
        path = run_knn(
            args.dataset,
            args.data_dir,
            split,
            backbone=args.backbone,
            weights=args.weights,
            res=args.res,
            crop=args.crop,
            ratio=args.ratio,
            k=k,
            chunk_size=args.chunk_size,
            batch_size=args.batch_size,
            device=args.device,
            fidelity=args.fidelity,
            seed=args.seed,
            bf16=args.bf16,
            merge_only=args.merge,
            **_shard_args(args),
        )
        pending = "this shard's features written; the file follows once every shard exists (or run with --merge)"
        print(f"knn {split}: {path or pending}")
    return 0


def _cmd_check(args) -> int:
    # lazy: the check reads the data layer (torch) only when it runs, so --help stays fast
    from depthg.data.readiness import report
    from depthg.notebook import resolve_config

    _check_data_dir(args)
    cfg = resolve_config(args.dataset, preset=args.preset, data_dir=args.data_dir, overrides=args.overrides)
    text, missing = report(cfg, args.data_dir, args.splits)
    print(text)
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m depthg.cli.prep ...`` = ``python -m depthg prep ...``: a DepthGError is one line, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m depthg.cli.prep")
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
