"""One experiment: train a config, then evaluate its last step with the STEGO protocol, into one run folder.

The command line's ``train``, the notebooks and the ablation runner all call :func:`train_and_evaluate`. Training
(:mod:`depthg.training.train`) is a layer below evaluation, so the periodic validation it runs is handed to it as a
function of the model. The run folder's ``metrics.json`` holds ``last_step`` (the primary number, DESIGN.md §6)
and, when ``train.val_every`` validated during training, ``best_on_validation`` beside it, labelled.
"""

from __future__ import annotations

import time
from pathlib import Path

from depthg.config import Config
from depthg.evaluation.evaluate import evaluate_model
from depthg.runs import provenance, write_run
from depthg.training.train import TrainResult, train


def train_and_evaluate(cfg: Config, *, run_name: str | None = None, results_dir: str | Path | None = None,
                       resume: bool = False, evaluate_at_end: bool = True, progress: bool = True) -> TrainResult:
    """Train ``cfg`` (resuming if asked), evaluate the last step on rank 0, and write the run's metrics."""
    t0 = time.time()

    def validate(model):  # the release validates without CRF (METHOD.md §6.1)
        return evaluate_model(model, cfg, crf=False, progress=False)

    result = train(cfg, run_name=run_name, results_dir=None if results_dir is None else str(results_dir),
                   resume=resume, progress=progress, validator=validate if cfg.train.val_every else None)
    result.metrics = None
    if result.is_main and evaluate_at_end:
        metrics = evaluate_model(result.model, cfg, progress=progress)
        summary = {"last_step": metrics}
        if result.best_on_validation is not None:
            summary["best_on_validation"] = result.best_on_validation
        device = str(next(result.model.head.parameters()).device)
        write_run(result.run_dir, metrics=summary, provenance=provenance(
            seed=cfg.train.seed, device=device, weights=result.model.backbone.weights_source,
            wall_time_s=time.time() - t0, extra={"iterations": cfg.train.iterations,
                                                 "training_wall_time_s": round(result.wall_time_s, 3)}))
        result.metrics = metrics
    return result
