"""Micro-benchmarks: ``python -m depthg.bench <command>``.

Commands register themselves with :func:`command`; to add one (``knn``, ``train``, ``crf``, ...), write a
function taking the parsed arguments, decorate it with ``@command("name", help=..., args=[...])`` and print the
figures. Timings are the best wall-clock time of several runs after a warm-up (the least disturbed by other
processes on a shared machine), with torch's default thread count; the load average is printed beside them.

* ``fps``: batched torch FPS (:func:`depthg.model.sampling.farthest_point_sample`) against per-image numpy loops of the
  same algorithm: the release's structure (a shrinking array of remaining indices, np.delete, METHOD.md §4.2)
  and a lean one (a running minimum over all points); checks that all three pick the same indices.
* ``loss``: :func:`depthg.model.losses.correlation_loss` forward + backward, FPS coordinates included, at the paper's
  shapes (self, kNN, 5 negatives, DFC), for both fidelities.
* ``feature-quality``: not a timing: the synthetic backbone's frozen-feature quality, pretrained vs random
  (:mod:`depthg.reporting.feature_quality`), written to results/feature_quality_synthetic.{csv,md}.
"""

import argparse
import os
import time

import numpy as np
import torch

from depthg.model import losses, sampling

COMMANDS = {}


def command(name, *, help, args=()):
    """Register a bench command; ``args`` are (flags, kwargs) pairs for argparse."""

    def register(fn):
        COMMANDS[name] = (fn, help, args)
        return fn

    return register


def _time(fn, repeats, device):
    """Best wall time of ``fn()`` over ``repeats`` runs, in seconds, after one warm-up call; synchronises CUDA."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    result = fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times), result


def _machine():
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"torch threads={torch.get_num_threads()}, {os.cpu_count()} CPUs{load}"


def fps_release_style(points, n):
    """Per-image numpy FPS as the release structures it: distances only to the remaining points, np.delete."""
    remaining = np.arange(1, len(points))
    best = np.full(len(points), np.inf)  # float64 running minimum, as in the release
    picks = [0]
    for _ in range(n - 1):
        dist = ((points[remaining] - points[picks[-1]]) ** 2).sum(-1)
        best[remaining] = np.minimum(best[remaining], dist)
        k = int(np.argmax(best[remaining]))  # first maximum: ties go to the lowest remaining index
        picks.append(int(remaining[k]))
        remaining = np.delete(remaining, k)
    return np.array(picks)


def fps_lean(points, n):
    """Per-image numpy FPS with a running minimum over all points; chosen points are held at -1."""
    best = np.full(len(points), np.inf, dtype=np.float32)
    picks = [0]
    for _ in range(n - 1):
        best[picks[-1]] = -1
        diff = points - points[picks[-1]]
        diff *= diff
        np.minimum(best, diff[:, 0] + diff[:, 1] + diff[:, 2], out=best)
        picks.append(int(best.argmax()))
    return np.array(picks)


@command("fps", help="batched torch FPS vs per-image numpy loops", args=[
    (("--batch",), dict(type=int, default=32)), (("--grid",), dict(type=int, default=28)),
    (("--side",), dict(type=int, default=11, help="S; S*S samples")), (("--repeats",), dict(type=int, default=20)),
    (("--device",), dict(default="cpu"))])
def bench_fps(args):
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(args.batch, 1, args.grid, args.grid, generator=gen) * 255
    points = sampling.depth_to_points(depth, fidelity="reference").to(args.device)  # [B,N,3]
    n = args.side ** 2
    host = points.cpu().numpy()
    print(f"FPS: B={args.batch}, N={args.grid}x{args.grid}={args.grid ** 2} points, {n} samples, "
          f"device={args.device}, {_machine()}")
    t_torch, idx = _time(lambda: sampling.farthest_point_sample(points, n), args.repeats, args.device)
    idx = idx.cpu().numpy()
    print(f"  batched torch (one call)        {t_torch * 1e3:9.2f} ms")
    for name, fn in (("release-style numpy loop", fps_release_style), ("lean numpy loop", fps_lean)):
        t_np, ref = _time(lambda: np.stack([fn(p, n) for p in host]), max(1, args.repeats // 4), "cpu")
        agree = np.array_equal(idx, ref)
        print(f"  per-image {name:<22}{t_np * 1e3:9.2f} ms   ratio {t_np / t_torch:6.1f}x   "
              f"indices identical: {agree}")


@command("loss", help="correlation loss forward+backward at paper shapes, both fidelities", args=[
    (("--batch",), dict(type=int, default=32)), (("--channels",), dict(type=int, default=384)),
    (("--dim",), dict(type=int, default=70)), (("--grid",), dict(type=int, default=28)),
    (("--side",), dict(type=int, default=11)), (("--neg",), dict(type=int, default=5)),
    (("--repeats",), dict(type=int, default=5)), (("--device",), dict(default="cpu"))])
def bench_loss(args):
    gen = torch.Generator().manual_seed(0)
    B, C, K, h, S, dev = args.batch, args.channels, args.dim, args.grid, args.side, args.device
    res = h * 8  # ViT patch 8
    f1, f2 = (torch.randn(B, C, h, h, generator=gen).to(dev) for _ in range(2))
    z1, z2 = (torch.randn(B, K, h, h, generator=gen).to(dev).requires_grad_(True) for _ in range(2))
    d1, d2 = (torch.rand(B, 1, res, res, generator=gen).mul(255).floor().to(dev) for _ in range(2))
    weights = dict(pos_intra_weight=0.58, pos_intra_shift=0.07, pos_inter_weight=0.36, pos_inter_shift=0.025,
                   neg_inter_weight=0.7, neg_inter_shift=0.761, neg_samples=args.neg, dfc_weight=0.19,
                   dfc_shift=0.03)
    print(f"correlation loss fwd+bwd: B={B}, C={C}, K={K}, {h}x{h}, S={S}, {args.neg} negatives, DFC on, "
          f"FPS coords, device={dev}, {_machine()}")
    for fidelity in ("paper", "reference"):
        start = "random" if fidelity == "paper" else 0
        loss_gen = torch.Generator().manual_seed(1)

        def coords():
            return [sampling.fps_coords(d, (h, h), S, fidelity=fidelity, start=start, generator=loss_gen)
                    for d in (d1, d2)]

        def step():
            c1, c2 = coords()
            out = losses.correlation_loss(f1, f2, z1, z2, d1, d2, c1, c2, **weights, dfc_target=fidelity,
                                          generator=loss_gen)
            out["total"].backward()
            return out["total"].item()

        t_coords, _ = _time(coords, args.repeats, dev)
        t_step, total = _time(step, args.repeats, dev)
        print(f"  {fidelity:<9} total step {t_step * 1e3:8.2f} ms  (FPS coords for both images "
              f"{t_coords * 1e3:7.2f} ms)  loss={total:.5f}")


@command("knn", help="chunked top-k cosine kNN on random features: wall time and peak extra memory", args=[
    (("--n",), dict(type=int, default=50_000)), (("--dim",), dict(type=int, default=384)),
    (("--k",), dict(type=int, default=30)), (("--chunk",), dict(type=int, default=None)),
    (("--device",), dict(default="cpu"))])
def bench_knn(args):
    # lazy: each benchmark loads only what it measures
    from depthg.data.knn import benchmark_knn

    print(f"kNN: {_machine()}")
    r = benchmark_knn(args.n, args.dim, args.k, args.chunk, args.device, verbose=False)
    print(f"  N={args.n} x {args.dim}, top-{args.k}, chunk={r['chunk']} rows: {r['seconds']:.1f} s, peak extra "
          f"memory {r['peak_extra_rss_mb']:.0f} MB (target < 1024 MB)")


def _train_iterations_per_s(cfg, batch_size, res, iterations, warmup, device):
    """Iterations/s of the real training iteration (depthg.training.train._one_iteration) on synthetic inputs of the real
    shapes: images, kNN partners, labels and depth maps drawn at random; backbone weights as the config says."""
    from pathlib import Path

    # lazy: each benchmark loads only what it measures
    from depthg.device import DistInfo
    from depthg.training.train import _one_iteration, build_training, make_schedule

    torch.manual_seed(0)
    model, step, optimizers = build_training(cfg, device)
    schedule, gen = make_schedule(cfg).start(), torch.Generator(device=device).manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = {"img": torch.randn(batch_size, 3, res, res, generator=g),
             "img_pos": torch.randn(batch_size, 3, res, res, generator=g),
             "label": torch.randint(0, cfg.model.n_classes, (batch_size, res, res), generator=g),
             "depth": torch.rand(batch_size, 1, res, res, generator=g) * 255,
             "depth_pos": torch.rand(batch_size, 1, res, res, generator=g) * 255}
    batch = {k: v.to(device) for k, v in batch.items()}
    run = lambda it: _one_iteration(model, step, optimizers, batch, schedule, gen, cfg, DistInfo(), it, Path("-"))
    for it in range(warmup):
        run(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for it in range(iterations):
        run(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iterations / (time.perf_counter() - t0)


@command("train", help="training iterations/s: synthetic preset on CPU; paper COCO ViT-S/8 setting on a GPU", args=[
    (("--iterations",), dict(type=int, default=20))])
def bench_train(args):
    # lazy: each benchmark loads only what it measures
    from depthg.presets import load_preset

    print(f"train: {_machine()}")
    cfg = load_preset("synthetic", ["loss.depth_sampling=fps"])
    ips = _train_iterations_per_s(cfg, cfg.data.batch_size, cfg.data.res, args.iterations, 3, torch.device("cpu"))
    print(f"  CPU, synthetic preset (B={cfg.data.batch_size}, {cfg.data.res} px, {cfg.model.backbone}, "
          f"S={cfg.loss.feature_samples}, FPS): {ips:.2f} it/s = {ips * cfg.data.batch_size:.1f} images/s")
    if not torch.cuda.is_available():
        print("  GPU: no CUDA device here; the paper setting (COCO ViT-S/8, B=32, 224 px, 11x11 FPS, 5 negatives) "
              "was not measured")
        return
    cfg = load_preset("cocostuff27_vits8", ["model.weights=random", "train.bf16=true"])
    ips = _train_iterations_per_s(cfg, 32, 224, args.iterations, 5, torch.device("cuda"))
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"  GPU {torch.cuda.get_device_name()}, COCO ViT-S/8 paper setting (B=32, 224 px, S=11 FPS, 5 negatives, "
          f"bf16 backbone, random weights): {ips:.2f} it/s, peak memory {peak:.2f} GiB; the paper's 2,334 "
          f"iterations take {2334 / ips / 60:.1f} min (target >= 10 it/s)")


@command("crf", help="DenseCRF evaluation throughput with 1 and 2 worker processes", args=[
    (("--images",), dict(type=int, default=16)), (("--res",), dict(type=int, default=320)),
    (("--classes",), dict(type=int, default=27))])
def bench_crf(args):
    # lazy: each benchmark loads only what it measures
    from depthg.data.synthetic import render_scene
    from depthg.evaluation.crf import CRFPool

    print(f"crf: {_machine()}")
    scenes = [render_scene(0, i, args.res) for i in range(args.images)]
    images = np.stack([s["image"] for s in scenes])  # uint8 [N,R,R,3]
    g = torch.Generator().manual_seed(0)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(np.stack([s["label"] for s in scenes])), args.classes)
    logits = onehot.permute(0, 3, 1, 2).float() * 2 + torch.randn(args.images, args.classes, args.res, args.res,
                                                                    generator=g)
    logits = torch.nn.functional.avg_pool2d(logits, 8)  # the code grid of a /8 ViT, upsampled inside the CRF
    for workers in (1, 2):
        with CRFPool(workers) as pool:
            pool(images[:workers], logits[:workers])  # start the workers outside the timing
            t0 = time.perf_counter()
            pool(images, logits)
            dt = time.perf_counter() - t0
        print(f"  {workers} worker(s): {args.images / dt:.2f} images/s ({args.res}x{args.res}, {args.classes} "
              f"classes, 10 mean-field iterations)")


@command("feature-quality", help="pretrained vs random synthetic backbone: k-means, linear probe, DepthG cluster "
         "probe -> results/feature_quality_synthetic.{csv,md}", args=[
    (("--weights",), dict(nargs=2, default=["random", "bundled"], metavar=("BASELINE", "PRETRAINED"))),
    (("--seeds",), dict(type=int, nargs="+", default=[0], help="training seeds of the cluster probe (c)")),
    (("--no-train",), dict(action="store_true", help="only (a) and (b), no DepthG training")),
    (("--results-dir",), dict(default=None, help="results root (default: $DEPTHG_RESULTS_DIR or <repo>/results)"))])
def bench_feature_quality(args):
    import sys

    # lazy: each benchmark loads only what it measures
    from depthg.reporting import feature_quality

    table, meta = feature_quality.measure(weights=tuple(args.weights), seeds=tuple(args.seeds), train=not args.no_train)
    paths = feature_quality.write(table, meta, results_dir=args.results_dir,
                                  command="python -m depthg.bench " + " ".join(sys.argv[1:]))
    print(paths[1].read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m depthg.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_text, arg_specs) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        for flags, kwargs in arg_specs:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(run=fn)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
