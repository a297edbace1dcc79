"""``python -m depthg.bench <command>``: fps, loss, knn, train, crf (:mod:`depthg.bench.cpu`), gpu
(:mod:`depthg.bench.gpu`) and feature-quality (:mod:`depthg.bench.quality`).

To add a command, write a function taking the parsed arguments in one of those modules, decorate it with
``@command("name", help=..., args=[...])`` (:mod:`depthg.bench.common`) and print the figures.
"""

from __future__ import annotations

import argparse

from depthg.bench import cpu, gpu, quality  # noqa: F401  (importing registers their commands)
from depthg.bench.common import COMMANDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depthg.bench", description="Benchmarks of depthg.")
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
