"""Scale-out with ``torchrun`` and a resumable, rank-aware batch order.

The release trains on one GPU (METHOD.md §2.4, §9 #15). Here the same script runs under
``torchrun --nproc_per_node=N``: DDP averages the gradients of the trainable modules, each rank sees a disjoint
slice of every global batch (global batch = ``data.batch_size``, so the optimisation matches one device), rank 0
writes files. The backend is NCCL on CUDA and gloo on CPU (tested with 2 CPU processes).

The batch order is a pure function of (seed, epoch, iteration), so a resumed run draws exactly the batches an
uninterrupted one would, without replaying the loader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from depthg.device import DistInfo
from depthg.errors import ConfigError


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of global batches for iterations ``start .. total-1``.

    Iteration ``it`` belongs to epoch ``it // batches_per_epoch``; each epoch is a permutation drawn from a generator
    seeded by (seed, epoch). ``drop_last=True`` drops each epoch's incomplete last batch, so every iteration has the
    full batch; ``drop_last=False`` keeps it, as the release's DataLoader (``drop_last=False``, METHOD.md §1.7): the
    epoch then has ceil(N / batch) iterations, the last one smaller. Under torchrun a kept partial batch is split
    across ranks like any other; one with fewer items than ranks is dropped, since a rank cannot train on nothing
    (the release trains on one device, where this never applies). Each yielded item is ``(dataset_index, epoch)``:
    the dataset seeds the kNN partner draw of that item from the epoch (``TrainPairs.set_epoch``), so the partner does
    not depend on loader workers or on where a run resumed.
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        *,
        seed: int,
        start: int,
        total: int,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
    ):
        if global_batch % world:
            raise ConfigError(f"data.batch_size={global_batch} is not divisible by the {world} torchrun processes.")
        if n_items < global_batch:
            raise ConfigError(f"data.batch_size={global_batch} exceeds the {n_items} training items; lower it.")
        self.n, self.global_batch, self.seed = n_items, global_batch, seed
        self.start, self.total, self.rank, self.world = start, total, rank, world
        partial = n_items % global_batch
        keep_partial = not drop_last and partial >= world
        self.batches_per_epoch = n_items // global_batch + (1 if keep_partial and partial else 0)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # per batch: [(index, epoch), ...]
        epoch, perm = -1, None
        for it in range(self.start, self.total):
            e, pos = divmod(it, self.batches_per_epoch)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            batch = perm[pos * self.global_batch : (pos + 1) * self.global_batch][self.rank :: self.world]
            yield [(int(i), e) for i in batch]
