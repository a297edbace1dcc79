"""CPU micro-benchmarks, each figure beside a release-style baseline measured in the same run and the ratio.

* ``fps``: :func:`depthg.model.sampling.farthest_point_sample` (on the CPU its compiled loop, and its batched torch
  loop, the GPU path) against per-image numpy loops of the same algorithm (:mod:`depthg.bench.baselines`); checks
  that all pick the same indices.
* ``loss``: FPS coordinates of image and partner + :func:`depthg.model.losses.correlation_loss` forward and backward at
  the paper's shapes (self, kNN, 5 negatives, DFC) for both fidelities, against the release-style FPS and loss;
  checks that both give the same loss.
* ``compile``: ``torch.compile`` of the correlation loss against eager at the paper's shapes (compile time, ratio);
* ``knn``, ``train``, ``crf``: kNN, training-iteration and DenseCRF throughput (no baseline).

Times are medians over interleaved rounds (:func:`depthg.bench.common.paired_times`), ratios the median of the
per-round ratios, with torch's default thread count; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from depthg.bench.baselines import (
    correlation_loss_release_style,
    fps_coords_release_style,
    fps_lean,
    fps_release_style,
)
from depthg.bench.common import command, machine, median_ratio, paired_times, paper_terms
from depthg.model import losses, sampling


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:9.2f} ms"


@command(
    "fps",
    help="batched torch FPS vs per-image numpy loops",
    args=[
        (("--batch",), dict(type=int, default=32)),
        (("--grid",), dict(type=int, default=28)),
        (("--side",), dict(type=int, default=11, help="S; S*S samples")),
        (("--repeats",), dict(type=int, default=7)),
        (("--device",), dict(default="cpu")),
    ],
)
def bench_fps(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(args.batch, 1, args.grid, args.grid, generator=gen) * 255
    points = sampling.depth_to_points(depth, fidelity="reference").to(args.device)  # [B,N,3]
    n, host = args.side**2, points.cpu().numpy()
    print(
        f"FPS: B={args.batch}, N={args.grid}x{args.grid}={args.grid**2} points, {n} samples, "
        f"device={args.device}, {machine()}"
    )
    candidates = {
        "ours": lambda: sampling.farthest_point_sample(points, n),
        "torch": lambda: sampling.farthest_point_sample(points, n, backend="torch"),
        "release": lambda: np.stack([fps_release_style(p, n) for p in host]),
        "lean": lambda: np.stack([fps_lean(p, n) for p in host]),
    }
    times = paired_times(candidates, args.repeats, args.device)
    idx = sampling.farthest_point_sample(points, n).cpu().numpy()
    path = "compiled loop (numba)" if points.device.type == "cpu" else "batched torch loop"
    print(f"  ours: {path:<25}{_ms(times['ours'])}   median of {args.repeats} interleaved rounds")
    ratios = {}
    for key, label in (
        ("torch", "batched torch loop"),
        ("release", "release-style numpy loop"),
        ("lean", "lean numpy loop"),
    ):
        ratios[key] = median_ratio(times[key], times["ours"])
        same = np.array_equal(idx, np.asarray(candidates[key]().cpu() if key == "torch" else candidates[key]()))
        print(f"  {label:<31}{_ms(times[key])}   ratio {ratios[key]:6.1f}x   indices identical: {same}")
    return {
        "ours_ms": statistics.median(times["ours"]) * 1e3,
        "torch_ms": statistics.median(times["torch"]) * 1e3,
        "ratio_release": ratios["release"],
    }


# the correlation loss's input shapes, the paper's by default (COCO ViT-S/8: B=32, C=384, K=70, 28x28, S=11)
PAPER_SHAPES = [
    (("--batch",), dict(type=int, default=32)),
    (("--channels",), dict(type=int, default=384)),
    (("--dim",), dict(type=int, default=70)),
    (("--grid",), dict(type=int, default=28)),
    (("--side",), dict(type=int, default=11)),
]


def _loss_inputs(args: argparse.Namespace, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Features f [B,C,h,w] and codes z [B,K,h,w] (with grad) of image and partner, 8-bit depth [B,1,8h,8w]."""
    B, C, K, h, dev = args.batch, args.channels, args.dim, args.grid, args.device
    f1, f2 = (torch.randn(B, C, h, h, generator=gen).to(dev) for _ in range(2))
    z1, z2 = (torch.randn(B, K, h, h, generator=gen).to(dev).requires_grad_(True) for _ in range(2))
    d1, d2 = (torch.rand(B, 1, h * 8, h * 8, generator=gen).mul(255).floor().to(dev) for _ in range(2))  # ViT /8
    return f1, f2, z1, z2, d1, d2


@command(
    "loss",
    help="FPS + correlation loss forward+backward at paper shapes, both fidelities, vs release-style",
    args=[
        *PAPER_SHAPES,
        (("--neg",), dict(type=int, default=5)),
        (("--repeats",), dict(type=int, default=5)),
        (("--device",), dict(default="cpu")),
    ],
)
def bench_loss(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(0)
    B, C, K, h, S, dev = args.batch, args.channels, args.dim, args.grid, args.side, args.device
    f1, f2, z1, z2, d1, d2 = _loss_inputs(args, gen)
    print(
        f"correlation loss fwd+bwd with FPS coords of image and partner: B={B}, C={C}, K={K}, {h}x{h}, S={S}, "
        f"{args.neg} negatives, DFC on, device={dev}, {machine()}"
    )
    out = {}
    for fidelity in ("paper", "reference"):
        terms = paper_terms(neg_samples=args.neg, dfc_target=fidelity)
        # paper: a random first pick per image (fps_start=paper), reference: index 0; the same for both sides
        start = torch.randint(h * h, (B,), generator=gen) if fidelity == "paper" else torch.zeros(B, dtype=torch.long)
        out[fidelity] = _loss_round(f1, f2, z1, z2, d1, d2, terms, start, S, args.repeats, dev)
    return out


def _loss_round(
    f1, f2, z1, z2, d1, d2, terms: losses.CorrelationTerms, start: torch.Tensor, S: int, repeats: int, dev: str
) -> dict:
    """One fidelity of ``bench loss``: ours against the release-style FPS + loss, paired rounds; prints a line."""
    h, fidelity = f1.shape[-1], terms.dfc_target

    def ours_coords():
        return [sampling.fps_coords(d, (h, h), S, fidelity=fidelity, start=start) for d in (d1, d2)]

    def release_coords():
        return [fps_coords_release_style(d, (h, h), S, fidelity=fidelity, start=start) for d in (d1, d2)]

    def run(loss_fn, coords_fn):
        c1, c2 = coords_fn()
        result = loss_fn(c1, c2)
        result["total"].backward()
        return result["total"].item()

    def ours_loss(c1, c2):
        return losses.correlation_loss(
            f1, f2, z1, z2, d1, d2, c1, c2, terms, generator=torch.Generator().manual_seed(1)
        )

    def release_loss(c1, c2):
        return correlation_loss_release_style(
            f1, f2, z1, z2, d1, c1, c2, terms, generator=torch.Generator().manual_seed(1)
        )

    times = paired_times(
        {
            "ours": lambda: run(ours_loss, ours_coords),
            "release": lambda: run(release_loss, release_coords),
            "ours_fps": ours_coords,
            "release_fps": release_coords,
        },
        repeats,
        dev,
    )
    ratio = median_ratio(times["release"], times["ours"])
    ours_value, release_value = run(ours_loss, ours_coords), run(release_loss, release_coords)
    print(
        f"  {fidelity:<9} ours {_ms(times['ours'])} (FPS {_ms(times['ours_fps']).strip()})   release-style "
        f"{_ms(times['release'])} (FPS {_ms(times['release_fps']).strip()})   ratio {ratio:5.2f}x   "
        f"loss {ours_value:.6f} vs {release_value:.6f}"
    )
    return {
        "ours_ms": statistics.median(times["ours"]) * 1e3,
        "release_ms": statistics.median(times["release"]) * 1e3,
        "ratio": ratio,
        "loss_diff": abs(ours_value - release_value),
    }


@command(
    "compile",
    help="torch.compile of the correlation loss: compile time and fwd+bwd against eager at the paper's shapes",
    args=[
        *PAPER_SHAPES,
        (("--repeats",), dict(type=int, default=5)),
        (("--backend",), dict(default="inductor", help="torch.compile backend (eager: tracing only, for tests)")),
        (("--device",), dict(default="cpu")),
    ],
)
def bench_compile(args: argparse.Namespace) -> dict:
    """Training does not compile the loss: it was measured only here, at fixed inputs, not inside a run, whose
    inputs change (the DFC weight and shift decay, the FPS sample count: values dynamo may guard on, each change a
    recompile), and not on a GPU. This tells a device where compiling pays from one where it does not."""
    B, C, K, h, S, dev = args.batch, args.channels, args.dim, args.grid, args.side, args.device
    f1, f2, z1, z2, d1, d2 = _loss_inputs(args, torch.Generator().manual_seed(0))
    terms = paper_terms(neg_samples=5, dfc_target="paper")
    c1, c2 = (sampling.fps_coords(d, (h, h), S, fidelity="paper") for d in (d1, d2))
    print(f"torch.compile ({args.backend}) of the correlation loss: B={B}, C={C}, K={K}, {h}x{h}, S={S}, {machine()}")

    def run(loss_fn) -> float:
        out = loss_fn(f1, f2, z1, z2, d1, d2, c1, c2, terms, generator=torch.Generator().manual_seed(1))
        out["total"].backward()
        return out["total"].item()

    compiled = torch.compile(losses.correlation_loss, backend=args.backend)
    t0 = time.perf_counter()
    value = run(compiled)
    compile_s = time.perf_counter() - t0
    eager_value = run(losses.correlation_loss)
    times = paired_times(
        {"eager": lambda: run(losses.correlation_loss), "compiled": lambda: run(compiled)}, args.repeats, dev
    )
    ratio = median_ratio(times["eager"], times["compiled"])
    rel = abs(value - eager_value) / max(abs(eager_value), 1e-12)
    print(
        f"  first call (compile) {compile_s:.1f} s; eager {_ms(times['eager'])}, compiled {_ms(times['compiled'])}, "
        f"ratio {ratio:.2f}x; loss {value:.8f} vs {eager_value:.8f} (relative difference {rel:.1e})"
    )
    return {"compile_s": compile_s, "ratio": ratio, "relative_difference": rel}


@command(
    "knn",
    help="chunked top-k cosine kNN on random features: wall time and peak extra memory",
    args=[
        (("--n",), dict(type=int, default=50_000)),
        (("--dim",), dict(type=int, default=384)),
        (("--k",), dict(type=int, default=30)),
        (("--chunk",), dict(type=int, default=None)),
        (("--device",), dict(default="cpu")),
    ],
)
def bench_knn(args):
    # lazy: each benchmark loads only what it measures
    from depthg.data.knn import benchmark_knn

    print(f"kNN: {machine()}")
    r = benchmark_knn(args.n, args.dim, args.k, args.chunk, args.device, verbose=False)
    print(
        f"  N={args.n} x {args.dim}, top-{args.k}, chunk={r['chunk']} rows: {r['seconds']:.1f} s, peak extra "
        f"memory {r['peak_extra_rss_mb']:.0f} MB (target < 1024 MB)"
    )


def _train_iterations_per_s(cfg, batch_size, res, iterations, warmup, device):
    """Iterations/s of the real training iteration (depthg.training.train.iteration) on synthetic inputs of the
    real shapes: images, kNN partners, labels and depth maps drawn at random; backbone weights as the config says."""
    # lazy: each benchmark loads only what it measures
    from depthg.bench.training_run import bench_run, random_batch
    from depthg.training.train import iteration

    run = bench_run(cfg, device)
    batch = random_batch(batch_size, res, cfg.model.n_classes, device)
    for _ in range(warmup):
        iteration(run, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iterations):
        iteration(run, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iterations / (time.perf_counter() - t0)


@command(
    "train",
    help="training iterations/s: synthetic preset on CPU; paper COCO ViT-S/8 setting on a GPU",
    args=[(("--iterations",), dict(type=int, default=20))],
)
def bench_train(args):
    # lazy: each benchmark loads only what it measures
    from depthg.presets import load_preset

    print(f"train: {machine()}")
    cfg = load_preset("synthetic", ["loss.depth_sampling=fps"])
    ips = _train_iterations_per_s(cfg, cfg.data.batch_size, cfg.data.res, args.iterations, 3, torch.device("cpu"))
    print(
        f"  CPU, synthetic preset (B={cfg.data.batch_size}, {cfg.data.res} px, {cfg.model.backbone}, "
        f"S={cfg.loss.feature_samples}, FPS): {ips:.2f} it/s = {ips * cfg.data.batch_size:.1f} images/s"
    )
    if not torch.cuda.is_available():
        print(
            "  GPU: no CUDA device here; the paper setting (COCO ViT-S/8, B=32, 224 px, 11x11 FPS, 5 negatives) "
            "was not measured"
        )
        return
    cfg = load_preset("cocostuff27_vits8", ["model.weights=random", "train.bf16=true"])
    ips = _train_iterations_per_s(cfg, 32, 224, args.iterations, 5, torch.device("cuda"))
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"  GPU {torch.cuda.get_device_name()}, COCO ViT-S/8 paper setting (B=32, 224 px, S=11 FPS, 5 negatives, "
        f"bf16 backbone, random weights): {ips:.2f} it/s, peak memory {peak:.2f} GiB; the paper's 2,334 "
        f"iterations take {2334 / ips / 60:.1f} min (target >= 10 it/s)"
    )


@command(
    "crf",
    help="DenseCRF evaluation throughput with 1 and 2 worker processes",
    args=[
        (("--images",), dict(type=int, default=16)),
        (("--res",), dict(type=int, default=320)),
        (("--classes",), dict(type=int, default=27)),
    ],
)
def bench_crf(args):
    # lazy: each benchmark loads only what it measures
    from depthg.data.synthetic import render_scene
    from depthg.evaluation.crf import CRFPool

    print(f"crf: {machine()}")
    scenes = [render_scene(0, i, args.res) for i in range(args.images)]
    images = np.stack([s["image"] for s in scenes])  # uint8 [N,R,R,3]
    g = torch.Generator().manual_seed(0)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(np.stack([s["label"] for s in scenes])), args.classes)
    logits = onehot.permute(0, 3, 1, 2).float() * 2 + torch.randn(
        args.images, args.classes, args.res, args.res, generator=g
    )
    logits = torch.nn.functional.avg_pool2d(logits, 8)  # the code grid of a /8 ViT, upsampled inside the CRF
    for workers in (1, 2):
        with CRFPool(workers) as pool:
            pool(images[:workers], logits[:workers])  # start the workers outside the timing
            t0 = time.perf_counter()
            pool(images, logits)
            dt = time.perf_counter() - t0
        print(
            f"  {workers} worker(s): {args.images / dt:.2f} images/s ({args.res}x{args.res}, {args.classes} "
            f"classes, 10 mean-field iterations)"
        )
