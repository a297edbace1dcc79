"""What every bench command shares: the command registry, paired timing and a one-line machine description."""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from depthg.model.losses import CorrelationTerms
from depthg.presets import load_preset
from depthg.training.step import StepSettings

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], Any], str, tuple]] = {}


def command(name: str, *, help: str, args: tuple | list = ()) -> Callable:
    """Register a bench command; ``args`` are (flags, kwargs) pairs for argparse."""

    def register(fn: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
        COMMANDS[name] = (fn, help, tuple(args))
        return fn

    return register


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """torch.cuda.synchronize on a CUDA device, a no-op elsewhere."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def paired_times(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Wall times in seconds of each ``fn`` over ``repeats`` rounds, the candidates interleaved within a round.

    One warm-up call each first. Interleaving means a burst of load from other processes on a shared machine hits
    every candidate of a round alike, so per-round ratios (:func:`median_ratio`) are steadier than ratios of
    separately taken minima.
    """
    sync = synchronizer(device)
    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(baseline: list[float], ours: list[float]) -> float:
    """Median over rounds of baseline time / our time."""
    return statistics.median(b / o for b, o in zip(baseline, ours))


def machine() -> str:
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"torch threads={torch.get_num_threads()}, {os.cpu_count()} CPUs{load}"


def paper_terms(**changes: Any) -> CorrelationTerms:
    """The COCO ViT-S/8 preset's correlation terms at its starting DFC weight and shift (METHOD.md §7.2), read from
    the preset itself (one owner of those numbers), with ``changes`` applied."""
    cfg = load_preset("cocostuff27_vits8")
    terms = StepSettings.from_config(cfg).terms.with_dfc(cfg.loss.depth_feat_weight, cfg.loss.depth_feat_shift)
    return dataclasses.replace(terms, **changes)
