"""Where tensors run: the device a config names, and this process's place among torchrun's processes.

One owner for device resolution (training, evaluation, the depth and kNN stages and the benchmarks all call
:func:`resolve_device`), so ``cuda:1`` means the same everywhere. A foundation module: it imports only ``errors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from depthg.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """ "auto" -> cuda if available, else cpu; "cuda" under torchrun -> this rank's GPU. An unknown string or CUDA
    asked for where there is none is a ConfigError naming the value."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:1, ...).") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA device is available; use cpu.")
        if info is not None and info.enabled and device.index is None:
            return torch.device("cuda", info.local_rank)
    return device


def loader_workers(requested: int) -> int:
    """``data.num_workers`` capped at the CPUs this process may use: more workers than CPUs only add start-up time,
    and torch's DataLoader warns about them once per loader (so once per run of an ablation)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows have no affinity call
        available = os.cpu_count() or 1
    return max(0, min(int(requested), available))
