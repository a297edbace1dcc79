"""The prepared accelerator check: ``python -m depthg.bench gpu`` (``make bench-gpu``), at most ~8 min on an H100/H200.

For ViT-S/8 and ViT-B/8 (random weights of the real architectures, no download) at 224 px, batch 32, S=11 FPS, DFC
on, in fp32 (TF32 off: the reference precision) and with the backbone under bf16 autocast (the paper precision):

* training iterations/s and images/s of the project's own iteration (:func:`depthg.training.train.iteration`:
  backbone features of image and partner in one pass, :class:`depthg.training.step.TrainStep`, backward, the three
  Adam steps), peak GPU memory, and the time split between data loading, backbone, head + losses (FPS included,
  forward and backward) and optimiser steps;
* the data loader (:func:`depthg.data.pairs.build_train_set` on a generated on-disk five-crop set of COCO-sized
  items with 16-bit depth, :mod:`depthg.bench.disk_data`; workers = cores) in images/s against what the step
  consumes;
* evaluation at 320 px with flip averaging, images/s, without and with DenseCRF on both probes (workers = cores);
* FPS and the correlation loss alone at the paper's shapes, the loss beside the release-style baseline;
* the projected wall time of a 2,334-iteration paper run per preset and of each paper table.

It writes ``results/bench/<device>.json`` and a markdown table beside it. Synchronisation (CUDA events, one
synchronize per timed iteration) happens only here. Without CUDA the same code runs a reduced version (a tiny ViT,
tiny sizes, seconds), which the test suite runs so that the command cannot rot; its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from depthg.bench.baselines import correlation_loss_release_style
from depthg.bench.common import command, median_ratio, paired_times, paper_terms, synchronizer
from depthg.bench.disk_data import COCO_SIZE, write_training_set
from depthg.bench.training_run import bench_run, random_batch
from depthg.config import Config
from depthg.model import losses, sampling
from depthg.paths import results_root
from depthg.presets import PRESETS, load_preset
from depthg.training.train import iteration

PAPER_ITERATIONS = 2334  # 7000 legacy global steps (METHOD.md §2.4)
# Evaluation split sizes. Cityscapes: METHOD.md §6.2. COCO-Stuff-27 (STEGO's curated val list) and Potsdam-3
# (labelled_test.txt): the usual counts of those lists, not verified here; override with --eval-images.
EVAL_IMAGES = {"cocostuff27": 2175, "cityscapes": 500, "potsdam": 5400}
PAPER_TABLES = {
    "COCO-Stuff-27 (ViT-S/8 and ViT-B/8)": ("cocostuff27_vits8", "cocostuff27_vitb8"),
    "Cityscapes-27 (ViT-B/8)": ("cityscapes_vitb8",),
    "Potsdam-3 (ViT-S/8)": ("potsdam_vits8",),
}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Sizes:
    """What one bench run measures; :data:`FULL` on a GPU, :data:`REDUCED` elsewhere."""

    backbones: tuple[tuple[str, str], ...]  # (label, backbone) pairs, trained with the COCO ViT-S/8 preset's terms
    batch: int
    res: int
    side: int  # S
    warmup: int
    iterations: int
    sources: int  # source items written to disk; the loader reads 5x as many crops
    source_size: tuple[int, int]
    loader_batches: int
    eval_res: int
    eval_batch: int
    eval_batches: int
    crf_images: int


FULL = Sizes(
    backbones=(("ViT-S/8", "vit_small_patch8"), ("ViT-B/8", "vit_base_patch8")),
    batch=32,
    res=224,
    side=11,
    warmup=3,
    iterations=10,
    sources=600,
    source_size=COCO_SIZE,
    loader_batches=40,
    eval_res=320,
    eval_batch=8,
    eval_batches=8,
    crf_images=32,
)
REDUCED = Sizes(
    backbones=(("ViT-T/8 (reduced)", "vit_tiny_patch8"),),
    batch=2,
    res=32,
    side=2,
    warmup=1,
    iterations=2,
    sources=4,
    source_size=(48, 64),
    loader_batches=3,
    eval_res=32,
    eval_batch=2,
    eval_batches=1,
    crf_images=2,
)
PHASES = ("data", "backbone", "head_losses", "optimiser")


class _Timer:
    """Marks phase boundaries of one iteration: CUDA events on a GPU (read after one synchronize), wall clock else."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def phases_ms(self) -> dict[str, float]:
        """Milliseconds from each mark to the next, keyed by the later mark's name."""
        if self.cuda:
            torch.cuda.synchronize()
            return {b: a_ev.elapsed_time(b_ev) for (_, a_ev), (b, b_ev) in zip(self.marks, self.marks[1:])}
        return {b: (tb - ta) * 1e3 for (_, ta), (b, tb) in zip(self.marks, self.marks[1:])}


def _bench_config(backbone: str, sizes: Sizes, overrides: tuple[str, ...] = ()) -> Config:
    """The COCO ViT-S/8 paper preset at the bench's sizes with random weights of ``backbone``."""
    return load_preset(
        "cocostuff27_vits8",
        [
            "model.weights=random",
            f"model.backbone={backbone}",
            f"data.batch_size={sizes.batch}",
            f"data.res={sizes.res}",
            f"loss.feature_samples={sizes.side}",
            *overrides,
        ],
    )


def _precision(device: torch.device, precision: str) -> dict[str, bool]:
    """Set the matmul precision flags for ``precision`` and return the previous ones (fp32: TF32 off)."""
    old = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return old


def _restore_precision(old: dict[str, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old["matmul"], old["cudnn"]


def _model(cfg: Config, device: torch.device, precision: str):
    # lazy: the model layer loads timm
    from depthg.model.segmenter import DepthGModel

    torch.manual_seed(0)
    return DepthGModel.from_config(cfg.model, autocast=precision == "bf16").to(device)


def train_timing(cfg: Config, sizes: Sizes, device: torch.device, precision: str) -> dict:
    """Iterations/s, images/s, peak memory and the phase split of the project's training iteration.

    Throughput: :func:`depthg.training.train.iteration` back to back, one synchronize at the end. Split: the same
    calls (backbone features, step forward + backward, optimiser steps) with a CUDA event between phases.
    """
    old = _precision(device, precision)
    try:
        run = bench_run(cfg, device, precision)
        batch = random_batch(sizes.batch, sizes.res, cfg.model.n_classes, device)
        B = sizes.batch

        def marked_iteration(timer: _Timer) -> None:
            timer.mark("start")
            iteration(run, batch, mark=timer.mark)  # backbone, head_losses, optimiser

        sync = synchronizer(device)
        for _ in range(sizes.warmup):
            iteration(run, batch)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        splits = []
        for _ in range(sizes.iterations):
            timer = _Timer(device)
            marked_iteration(timer)
            splits.append(timer.phases_ms())
        sync()
        t0 = time.perf_counter()
        for _ in range(sizes.iterations):
            iteration(run, batch)
        sync()
        seconds = (time.perf_counter() - t0) / sizes.iterations
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    finally:
        _restore_precision(old)
    split = {k: statistics.median(s[k] for s in splits) for k in ("backbone", "head_losses", "optimiser")}
    return {
        "iterations_per_s": 1 / seconds,
        "images_per_s": B / seconds,
        "ms_per_iteration": seconds * 1e3,
        "peak_memory_gib": peak,
        "split_ms": split,
    }


def loader_timing(data_dir: Path, sizes: Sizes, workers: int, device: torch.device) -> dict:
    """Images/s of the training loader (anchor + kNN partner with depth per image) on the on-disk set."""
    # lazy: the data layer is only needed here
    from depthg.data.pairs import build_train_set

    # the generated tree's depth is not ZoeDepth's: the loader's cost is the same, so the depth-model check is off
    cfg = load_preset(
        "cocostuff27_vits8",
        [
            f"data.data_dir={data_dir}",
            f"data.res={sizes.res}",
            f"data.batch_size={sizes.batch}",
            "data.allow_other_depth_model=true",
        ],
    )
    dataset = build_train_set(cfg)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=sizes.batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(0),
    )
    sync, it = synchronizer(device), iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(sizes.loader_batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items() if torch.is_tensor(v)}
    sync()
    seconds = time.perf_counter() - t0
    del batch, it, loader
    return {
        "workers": workers,
        "items_on_disk": len(dataset),
        "batches": sizes.loader_batches,
        "images_per_s": sizes.loader_batches * sizes.batch / seconds,
        "ms_per_batch": seconds / sizes.loader_batches * 1e3,
    }


def eval_timing(cfg: Config, sizes: Sizes, device: torch.device, precision: str, workers: int | None) -> dict:
    """Evaluation images/s at ``eval_res`` with flip averaging; with ``workers`` also with DenseCRF on both probes."""
    # lazy: the evaluation layer is only needed here
    from depthg.data.transforms import unnormalize
    from depthg.evaluation.crf import CRFPool
    from depthg.evaluation.evaluate import predict_logits

    old = _precision(device, precision)
    try:
        model = _model(cfg, device, precision).eval()
        g = torch.Generator().manual_seed(1)
        img = torch.randn(sizes.eval_batch, 3, sizes.eval_res, sizes.eval_res, generator=g).clamp(-2, 2).to(device)

        def predict() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                cluster, linear = predict_logits(model, img, flip=True)
            return cluster, linear

        def no_crf() -> None:
            for _ in range(sizes.eval_batches):
                cluster, linear = predict()
                cluster.argmax(1).cpu(), linear.argmax(1).cpu()

        times = paired_times({"no_crf": no_crf}, 2, device)["no_crf"]
        out = {"images_per_s": sizes.eval_batches * sizes.eval_batch / statistics.median(times)}
        if workers is not None:
            rgb = unnormalize(img.cpu()).numpy()  # uint8 [B,R,R,3]
            with CRFPool(workers) as pool:
                cluster, linear = predict()
                pool(rgb[:1], cluster[:1])  # start the workers outside the timing
                t0, done = time.perf_counter(), 0
                while done < sizes.crf_images:
                    cluster, linear = predict()
                    pool(rgb, cluster), pool(rgb, linear)  # both probes, as depthg.evaluation.evaluate does
                    done += len(rgb)
                out["crf_images_per_s"] = done / (time.perf_counter() - t0)
                out["crf_workers"] = workers
    finally:
        _restore_precision(old)
    return out


def loss_and_fps_timing(sizes: Sizes, device: torch.device, channels: int, dim: int, repeats: int) -> dict:
    """FPS alone, and FPS + correlation loss fwd+bwd (ours against the release-style baseline) on ``device``."""
    g = torch.Generator().manual_seed(0)
    B, S, h = sizes.batch, sizes.side, sizes.res // 8
    f1, f2 = (torch.randn(B, channels, h, h, generator=g).to(device) for _ in range(2))
    z1, z2 = (torch.randn(B, dim, h, h, generator=g).to(device).requires_grad_(True) for _ in range(2))
    d1, d2 = (torch.rand(B, 1, sizes.res, sizes.res, generator=g).mul(255).to(device) for _ in range(2))
    points = sampling.depth_to_points(sampling.pool_depth(d1, (h, h)), fidelity="reference")
    terms = paper_terms()  # the COCO ViT-S/8 preset's terms, reference fidelity

    def run(loss_fn: Callable) -> None:
        c1, c2 = (sampling.fps_coords(d, (h, h), S, fidelity="reference", start=0) for d in (d1, d2))
        loss_fn(c1, c2)["total"].backward()

    ours = lambda c1, c2: losses.correlation_loss(
        f1, f2, z1, z2, d1, d2, c1, c2, terms, generator=torch.Generator().manual_seed(1)
    )
    release = lambda c1, c2: correlation_loss_release_style(
        f1, f2, z1, z2, d1, c1, c2, terms, generator=torch.Generator().manual_seed(1)
    )
    times = paired_times(
        {
            "fps": lambda: sampling.farthest_point_sample(points, S * S),
            "ours": lambda: run(ours),
            "release": lambda: run(release),
        },
        repeats,
        device,
    )
    return {
        "fps_ms": statistics.median(times["fps"]) * 1e3,
        "loss_ms": statistics.median(times["ours"]) * 1e3,
        "release_style_loss_ms": statistics.median(times["release"]) * 1e3,
        "loss_ratio": median_ratio(times["release"], times["ours"]),
    }


def projections(train: dict, evaluation: dict, eval_images: dict[str, int], stand_in: str | None = None) -> dict:
    """Projected minutes of each paper run (2,334 iterations + evaluation with CRF) and of each paper table.

    Each preset takes the measured throughput of its backbone (``stand_in``: of that one measured label for all,
    as in the reduced run); iteration time is scaled linearly in the batch (Potsdam trains with 16), and the
    step's S (11 measured; ViT-B COCO uses 12) is taken as is.
    """
    labels = {"vit_small_patch8": "ViT-S/8", "vit_base_patch8": "ViT-B/8"}
    runs = {}
    for name in sorted({p for presets in PAPER_TABLES.values() for p in presets}):
        cfg = PRESETS[name]
        label = stand_in or labels[cfg.model.backbone]
        if label not in train:
            continue
        run = {"measured_as": label}
        for precision in PRECISIONS:
            ms = train[label][precision]["ms_per_iteration"] * cfg.data.batch_size / 32
            crf_ips = evaluation[label].get("crf_images_per_s")
            train_min = PAPER_ITERATIONS * ms / 6e4
            eval_min = eval_images[cfg.data.dataset] / crf_ips / 60 if crf_ips else None
            run[precision] = {"train_min": train_min, "eval_min": eval_min, "total_min": train_min + (eval_min or 0.0)}
        runs[name] = run
    tables = {
        table: {prec: sum(runs[p][prec]["total_min"] for p in presets) for prec in PRECISIONS}
        for table, presets in PAPER_TABLES.items()
        if all(p in runs for p in presets)
    }
    return {"iterations": PAPER_ITERATIONS, "eval_images": eval_images, "runs": runs, "tables": tables}


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-reduced-{platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_bench(
    device: torch.device,
    sizes: Sizes,
    out_dir: Path,
    *,
    workers: int,
    eval_images: dict[str, int],
    data_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Everything in the module docstring; returns the record it writes to ``out_dir/<device>.json`` (+ .md)."""
    t_start = time.perf_counter()
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (reduced sizes)",
        "mode": "full" if sizes == FULL else "reduced",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "sizes": dataclasses.asdict(sizes),
        "precisions": {"fp32": "TF32 off (reference)", "bf16": "backbone under bf16 autocast (paper)"},
        "train": {},
        "evaluation": {},
    }
    with tempfile.TemporaryDirectory(prefix="depthg-bench-data-") as tmp:
        # the on-disk set first: its writer processes fork before this process touches CUDA
        root = Path(data_dir or tmp)
        t0 = time.perf_counter()
        crops = write_training_set(root, sizes.sources, size=sizes.source_size, workers=workers)
        log(f"  wrote {crops} training crops in {time.perf_counter() - t0:.1f} s")
        for label, backbone in sizes.backbones:
            cfg = _bench_config(backbone, sizes)
            record["train"][label] = {}
            for precision in PRECISIONS:
                r = train_timing(cfg, sizes, device, precision)
                record["train"][label][precision] = r
                log(f"  train {label} {precision}: {r['iterations_per_s']:.2f} it/s, {r['images_per_s']:.1f} images/s")
            eval_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, res=sizes.eval_res))
            record["evaluation"][label] = {
                p: eval_timing(eval_cfg, sizes, device, p, workers if p == "fp32" else None) for p in PRECISIONS
            }
            log(f"  eval {label}: {record['evaluation'][label]['fp32']}")
        record["loss_fps"] = loss_and_fps_timing(
            sizes,
            device,
            channels=384 if sizes == FULL else 16,
            dim=70 if sizes == FULL else 8,
            repeats=5 if sizes == FULL else 2,
        )
        record["loader"] = loader_timing(root, sizes, workers, device)
    record["loader"]["step_images_per_s"] = {
        label: {p: record["train"][label][p]["images_per_s"] for p in PRECISIONS} for label in record["train"]
    }
    for label in record["train"]:
        for precision in PRECISIONS:
            r = record["train"][label][precision]
            r["split_ms"]["data"] = record["loader"]["ms_per_batch"]  # overlaps the step when workers keep up
    stand_in = None if sizes == FULL else sizes.backbones[0][0]
    record["projection"] = projections(
        record["train"], {k: v["fp32"] for k, v in record["evaluation"].items()}, eval_images, stand_in
    )
    record["wall_s"] = time.perf_counter() - t_start
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = device_slug(device)
    (out_dir / f"{slug}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / f"{slug}.md").write_text(markdown(record))
    return record


def _f(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(r: dict) -> str:
    """The record as a short markdown report."""
    lines = [
        f"# Speed on {r['device']} ({r['mode']}, torch {r['torch']}, {r['date_utc']} UTC)",
        "",
        f"Batch {r['sizes']['batch']}, {r['sizes']['res']} px, S={r['sizes']['side']} FPS, DFC on, random "
        f"weights. fp32 = {r['precisions']['fp32']}; bf16 = {r['precisions']['bf16']}.",
        "",
        "| backbone | precision | it/s | images/s | peak GiB | data ms | backbone ms | head+losses ms | optimiser ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, by_precision in r["train"].items():
        for precision, t in by_precision.items():
            s = t["split_ms"]
            lines.append(
                f"| {label} | {precision} | {_f(t['iterations_per_s'])} | {_f(t['images_per_s'], '.1f')} | "
                f"{_f(t['peak_memory_gib'])} | {_f(s['data'], '.1f')} | {_f(s['backbone'], '.1f')} | "
                f"{_f(s['head_losses'], '.1f')} | {_f(s['optimiser'], '.1f')} |"
            )
    ld = r["loader"]
    lines += [
        "",
        f"Loader ({ld['workers']} workers, {ld['items_on_disk']} five-crops on disk): "
        f"{ld['images_per_s']:.1f} images/s; the step consumes "
        + ", ".join(f"{lab} {p} {v:.1f}" for lab, d in ld["step_images_per_s"].items() for p, v in d.items())
        + " images/s.",
        "",
        "| backbone | eval precision | images/s (flip) | with DenseCRF |",
        "|---|---|---|---|",
    ]
    for label, by_precision in r["evaluation"].items():
        for precision, e in by_precision.items():
            lines.append(
                f"| {label} | {precision} | {_f(e['images_per_s'], '.1f')} | {_f(e.get('crf_images_per_s'), '.2f')} |"
            )
    lf = r["loss_fps"]
    lines += [
        "",
        f"FPS (B={r['sizes']['batch']}, S={r['sizes']['side']}): {lf['fps_ms']:.2f} ms per call; FPS + "
        f"correlation loss fwd+bwd {lf['loss_ms']:.2f} ms against {lf['release_style_loss_ms']:.2f} ms "
        f"release-style ({lf['loss_ratio']:.1f}x).",
        "",
        f"Projected minutes ({r['projection']['iterations']} iterations + evaluation with CRF):",
        "",
        "| run or table | fp32 | bf16 |",
        "|---|---|---|",
    ]
    for name, run in r["projection"]["runs"].items():
        lines.append(f"| {name} | {_f(run['fp32']['total_min'], '.1f')} | {_f(run['bf16']['total_min'], '.1f')} |")
    for name, t in r["projection"]["tables"].items():
        lines.append(f"| table: {name} | {_f(t['fp32'], '.1f')} | {_f(t['bf16'], '.1f')} |")
    if r["mode"] == "reduced":
        lines += [
            "",
            "Reduced run (no CUDA): every preset is projected from the one tiny model at tiny sizes; these "
            "figures check the command, they say nothing about a GPU or the paper's sizes.",
        ]
    return "\n".join(lines) + "\n"


@command(
    "gpu",
    help="the prepared GPU check (reduced sizes without CUDA): writes results/bench/<device>.json + .md",
    args=[
        (("--out",), dict(default=None, help="output folder (default results/bench)")),
        (("--reduced",), dict(action="store_true", help="the reduced sizes even on a GPU")),
        (("--workers",), dict(type=int, default=None, help="loader and CRF workers (default: cores)")),
        (("--eval-images",), dict(default=None, help="JSON object, dataset -> evaluation images")),
        (("--data-dir",), dict(default=None, help="keep the generated training set here")),
    ],
)
def bench_gpu(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = FULL if device.type == "cuda" and not args.reduced else REDUCED
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if sizes == REDUCED:
        workers = min(workers, 1)  # one worker process still runs the loader's and the CRF pool's process paths
    eval_images = {**EVAL_IMAGES, **json.loads(args.eval_images or "{}")}
    out = Path(args.out) if args.out else results_root() / "bench"
    print(f"bench gpu: {device} ({'full' if sizes == FULL else 'reduced'} sizes), {workers} workers")
    record = run_bench(
        device,
        sizes,
        out,
        workers=workers,
        eval_images=eval_images,
        data_dir=Path(args.data_dir) if args.data_dir else None,
    )
    print(markdown(record))
    print(f"wrote {out / device_slug(device)}.json and .md in {record['wall_s']:.0f} s")
    return record
