"""Micro-benchmarks: ``python -m depthg.bench <command>``.

Commands register themselves with :func:`command`; to add one (``knn``, ``train``, ``crf``, ...), write a
function taking the parsed arguments, decorate it with ``@command("name", help=..., args=[...])`` and print the
figures. Timings are the best wall-clock time of several runs after a warm-up (the least disturbed by other
processes on a shared machine), with torch's default thread count; the load average is printed beside them.

* ``fps``: batched torch FPS (:func:`depthg.sampling.farthest_point_sample`) against per-image numpy loops of the
  same algorithm: the release's structure (a shrinking array of remaining indices, np.delete, METHOD.md §4.2)
  and a lean one (a running minimum over all points); checks that all three pick the same indices.
* ``loss``: :func:`depthg.losses.correlation_loss` forward + backward, FPS coordinates included, at the paper's
  shapes (self, kNN, 5 negatives, DFC), for both fidelities.
"""

import argparse
import os
import time

import numpy as np
import torch

from depthg import losses, sampling

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
