"""Not a timing: the synthetic backbone's frozen-feature quality, pretrained vs random weights
(:mod:`depthg.reporting.feature_quality`), written to results/feature_quality_synthetic.{csv,md}."""

from __future__ import annotations

import argparse
import sys

from depthg.bench.common import command


@command(
    "feature-quality",
    help="pretrained vs random synthetic backbone: k-means, linear probe, DepthG cluster "
    "probe -> results/feature_quality_synthetic.{csv,md}",
    args=[
        (("--weights",), dict(nargs=2, default=["random", "bundled"], metavar=("BASELINE", "PRETRAINED"))),
        (("--seeds",), dict(type=int, nargs="+", default=[0], help="training seeds of the cluster probe (c)")),
        (("--no-train",), dict(action="store_true", help="only (a) and (b), no DepthG training")),
        (("--results-dir",), dict(default=None, help="results root (default: $DEPTHG_RESULTS_DIR or <repo>/results)")),
    ],
)
def bench_feature_quality(args: argparse.Namespace) -> None:
    # lazy: each benchmark loads only what it measures
    from depthg.reporting import feature_quality

    table, meta = feature_quality.measure(weights=tuple(args.weights), seeds=tuple(args.seeds), train=not args.no_train)
    paths = feature_quality.write(
        table, meta, results_dir=args.results_dir, command="python -m depthg.bench " + " ".join(sys.argv[1:])
    )
    print(paths[1].read_text())
