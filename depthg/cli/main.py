"""Command line: ``python -m depthg {prep,train,eval,reproduce,presets}``.

The CLI only parses arguments and calls the library. A :class:`~depthg.errors.DepthGError` (bad path, unknown
name, unprepared dataset, missing weights) is printed as one line without a traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from functools import partial

from depthg.errors import DepthGError

_STORAGE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the DepthG head and probes from a preset",
        description="Train a preset. Overrides are section.key=value, e.g. loss.dfc=false "
        "train.iterations=100 fidelity=reference. A folder of your own images: "
        "--preset synthetic data.dataset=directory:<folder> model.n_classes=N, with "
        "<data root>/<folder>/imgs/{train,val}/*.{jpg,png} (labels optional: "
        "<folder>/labels/{train,val}/<stem>.png) prepared by `python -m depthg prep "
        "check --dataset directory:<folder> --preset synthetic`; small sets also need "
        "data.num_neighbors < items and data.batch_size <= items. The run folder "
        "is results/runs/<dataset>-<preset>-seed<seed>; one of another config is "
        "refused unless --overwrite.",
    )
    p.add_argument("--preset", default="synthetic", help="named preset (see `python -m depthg presets`)")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    p.add_argument("--config", help="a resolved config.json to start from instead of a preset")
    p.add_argument(
        "--run-name",
        help="name of the run folder under results/runs/ (default: dataset, preset and "
        "seed, e.g. synthetic-seed0, potsdamraw-potsdam_vits8-seed0)",
    )
    p.add_argument("--results-dir", help="results root (default: $DEPTHG_RESULTS_DIR or <repo>/results)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run folder that holds another config's run or results committed to the repository",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    # lazy: torch and the library load only when a command runs, so --help stays fast
    from depthg.config import Config
    from depthg.evaluation.experiment import train_and_evaluate
    from depthg.presets import load_preset

    cfg = (
        Config.from_json(args.config).with_overrides(args.overrides)
        if args.config
        else load_preset(args.preset, args.overrides)
    )
    result = train_and_evaluate(
        cfg,
        run_name=args.run_name,
        results_dir=args.results_dir,
        resume=args.resume,
        evaluate_at_end=not args.no_eval,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(f"run folder: {result.run_dir}")
    if result.metrics:
        # lazy: torch and the library load only when a command runs, so --help stays fast
        from depthg.runs import format_metrics

        print(format_metrics(result.metrics))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint with the STEGO protocol",
        description="Evaluate this project's checkpoint or an authors' released STEGO/DepthG "
        "Lightning .ckpt: 320 px centre crop, flip averaging, DenseCRF, Hungarian "
        "matching for the cluster probe, linear-probe metrics.",
    )
    p.add_argument("checkpoint", help="path to a .pt checkpoint of this project or a released .ckpt")
    p.add_argument("--crf", dest="crf", action="store_true", default=None, help="run DenseCRF (default: config)")
    p.add_argument("--no-crf", dest="crf", action="store_false", help="skip DenseCRF")
    p.add_argument(
        "--preset",
        help="preset whose data/eval settings to use for a released checkpoint "
        "(default: inferred from its hyper-parameters)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value (e.g. data.data_dir=...)")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--run-name", help="name of the results folder under results/runs/ (default: eval- and the training run's name)"
    )
    p.add_argument("--results-dir", help="results root")
    p.add_argument("--overwrite", action="store_true", help="replace a results folder of another config")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    # lazy: torch and the library load only when a command runs, so --help stays fast
    from depthg.evaluation.evaluate import evaluate_checkpoint
    from depthg.runs import format_metrics

    # the metrics are printed as soon as they exist, before they are written (a full disk loses nothing)
    out = evaluate_checkpoint(
        args.checkpoint,
        crf=args.crf,
        preset=args.preset,
        overrides=args.overrides,
        split=args.split,
        run_name=args.run_name,
        results_dir=args.results_dir,
        report=lambda metrics: print(format_metrics(metrics), flush=True),
        overwrite=args.overwrite,
    )
    print(f"results folder: {out.run_dir}")
    return 0


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run the four notebooks with papermill on the synthetic default")
    p.add_argument("--results-dir", help="results root")
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a papermill parameter passed to every notebook",
    )
    p.add_argument(
        "--store",
        action="store_true",
        help="also copy the executed notebooks over notebooks/ (maintainers, after changing the code)",
    )
    p.set_defaults(func=_run_reproduce)


def _run_reproduce(args) -> int:
    # lazy: torch and the library load only when a command runs, so --help stays fast
    from depthg.reproduce import reproduce

    reproduce(results_dir=args.results_dir, parameters=dict(args.parameter), store=args.store)
    return 0


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list presets, or print one resolved as JSON")
    p.add_argument("name", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_run_presets)


def _run_presets(args) -> int:
    # lazy: torch and the library load only when a command runs, so --help stays fast
    from depthg.presets import load_preset, preset_names

    if args.name is None:
        print("\n".join(preset_names()))
    else:
        print(load_preset(args.name, args.overrides).to_json())
    return 0


def _add_tables(sub) -> None:
    p = sub.add_parser(
        "tables",
        help="reproduce the paper's main tables (what notebooks/05_paper_tables runs)",
        description="Published numbers, the authors' released checkpoints evaluated here, and this "
        "project's reference and paper retrains over seeds, into results/paper_<dataset>."
        "{csv,md}. Prints the runs, iterations, images and a measured time estimate first.",
    )
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="cocostuff27 | cityscapes | potsdam | potsdamraw | synthetic | all (every paper table)",
    )
    p.add_argument("--backbones", help="comma-separated, e.g. vit_base_patch8 (default: the paper's for the dataset)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--fidelities", default="reference,paper", help="reference, paper or both")
    p.add_argument("--released-checkpoints", help="folder of the authors' .ckpt files (matched by their hparams)")
    p.add_argument("--iterations", type=int, help="per run (default: the preset's, 2334 for the paper presets)")
    p.add_argument("--max-images", type=int, help="evaluation images per run (0: the whole val split)")
    p.add_argument("--crf", dest="crf", action="store_true", default=None, help="DenseCRF (default: the preset's)")
    p.add_argument("--no-crf", dest="crf", action="store_false")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--weights", help="backbone weights (default: the preset's)")
    p.add_argument("--data-dir", help="data root (default: $DEPTHG_DATA_DIR or <repo>/data)")
    p.add_argument("--results-dir", help="results root")
    p.add_argument("--reuse", action="store_true", help="keep finished runs, resume interrupted ones")
    p.add_argument(
        "--overwrite", action="store_true", help="replace run folders of another config or of committed results"
    )
    p.add_argument("--no-estimate", action="store_true", help="skip the timed warm-up before the runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value for every run")
    p.set_defaults(func=_run_tables)


def _run_tables(args) -> int:
    # lazy: torch and the library load only when a command runs, so --help stays fast
    from depthg.notebook import as_list, prepare, resolve_config
    from depthg.reporting import paper_plan, paper_tables

    configure = partial(
        resolve_config,
        data_dir=args.data_dir,
        weights=args.weights,
        iterations=args.iterations,
        device=args.device,
        threads=args.threads,
        max_images=args.max_images,
        crf=args.crf,
        overrides=args.overrides,
    )
    cases = paper_plan.paper_cases(args.dataset, as_list(args.backbones))
    for case in cases:  # an unprepared dataset stops here, naming the prep commands
        prepare(case.dataset, args.data_dir, cfg=configure(case.dataset, preset=case.preset))
    plan = paper_plan.plan_tables(
        cases,
        configure,
        seeds=as_list(args.seeds, int),
        fidelities=as_list(args.fidelities),
        released_checkpoints=args.released_checkpoints,
        results_dir=args.results_dir,
        reuse=args.reuse,
        overwrite=args.overwrite,
    )
    warm = None if args.no_estimate else paper_plan.speed_config(plan)
    print(plan.describe(None if warm is None else paper_plan.measure_speed(warm)), flush=True)
    out = paper_tables.run_tables(plan, progress=not args.no_progress)
    for dataset, paths in out.paths.items():
        print(f"{dataset}: {paths['md']}, {paths['csv']}, {paths['runs_csv']}, figure {out.figures[dataset]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # lazy: torch and the library load only when a command runs, so --help stays fast
    from depthg.cli.prep import add_prep_parser

    parser = argparse.ArgumentParser(prog="python -m depthg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_prep_parser(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_reproduce(sub)
    _add_presets(sub)
    _add_tables(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # section.key=value overrides may come before or after options (argparse alone stops collecting positionals
    # at the first option), so leftovers of that shape join the overrides
    args, rest = parser.parse_known_args(argv)
    stray = [a for a in rest if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = list(args.overrides or []) + rest
    try:
        return int(args.func(args) or 0)
    except DepthGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _STORAGE_ERRORS:
            raise
        # a full disk or a read-only folder: atomic writes left the previous files intact
        print(
            f"error: cannot write {e.filename or 'an output'}: {e.strerror}; free space or choose a writable "
            f"--results-dir / --data-dir (what was written before stays valid).",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
