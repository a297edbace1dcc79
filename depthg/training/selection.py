"""Checkpoint selection as the release does it: keep the top-k checkpoints by a validation metric.

The release's Lightning ``ModelCheckpoint(monitor="test/cluster/mIoU", mode="max", save_top_k=2, save_last=True)``
(Potsdam: ``test/cluster/Accuracy``; DG src/train_segmentation.py:693-711, METHOD.md §2.4) keeps, after every
validation pass (no CRF, on the evaluation split), the two best checkpoints so far and the last one; the paper's
numbers come from evaluating such a selected checkpoint with CRF. "test" there is the evaluation split, so the
selection is made on the test data: the result is reported beside the last step, labelled so
(:mod:`depthg.evaluation.experiment`).

Files: ``checkpoints/selected-it<N>.pt`` (full training states, as Lightning's) and ``checkpoints/selected.json``
(the ranking, best first), rewritten atomically after every change. A checkpoint that falls out of the top k is
deleted. Ties keep the earlier checkpoint, as Lightning's strict ``>`` comparison does. On resume, entries written
after the resumed-from iteration are dropped (those iterations run again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from depthg.errors import ConfigError
from depthg.files import write_json

INDEX = "selected.json"


def metric_value(metrics: dict, metric: str) -> float:
    """``metric`` "cluster/mIoU" (or cluster/accuracy, linear/...) read from evaluate_model's output."""
    probe, name = metric.split("/", 1)
    try:
        return float(metrics[probe][name])
    except KeyError:
        raise ConfigError(f"train.select_metric={metric!r}: the validation metrics have no {probe}.{name}.") from None


class ReleaseSelection:
    """The top-k checkpoints by ``metric`` among the validation passes of one run (rank 0 only)."""

    def __init__(self, folder: Path, metric: str, top_k: int = 2, *, start: int = 0):
        self.folder, self.metric, self.top_k = Path(folder), metric, top_k
        index = self.folder / INDEX
        kept = json.loads(index.read_text())["kept"] if index.is_file() else []
        stale = [e for e in kept if e["iteration"] > start]  # written by a killed run after its last.pt
        for e in stale:
            (self.folder / e["checkpoint"]).unlink(missing_ok=True)
        self.kept: list[dict] = [e for e in kept if e["iteration"] <= start]
        if stale:
            self._write()

    def qualifies(self, metrics: dict) -> bool:
        """Whether a pass with these metrics enters the top k (strictly better than the k-th, as Lightning)."""
        return len(self.kept) < self.top_k or metric_value(metrics, self.metric) > self.kept[-1]["value"]

    def add(self, metrics: dict, iteration: int, save: Callable[[Path], object]) -> None:
        """Save the checkpoint of ``iteration`` with ``save(path)``, insert it in the ranking, drop the (k+1)-th."""
        name = f"selected-it{iteration}.pt"
        save(self.folder / name)
        entry = {
            "iteration": iteration,
            "metric": self.metric,
            "value": metric_value(metrics, self.metric),
            "checkpoint": name,
            "validation": {
                k: {"accuracy": metrics[k]["accuracy"], "mIoU": metrics[k]["mIoU"]}
                for k in ("cluster", "linear")
                if k in metrics
            },
        }
        # stable: an equal value ranks after the earlier checkpoint
        pos = next((i for i, e in enumerate(self.kept) if entry["value"] > e["value"]), len(self.kept))
        self.kept.insert(pos, entry)
        for e in self.kept[self.top_k :]:
            (self.folder / e["checkpoint"]).unlink(missing_ok=True)
        self.kept = self.kept[: self.top_k]
        self._write()

    def _write(self) -> None:
        write_json(self.folder / INDEX, {"metric": self.metric, "top_k": self.top_k, "kept": self.kept})


def read_selection(folder: Path) -> list[dict]:
    """The kept checkpoints of a run's ``checkpoints/`` folder, best first ([] when nothing was selected)."""
    index = Path(folder) / INDEX
    return json.loads(index.read_text())["kept"] if index.is_file() else []
