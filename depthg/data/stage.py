"""The preparation-stage framework: cached, idempotent steps (DESIGN.md §5, §10.10; deep-spectral-segmentation's
``extract_*`` stages). The stages (``synthetic``, ``fivecrop``, ``depth_estimation``, ``knn``) import this module;
it imports none of them, and the ``prep`` command line lives in :mod:`depthg.cli.prep`.

Every stage
- writes ``<stage dir>/manifest.json``: for each run key (a split, or a kNN file) the parameters that decide the
  outputs, plus the package version (recorded, not compared: a new release does not invalidate prepared data);
- skips items whose outputs exist when the recorded parameters equal the requested ones; outputs found without a
  manifest entry are of unknown origin and are redone;
- refuses, with a DataError that says to pass ``--overwrite``, when the recorded parameters differ;
- shards items by rank: item i is handled by rank i % world, from ``--rank/--world`` or torchrun's RANK/WORLD_SIZE,
  so ``torchrun --nproc_per_node=N -m depthg prep depth ...`` splits the work without a process group;
- shows a tqdm progress bar per rank.

Outputs are written under temporary names and renamed, so an interrupted stage never leaves an output that looks
finished; the next run deletes the temporary files of writers that are gone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import depthg
from depthg.errors import ConfigError, DataError
from depthg.files import file_lock, remove_leftovers, write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


# ---- sharding ----------------------------------------------------------------------------------------------------


def resolve_rank(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """(rank, world): explicit values first, then torchrun's RANK / WORLD_SIZE, else a single process (0, 1)."""
    if world is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(
            f"--rank {rank} / --world {world} is not a valid shard: need world >= 1 and 0 <= rank < world."
        )
    return rank, world


def shard(n_items: int, rank: int, world: int) -> range:
    """The items of this rank: i with i % world == rank (disjoint, and together every item once)."""
    assert 0 <= rank < world, f"rank {rank} outside world {world}"
    return range(rank, n_items, world)


# ---- manifest ----------------------------------------------------------------------------------------------------


def _canonical(params: dict) -> dict:
    """JSON round trip, so tuples and lists (and int/float keys) compare as they will after reading back."""
    return json.loads(json.dumps(params, sort_keys=True))


def stage_lock(stage_dir: Path, name: str = ".manifest.lock"):
    """Exclusive lock on a file of the stage dir (default: the manifest's), as several ranks write at once."""
    return file_lock(Path(stage_dir) / name)


def read_manifest(stage_dir: Path) -> dict:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"stage manifest {path} is not valid JSON ({e}); delete it and rerun with --overwrite.") from e
    if not isinstance(data, dict) or not isinstance(data.get("runs", {}), dict):
        raise DataError(f"stage manifest {path} has an unknown layout; delete it and rerun with --overwrite.")
    return data


def recorded_params(stage_dir: Path, key: str) -> dict | None:
    """The parameters a finished or partial run ``key`` of this stage was made with, or None."""
    run = read_manifest(stage_dir).get("runs", {}).get(key)
    return None if run is None else run.get("params")


def check_run(stage_dir: Path, stage: str, key: str, params: dict, *, overwrite: bool) -> bool:
    """Whether outputs of run ``key`` already there were made with ``params`` and may be kept (skip-finished).

    A recorded entry with other parameters is refused unless ``overwrite``; no entry means outputs of unknown
    origin, which are not kept.
    """
    old = recorded_params(Path(stage_dir), key)
    params = _canonical(params)
    if old is not None and old != params and not overwrite:
        changes = ", ".join(
            f"{k}: {old.get(k)!r} -> {params.get(k)!r}"
            for k in sorted(set(old) | set(params))
            if old.get(k) != params.get(k)
        )
        raise DataError(
            f"{stage} outputs for {key!r} in {stage_dir} were made with other parameters ({changes}); "
            f"rerun with --overwrite to replace them, or use the recorded parameters."
        )
    return old == params and not overwrite


def record_run(stage_dir: Path, stage: str, key: str, params: dict) -> None:
    """Write ``params`` as the entry of run ``key`` in the stage manifest (atomically, under a lock)."""
    stage_dir = Path(stage_dir)
    with stage_lock(stage_dir):
        manifest = read_manifest(stage_dir)
        manifest["stage"] = stage
        manifest.setdefault("runs", {})[key] = {"params": _canonical(params), "depthg_version": depthg.__version__}
        write_json(stage_dir / MANIFEST, manifest, indent=1, sort_keys=True)


# ---- the item loop -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    processed: int  # items of this rank computed now
    skipped: int  # items of this rank already finished with the same parameters
    total: int  # items of this rank


def run_stage(
    stage_dir: Path,
    stage: str,
    key: str,
    params: dict,
    n_items: int,
    *,
    done: Callable[[int], bool],
    remove: Callable[[int], None],
    process: Callable[[list[int]], None],
    check: Callable[[], None] | None = None,
    overwrite: bool = False,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 1,
    desc: str = "",
    progress: bool = True,
) -> StageResult:
    """One run of a stage: check the manifest, record it, and ``process`` batches of this rank's unfinished items.

    Order, so that a failed or killed run never costs good outputs nor records what it did not make: temporary
    files of killed writers are removed; ``check`` (e.g. loading the model the new parameters name) runs, when
    anything is to be done, before any output is removed or parameters recorded; when existing outputs cannot be
    kept (``--overwrite``, or no manifest entry) this rank's outputs are removed *before* the new entry is
    recorded, so an interrupted run never leaves old outputs under new parameters; then the items, each written
    atomically, and finished items are kept by the next run.
    """
    remove_leftovers(stage_dir)
    keep = check_run(stage_dir, stage, key, params, overwrite=overwrite)
    mine = list(shard(n_items, rank, world))
    todo = [i for i in mine if not (keep and done(i))]
    if todo and check is not None:
        check()
    if not keep:
        for i in mine:
            remove(i)
    record_run(stage_dir, stage, key, params)
    label = f"{desc} [rank {rank}/{world}]" if world > 1 else desc
    with tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=label,
        unit="item",
        position=rank,
        disable=not progress,
        leave=world == 1,
    ) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            process(batch)
            bar.update(len(batch))
    return StageResult(processed=len(todo), skipped=len(mine) - len(todo), total=len(mine))
