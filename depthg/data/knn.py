"""kNN stage: each image's nearest neighbours by cosine similarity of pooled backbone features (METHOD.md §1.5).

Shapes: N items of the split, B batch, C channels, h/w patch grid, R = res, k neighbours, c chunk rows.

What is computed (``DG src/precompute_knns.py``):
- images short side to R, centre R x R crop, ImageNet normalisation (``depthg.data.transforms.image_tensor``); R is
  the one value used for the computation and the file name (the release computed at 392 but trained against a
  file named 224, METHOD.md §9 #8);
- backbone patch features [B,C,h,w], mean over the grid, L2-normalised -> one unit vector per image;
- fidelity "paper": eval mode, bilinear resize (DESIGN.md §3); "reference": Dropout2d(p=0.1) channel dropout
  active and NEAREST resize, as the release's never-eval'd DinoFeaturizer (METHOD.md §1.5, §9 #9). The dropout
  mask of item i comes from a generator seeded by (seed, i), so it does not depend on batching or sharding;
- top-k by cosine, k = 30, computed in chunks of c rows: peak extra memory is c x N similarities, never N x N;
- saved with ``depthg.data.knn_file.save_knn`` (nns int64 [N,k] + metadata) at
  ``derived/knn/nns_<backbone>_<split>_<crop>_<res>.npz``.

Sharding (``--rank/--world`` or torchrun): rank r extracts the features of items i % world == r into
``derived/knn/shards/<file stem>.rank<r>of<world>.npz``. Every rank then takes a lock and, if all shards of these
parameters exist and the kNN file of these parameters does not, merges them, runs the top-k, replaces the file
atomically, records the parameters and deletes the shards; so the last rank to finish writes the file and no
process waits for another. An older file stays until its replacement exists. ``--merge`` does only that step (e.g.
after ranks ran as separate jobs).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from depthg.config import check_fidelity
from depthg.data.datasets import effective_crop, train_source
from depthg.data.knn_file import knn_path, save_knn
from depthg.data.stage import check_run, record_run, recorded_params, shard, stage_lock
from depthg.data.transforms import image_tensor
from depthg.device import resolve_device
from depthg.errors import ConfigError, DataError
from depthg.files import atomic_write, remove_leftovers
from depthg.model.backbone import DinoBackbone, weights_identity
from depthg.paths import dataset_folder

DROPOUT_P = 0.1  # DinoFeaturizer's Dropout2d (DG src/modules.py; METHOD.md §1.5)
CHUNK_BUDGET_BYTES = 256 * 2**20  # similarity rows held at once, float32


# ---- pure functions ----------------------------------------------------------------------------------------------


def pool_features(feats: torch.Tensor) -> torch.Tensor:
    """Patch features [B,C,h,w] -> unit vectors [B,C]: mean over the grid, then L2 norm (precompute_knns.py:15-21)."""
    assert feats.dim() == 4, f"expected [B,C,h,w], got {tuple(feats.shape)}"
    return F.normalize(feats.mean(dim=(2, 3)), dim=1)


def channel_dropout(feats: torch.Tensor, seeds: list[int], p: float = DROPOUT_P) -> torch.Tensor:
    """Dropout2d in training mode on [B,C,h,w]: zero whole channels with probability p, scale the rest by 1/(1-p).

    One generator per item (``seeds[b]``), so the mask of an image is the same in any batch or shard.
    """
    B, C = feats.shape[:2]
    assert len(seeds) == B, f"{len(seeds)} seeds for {B} items"
    keep = torch.stack([torch.rand(C, generator=torch.Generator().manual_seed(s)) >= p for s in seeds])  # [B,C]
    return feats * (keep.to(feats.device, feats.dtype) / (1 - p))[:, :, None, None]


def default_chunk(n: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk so that one float32 [c,N] similarity block fits ``budget_bytes``."""
    return max(1, min(n, budget_bytes // (4 * max(n, 1))))


def topk_cosine(feats: torch.Tensor, k: int, chunk_size: int | None = None, *, progress: bool = False) -> torch.Tensor:
    """Unit vectors [N,C] -> int64 [N,k]: row i = the k most similar items by cosine, most similar first.

    Processes c rows at a time (a [c,N] block), so extra memory is O(c N) instead of O(N^2).
    """
    N = feats.shape[0]
    if not 0 < k <= N:
        raise ConfigError(f"k={k} neighbours need 1 <= k <= {N} (the number of items); lower --k.")
    c = chunk_size or default_chunk(N)
    assert c > 0, f"chunk size must be positive, got {c}"
    out = torch.empty(N, k, dtype=torch.int64)
    for start in tqdm(range(0, N, c), desc="knn top-k", unit="chunk", disable=not progress):
        sim = feats[start : start + c] @ feats.T  # [c,N]
        out[start : start + c] = sim.topk(k, dim=1).indices.cpu()
        del sim
    return out


# ---- inputs ------------------------------------------------------------------------------------------------------


def extract_features(
    backbone,
    image,
    indices: list[int],
    *,
    res: int,
    fidelity: str,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> np.ndarray:
    """Pooled unit features float32 [len(indices), C] of ``image(i)`` for the given item indices."""

    out = []
    for start in tqdm(
        range(0, len(indices), batch_size),
        desc=f"knn features [{len(indices)} items]",
        unit="batch",
        disable=not progress,
    ):
        idx = indices[start : start + batch_size]
        x = torch.stack([image_tensor(image(i), res, interpolation=fidelity) for i in idx]).to(device)  # [B,3,R,R]
        feats, _ = backbone(x, attention=False)  # [B,C,h,w], eval mode (the backbone is always eval)
        if fidelity == "reference":
            feats = channel_dropout(feats, [seed * 1_000_003 + i for i in idx])
        out.append(pool_features(feats).cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, 0), np.float32)


# ---- the stage ---------------------------------------------------------------------------------------------------


def _shard_path(final: Path, rank: int, world: int) -> Path:
    return final.parent / "shards" / f"{final.stem}.rank{rank}of{world}.npz"


def _save_shard(path: Path, indices: list[int], feats: np.ndarray, meta: dict) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, indices=np.asarray(indices, np.int64), features=feats, meta=np.array(json.dumps(meta)))


def _load_shards(paths: list[Path], params: dict, n: int) -> tuple[np.ndarray, str] | None:
    """(features [N,C] in item order, weights source) from a complete shard set; None if any shard has other params."""
    feats, seen, source = None, np.zeros(n, np.int64), None
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["params"] != params:
                return None
            idx, f = z["indices"], z["features"]
        if len(idx):  # a rank can own no item when world > N
            feats = np.zeros((n, f.shape[1]), np.float32) if feats is None else feats
            feats[idx] = f
        np.add.at(seen, idx, 1)
        source = meta["weights_source"]
    assert (seen == 1).all(), f"shards {paths[0].name}.. cover items {np.flatnonzero(seen != 1)[:5]} not exactly once"
    return feats, source


def _merge(
    final: Path, params: dict, n: int, k: int, chunk_size: int | None, device: torch.device, progress: bool
) -> Path | None:
    """Under the caller's lock: merge a complete, matching set of shards into the kNN file; None if there is none."""
    worlds = sorted(
        {
            int(m[1])
            for p in final.parent.glob(f"shards/{final.stem}.rank*of*.npz")
            if (m := re.search(r"of(\d+)\.npz$", p.name))
        }
    )
    for world in worlds:
        paths = [_shard_path(final, r, world) for r in range(world)]
        loaded = _load_shards(paths, params, n) if all(p.is_file() for p in paths) else None
        if loaded is None:
            continue
        feats, source = loaded
        nns = topk_cosine(torch.from_numpy(feats).to(device), k, chunk_size, progress=progress).numpy()
        save_knn(
            final,
            nns,
            dataset=params["dataset"],
            split=params["split"],
            backbone=params["backbone"],
            weights=source,
            res=params["res"],
            crop=params["crop"],
            knn_features=params["fidelity"],
            order=params["order"],
            order_source=params["order_source"],
        )
        for p in paths:
            p.unlink(missing_ok=True)
        if not any(paths[0].parent.iterdir()):
            paths[0].parent.rmdir()
        return final
    return None


def run_knn(
    dataset: str,
    data_dir,
    split: str,
    *,
    backbone: str = "vit_small_patch8",
    weights: str = "hub",
    res: int = 224,
    crop: str = "five",
    ratio: float = 0.5,
    k: int = 30,
    chunk_size: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    fidelity: str = "paper",
    seed: int = 0,
    bf16: bool = False,
    merge_only: bool = False,
    rank: int = 0,
    world: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path | None:
    """The kNN stage of one split for this rank; returns the kNN file once it exists, else None (shards missing).

    ``bf16``: the backbone's bf16 autocast on CUDA (train.bf16); fp32 otherwise, as the release."""

    check_fidelity(fidelity, "--fidelity")
    if res < 1 or batch_size < 1 or (chunk_size is not None and chunk_size < 1):
        raise ConfigError(f"--res, --batch-size and --chunk-size must be >= 1 (got {res}, {batch_size}, {chunk_size}).")
    crop = effective_crop(dataset, crop)  # Potsdam is never cropped (METHOD.md §1.1)
    items = train_source(dataset, data_dir, split, crop=crop, ratio=ratio, with_depth=False)  # training's order
    n, image = len(items), lambda i: items[i]["image"]
    order = items.order_identity()  # the kNN file indexes these items in this order (depthg.data.item_order)
    if order is None:
        raise DataError(
            f"the crop set of {dataset}/{split} has no order file {items.order_source}, so the items "
            f"its kNN file would index are unknown; rerun `python -m depthg prep fivecrop --dataset "
            f"{dataset} --overwrite` or write that file (the source keys in crop order)."
        )
    final = knn_path(dataset_folder(dataset), split, backbone, crop, res, data_dir)
    if not 0 < k <= n:
        raise ConfigError(f"--k {k} neighbours need 1 <= k <= {n} (the items of {dataset}/{split}); lower --k.")
    params = {
        "dataset": dataset,
        "split": split,
        "backbone": backbone,
        "weights": str(weights),
        # the weights' content: a re-made file under the same name ("bundled") must not reuse old neighbours
        "weights_id": weights_identity(backbone, weights),
        "res": res,
        "crop": crop,
        "ratio": ratio if crop == "five" else None,
        "k": k,
        "fidelity": fidelity,
        "seed": seed,
        "n_items": n,
        "precision": "bf16" if bf16 else "fp32",
        "order": order,
        "order_source": items.order_source,
    }
    params = json.loads(json.dumps(params))  # as read back from the manifest and the shards, for comparisons
    dev = resolve_device(device)
    keep = check_run(final.parent, "knn", final.stem, params, overwrite=overwrite)
    if keep and final.is_file():
        return final
    remove_leftovers(final.parent)
    mine = _shard_path(final, rank, world)
    if not merge_only and _shard_params(mine) != params:  # a finished shard of these parameters is kept
        # the weights are loaded (and checked) before anything is replaced or recorded: a bad --weights costs
        # neither the old kNN file nor its manifest entry
        net = DinoBackbone(backbone, weights, autocast=bf16).to(
            dev
        )  # "random" weights use a fixed seed: same net on all ranks
        feats = extract_features(
            net,
            image,
            list(shard(n, rank, world)),
            res=res,
            fidelity=fidelity,
            seed=seed,
            batch_size=batch_size,
            device=dev,
            progress=progress,
        )
        _save_shard(
            mine,
            list(shard(n, rank, world)),
            feats,  # atomic: replaces an older shard
            {"params": params, "weights_source": net.weights_source},
        )
    with stage_lock(final.parent, f".{final.stem}.merge.lock"):
        if final.is_file() and recorded_params(final.parent, final.stem) == params:  # another rank merged it
            return final
        # the new file replaces the old one atomically, and its parameters are recorded with it
        merged = _merge(final, params, n, k, chunk_size, dev, progress)
        if merged is not None:
            record_run(final.parent, "knn", final.stem, params)
    if merged is None and merge_only:
        raise DataError(
            f"cannot merge {final.name}: no complete set of feature shards with these parameters in "
            f"{final.parent / 'shards'}; run `python -m depthg prep knn` on every rank first."
        )
    return merged


def _shard_params(path: Path) -> dict | None:
    """The parameters a feature shard was made with (None: no readable shard)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))["params"]
    except (OSError, ValueError, KeyError):
        return None


# ---- benchmark ---------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident of this process image)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _bench_worker(n: int, dim: int, k: int, chunk: int | None, device: str) -> dict:
    """Measure one chunked top-k in this (fresh) process; memory from the kernel's resident-set accounting."""
    import time

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, dim, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)  # in place: no second [N,C] copy
    feats = feats.to(dev)
    chunk = chunk or default_chunk(n)
    # warm-up on one full chunk: BLAS/topk kernels and thread pools load their code and buffers on first use, which is
    # a one-off cost of the process, not memory the chunked top-k needs
    (feats[:chunk] @ feats.T).topk(min(k, n), dim=1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0), so the peak below belongs to the top-k alone
        Path("/proc/self/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:  # not permitted: VmHWM then also holds the setup's peak, an upper bound
        hwm_reset = False
    base_kib = _proc_status_kib("VmRSS")
    base_cuda = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    t0 = time.perf_counter()
    nns = topk_cosine(feats, k, chunk)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak_kib = _proc_status_kib("VmHWM")
    self_first = (nns[:, 0] == torch.arange(n)).float().mean().item()  # sanity: each vector is its own 1st NN
    out = {
        "n": n,
        "dim": dim,
        "k": k,
        "chunk": chunk,
        "device": str(dev),
        "seconds": round(seconds, 3),
        "peak_extra_rss_mb": round(max(0, peak_kib - base_kib) / 1024, 1),
        "hwm_reset": hwm_reset,
        "features_mb": round(n * dim * 4 / 2**20, 1),
        "similarity_block_mb": round(chunk * n * 4 / 2**20, 1),
        "self_first": self_first,
    }
    if dev.type == "cuda":
        out["peak_extra_cuda_mb"] = round((torch.cuda.max_memory_allocated() - base_cuda) / 2**20, 1)
    return out


def benchmark_knn(
    n: int = 50_000, dim: int = 384, k: int = 30, chunk: int | None = None, device: str = "cpu", verbose: bool = True
) -> dict:
    """Wall time and peak extra memory of the chunked top-k on n random unit vectors of ``dim`` channels.

    Memory (Linux): in a fresh Python process, the kernel's peak resident set (VmHWM, reset just before the top-k
    through /proc/self/clear_refs) minus the resident set at that moment (VmRSS): what the top-k added on top of the
    features, whoever allocated it (torch, BLAS, topk buffers). tracemalloc would miss torch's allocations. Where the
    reset is not permitted (``hwm_reset`` False) the figure is an upper bound. On CUDA also the peak of torch's
    allocator above what was allocated before. Target: under 1 GB for 50k x 384 with k = 30.
    """
    code = (
        f"import json; from depthg.data.knn import _bench_worker; "
        f"print(json.dumps(_bench_worker({n}, {dim}, {k}, {chunk!r}, {device!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    if proc.returncode != 0:
        raise RuntimeError(f"knn benchmark failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if verbose:
        print("knn top-k benchmark: " + ", ".join(f"{key}={v}" for key, v in result.items()))
    return result
