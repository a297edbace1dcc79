"""One experiment: train a config, then evaluate its last step with the STEGO protocol, into one run folder.

The command line's ``train``, the notebooks and the ablation runner all call :func:`train_and_evaluate`. Training
(:mod:`depthg.training.train`) is a layer below evaluation, so the periodic validation it runs is handed to it as a
function of the model. The run folder's ``metrics.json`` holds ``last_step`` (the primary number, DESIGN.md §6)
and, when ``train.val_every`` validated during training, ``best_on_validation`` beside it, labelled. Runs that
select checkpoints as the release does (``train.select=release``, the reference presets) add ``release_selected``:
the best kept checkpoint (:mod:`depthg.training.selection`) evaluated like the last step, with CRF.
"""

from __future__ import annotations

import time
from pathlib import Path

from depthg.config import Config
from depthg.evaluation.evaluate import evaluate_model
from depthg.runs import provenance, write_run
from depthg.training import checkpoints
from depthg.training.train import TrainResult, precision_record, train

SELECTED_LABEL = (
    "release-selected: the best of the top-{k} checkpoints by validation {metric} (no CRF), selected on "
    "the evaluation split as the release's ModelCheckpoint does (test data, not a held-out result), "
    "then evaluated with the STEGO protocol"
)


def train_and_evaluate(
    cfg: Config,
    *,
    run_name: str | None = None,
    results_dir: str | Path | None = None,
    resume: bool = False,
    evaluate_at_end: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``cfg`` (resuming if asked), evaluate the last step on rank 0, and write the run's metrics.

    ``overwrite``: replace a run folder of another config or of committed results (refused otherwise)."""
    t0 = time.time()

    def validate(model):  # the release validates without CRF (METHOD.md §6.1)
        return evaluate_model(model, cfg, crf=False, progress=False)

    result = train(
        cfg,
        run_name=run_name,
        results_dir=None if results_dir is None else str(results_dir),
        resume=resume,
        progress=progress,
        overwrite=overwrite,
        validator=validate if cfg.train.val_every else None,
    )
    result.metrics = None
    if result.is_main and evaluate_at_end:
        metrics = evaluate_model(result.model, cfg, progress=progress)
        summary = {"last_step": metrics}
        if result.best_on_validation is not None:
            summary["best_on_validation"] = result.best_on_validation
        if result.selected:
            summary["release_selected"] = evaluate_selected(result, cfg, progress=progress)
        device = next(result.model.head.parameters()).device
        write_run(
            result.run_dir,
            metrics=summary,
            provenance=provenance(
                seed=cfg.train.seed,
                device=str(device),
                weights=result.model.backbone.weights_source,
                wall_time_s=time.time() - t0,
                extra={
                    "iterations": cfg.train.iterations,
                    "training_wall_time_s": round(result.wall_time_s, 3),
                    **precision_record(cfg, result.model, device),
                },
            ),
        )
        result.metrics = metrics
    return result


def evaluate_selected(result: TrainResult, cfg: Config, *, progress: bool = True) -> dict:
    """Evaluate the best release-selected checkpoint of a run (with CRF, as the last step); the model returns to its
    last-step weights afterwards."""
    best = result.selected[0]
    path = result.run_dir / "checkpoints" / best["checkpoint"]
    model = result.model
    last = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    state = checkpoints.load_training_state(path, map_location=next(model.head.parameters()).device)
    checkpoints.restore_training_state(state, model=model, step=None, optimizers=None)
    try:
        metrics = evaluate_model(model, cfg, progress=progress)
    finally:
        model.load_state_dict(last, strict=False)
    return {
        "label": SELECTED_LABEL.format(k=cfg.train.select_top_k, metric=cfg.train.select_metric),
        "after_iterations": best["iteration"],
        "checkpoint": str(path.relative_to(result.run_dir)),
        "validation": {"metric": best["metric"], "value": best["value"]},
        "kept": [e["checkpoint"] for e in result.selected],
        "metrics": metrics,
    }
