"""Unsupervised segmentation metrics: confusion statistics, cluster -> class matching, accuracy and mIoU.

STEGO's evaluation protocol (METHOD.md §6.2, `DG src/utils.py:202-277`): a confusion matrix is accumulated over
the whole split, the clusters are matched to classes once on that dataset-level matrix (Hungarian,
`scipy.optimize.linear_sum_assignment(maximize=True)`), and accuracy = matched pixels / valid pixels,
IoU_c = TP / (TP + FP + FN), mIoU = mean over classes whose IoU is defined (NaN = absent from both prediction and
label). Both are reported in %. The linear probe uses the same numbers without matching (`hungarian=False`).

Over-clustering (`extra_clusters > 0`) is where the release goes wrong: its `update` drops every prediction >= n,
so extra clusters never reach the statistics (METHOD.md §9 #14). Here predictions in [0, n + extra) all count, and
`extra_rule` says how clusters become classes:
- "one_to_one" (default): Hungarian on the (n + extra) x n matrix; n clusters get a class, the others map to -1
  and every pixel they predict counts as an error (it lowers accuracy and adds to its true class's FN).
- "majority": many-to-one; each cluster takes the class it overlaps most (a cluster with no pixels maps to -1).
  This is the usual over-clustering protocol (several clusters may share a class); it never scores lower.
- "release": the released code, bit for bit: predictions >= n are ignored, unmatched clusters are summed into an
  (n+1)-th pseudo-class row of an (n+1) x (n+1) histogram whose IoU enters the mean (golden fixture `extra_`).

Shapes: P pixels (any shape, flattened), n classes, e extra clusters, M = n + e clusters.
The statistics live on the CPU as an int64 numpy array `stats [M, n]`: rows = predicted cluster, columns = label.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from depthg.errors import ConfigError, DataError

EXTRA_RULES = ("one_to_one", "majority", "release")


def _bincount(index: torch.Tensor | np.ndarray, size: int) -> np.ndarray:
    """Histogram of flat int64 indices in [0, size), computed where the data lives (GPU bincount for CUDA)."""
    if isinstance(index, torch.Tensor):
        return torch.bincount(index, minlength=size).cpu().numpy()
    return np.bincount(index, minlength=size)


class UnsupervisedMetrics:
    """Dataset-level accuracy / mIoU with Hungarian (or no) matching; `update` per batch, `compute` at the end."""

    def __init__(
        self, n_classes: int, *, extra_clusters: int = 0, hungarian: bool = True, extra_rule: str = "one_to_one"
    ):
        if n_classes < 1 or extra_clusters < 0:
            raise ConfigError(
                f"UnsupervisedMetrics: n_classes={n_classes} must be >= 1 and extra_clusters={extra_clusters} >= 0"
            )
        if extra_rule not in EXTRA_RULES:
            raise ConfigError(f"UnsupervisedMetrics: extra_rule={extra_rule!r} is not one of {EXTRA_RULES}")
        if extra_clusters and not hungarian:
            raise ConfigError(
                "UnsupervisedMetrics: extra_clusters > 0 needs hungarian=True (a linear probe "
                "predicts exactly n_classes classes; set extra_clusters=0)"
            )
        self.n_classes = n_classes
        self.extra_clusters = extra_clusters
        self.hungarian = hungarian
        self.extra_rule = extra_rule
        self.reset()

    @property
    def n_clusters(self) -> int:
        return self.n_classes + self.extra_clusters

    def reset(self) -> None:
        self.stats = np.zeros((self.n_clusters, self.n_classes), dtype=np.int64)  # [M, n]

    def update(self, preds: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch. Pixels whose label lies outside [0, n) (e.g. -1 or 255) are ignored."""
        if tuple(preds.shape) != tuple(target.shape):
            raise DataError(
                f"UnsupervisedMetrics.update: predictions {tuple(preds.shape)} and labels "
                f"{tuple(target.shape)} differ in shape; resize one to the other first"
            )
        n, m = self.n_classes, self.n_clusters
        if isinstance(preds, torch.Tensor) or isinstance(target, torch.Tensor):
            preds = torch.as_tensor(preds)
            target = torch.as_tensor(target, device=preds.device)
        integer = (
            not preds.dtype.is_floating_point
            if isinstance(preds, torch.Tensor)
            else np.issubdtype(preds.dtype, np.integer)
        )
        assert integer, f"predictions must be integer cluster ids (argmax), got dtype {preds.dtype}"
        preds, target = preds.reshape(-1), target.reshape(-1)  # [P]
        valid = (target >= 0) & (target < n)
        if self.extra_rule == "release":
            valid = valid & (preds >= 0) & (preds < n)  # the release drops preds >= n (METHOD.md §9 #14)
        preds, target = preds[valid], target[valid]
        if len(preds) and not (0 <= int(preds.min()) and int(preds.max()) < m):
            raise ConfigError(
                f"UnsupervisedMetrics.update: predictions span [{int(preds.min())}, "
                f"{int(preds.max())}] but n_classes + extra_clusters = {m}; make them match the "
                f"cluster probe"
            )
        flat = (
            preds.to(torch.int64) * n + target
            if isinstance(preds, torch.Tensor)
            else preds.astype(np.int64) * n + target
        )  # [P'] row-major index into [M, n]
        self.stats += _bincount(flat, m * n).reshape(m, n)

    def merge(self, other: UnsupervisedMetrics) -> UnsupervisedMetrics:
        """Add another accumulator's statistics (e.g. another rank's or another worker's); returns self."""
        assert other.stats.shape == self.stats.shape, (
            f"cannot merge metrics of shape {other.stats.shape} into {self.stats.shape}"
        )
        self.stats += other.stats
        return self

    def state_dict(self) -> dict:
        return {"stats": self.stats.copy()}

    def load_state_dict(self, state: dict) -> None:
        assert state["stats"].shape == self.stats.shape, (
            f"state has stats of shape {state['stats'].shape}, expected {self.stats.shape}"
        )
        self.stats = np.asarray(state["stats"], dtype=np.int64).copy()

    def sync(self, device: torch.device | str = "cpu") -> None:
        """Sum the statistics over all torch.distributed ranks (no-op without a process group).

        `device` must suit the backend: "cpu" for gloo, the rank's CUDA device for nccl. Every rank must call it.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            total = torch.from_numpy(self.stats).to(device)
            torch.distributed.all_reduce(total)
            self.stats = total.cpu().numpy()

    def assignment(self) -> np.ndarray:
        """cluster -> class `[M]` (int64; -1 = cluster without a class) from the statistics so far."""
        n, m = self.n_classes, self.n_clusters
        if not self.hungarian:
            return np.arange(n)
        if self.extra_rule == "majority":
            return np.where(self.stats.sum(1) > 0, self.stats.argmax(1), -1)
        # Dataset-level Hungarian matching: row = cluster, column = class (METHOD.md §6.2).
        clusters, classes = linear_sum_assignment(self.stats, maximize=True)
        cluster_to_class = np.full(m, -1, dtype=np.int64)
        cluster_to_class[clusters] = classes
        return cluster_to_class

    def map_clusters(self, preds: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Cluster ids -> class ids (same type/device as `preds`), using the assignment of the stats so far."""
        table = self.assignment()
        if isinstance(preds, torch.Tensor):
            return torch.as_tensor(table, device=preds.device)[preds.long()]
        return table[preds]

    def compute(self) -> dict:
        """Accuracy and mIoU (%), per-class IoU, assignment and the matched histogram [class_pred, class_true]."""
        if self.hungarian and self.extra_rule == "release" and self.extra_clusters:
            return self._compute_release_extra()
        n = self.n_classes
        cluster_to_class = self.assignment()
        hist = np.zeros((n, n), dtype=np.int64)  # [pred class, true class]
        matched = cluster_to_class >= 0
        np.add.at(hist, cluster_to_class[matched], self.stats[np.flatnonzero(matched)])
        unmatched = self.stats[~matched].sum(0)  # [n] pixels of each class predicted by class-less clusters
        tp = np.diag(hist)
        predicted, labelled = hist.sum(1), hist.sum(0) + unmatched
        out = self._scores(tp, predicted + labelled - tp, self.stats.sum())
        out.update(assignment=cluster_to_class, histogram=hist, unmatched=unmatched, stats=self.stats.copy())
        return out

    def _compute_release_extra(self) -> dict:
        """The release's extra-cluster histogram (`DG src/utils.py:245-259`), reproduced for golden parity."""
        n = self.n_classes
        clusters, classes = linear_sum_assignment(self.stats, maximize=True)
        _, best_cluster = linear_sum_assignment(self.stats.T, maximize=True)  # [n] cluster chosen per class
        missing = np.setdiff1d(np.arange(self.n_clusters), clusters)
        hist = np.concatenate([self.stats[best_cluster], self.stats[missing].sum(0, keepdims=True)])  # [n+1, n]
        hist = np.concatenate([hist, np.zeros((n + 1, 1))], axis=1).astype(np.float64)  # [n+1, n+1]
        tp = np.diag(hist)
        # The (n+1)-th pseudo-class has IoU 0 whenever unmatched clusters hold pixels, and enters the mean.
        out = self._scores(tp, hist.sum(0) + hist.sum(1) - tp, hist.sum())
        cluster_to_class = np.full(self.n_clusters, -1, dtype=np.int64)
        cluster_to_class[clusters] = classes  # the release's np.insert is off by one for interior gaps
        out.update(assignment=cluster_to_class, histogram=hist, stats=self.stats.copy())
        return out

    @staticmethod
    def _scores(tp: np.ndarray, union: np.ndarray, total: int) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / union  # NaN where a class is absent from both prediction and label
        defined = ~np.isnan(iou)
        return {
            "accuracy": float(tp.sum() / total * 100) if total else float("nan"),
            "mIoU": float(iou[defined].mean() * 100) if defined.any() else float("nan"),
            "iou": iou,
        }
