"""Benchmarks: ``python -m depthg.bench <command>`` (see :mod:`depthg.bench.__main__` for the list).

``cpu`` holds the micro-benchmarks that print each figure beside a release-style baseline measured in the same
run (:mod:`depthg.bench.baselines`); ``gpu`` the prepared accelerator check that writes ``results/bench/``.
"""
