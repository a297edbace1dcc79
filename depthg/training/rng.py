"""Every random state a training run draws from, as checkpoint data, so a resumed run continues the same streams.

Python's, numpy's and torch's global generators (dropout, kNN partner draws in the loader), CUDA's where present,
and the run's own sampling generator (FPS starts, random samples, negatives). Stored as tensors and plain values
so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from depthg.device import DistInfo


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a tensor, so checkpoints load with torch.load(weights_only=True)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
        "sampling": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    generator.set_state(state["sampling"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(generator: torch.Generator, info: DistInfo) -> list:
    """Every rank's RNG states (rank 0 writes them all into the checkpoint)."""
    mine = rng_state(generator)
    if not info.enabled:
        return [mine]
    out = [None] * info.world
    torch.distributed.all_gather_object(out, mine)
    return out
