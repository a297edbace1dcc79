"""`python -m depthg ... --help` answers in about a second: the CLI imports torch, timm and transformers only when a
command runs (the target is under 3 s; the assertion leaves room for a loaded shared CI machine)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["", "train", "prep knn"]  # the fast tier; the rest in the full suite (each ~1 s)
COMMANDS = FAST + [
    pytest.param(c, marks=pytest.mark.slow)
    for c in ("eval", "reproduce", "presets", "prep", "prep synthetic", "prep fivecrop", "prep depth", "prep check")
]
HEAVY = ("torch", "timm", "transformers", "torchvision", "pandas", "scipy")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_fast_and_loads_no_heavy_package(command):
    code = (
        "import runpy, sys; sys.argv = ['depthg', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('depthg', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, *command.split(), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    wall = time.perf_counter() - t0
    print(f"python -m depthg {command} --help: {wall:.2f} s")
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    assert "LOADED []" in out.stdout, f"--help imported {out.stdout.split('LOADED')[-1].strip()}"
    assert wall < 6.0, f"--help took {wall:.1f} s (target < 3 s)"
