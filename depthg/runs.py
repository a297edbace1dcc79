"""Results as data with provenance (DESIGN.md §7, §10.8).

Every run folder ``results/runs/<name>/`` holds the resolved ``config.json``, ``metrics.json`` and
``provenance.json`` (git commit and dirty flag, seed, package versions, device, backbone weights, wall time,
command). Tables and figures are generated from these files, never typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from depthg.files import file_lock, write_json
from depthg.lockfile import lock_state
from depthg.paths import git

_PACKAGES = ("depthg", "torch", "torchvision", "timm", "numpy", "scipy", "pandas", "pydensecrf2", "transformers")


def git_state(root: Path | None = None) -> dict[str, Any]:
    """Commit hash and dirty flag of the checkout (``unknown`` outside a git work tree)."""
    commit = git("rev-parse", "HEAD", root=root)
    # dirty = uncommitted changes to the code; results/ is what runs write, so it does not count
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", root=root)
    if commit is None or status is None:
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_description(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return (
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )


def cpu_description() -> dict[str, str]:
    """The CPU's model and the vector instruction set torch's kernels use on it: on another CPU (AVX2 instead of
    AVX512, say) float sums round differently, so the same commit and seed can differ in the last digits."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:  # not Linux
        pass
    return {"model": model, "torch_capability": torch.backends.cpu.get_cpu_capability()}


def provenance(
    *, seed: int | None, device: str, weights: str, wall_time_s: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "git": git_state(),
        "seed": seed,
        "device": device_description(device),
        "cpu": cpu_description(),
        "backbone_weights": weights,
        "wall_time_s": round(float(wall_time_s), 3),
        "packages": package_versions(),
        "lock": lock_state(),  # requirements.lock's sha256 and the packages installed at other versions
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def run_lock(run_dir: Path):
    """Hold the run folder for this process (train, resume, eval writers): a second one gets a BusyError naming
    the holder, instead of two runs interleaving one log and checkpoint. Re-entrant; freed when the process dies."""
    return file_lock(Path(run_dir) / ".lock", wait=False, what=f"run folder {run_dir}")


def write_run(
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the run's records, holding its folder (so a record never lands in a folder another run holds)."""
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        if config is not None:
            write_json(run_dir / "config.json", config)
        if metrics is not None:
            write_json(run_dir / "metrics.json", metrics)
        if provenance is not None:
            write_json(run_dir / "provenance.json", provenance)
    return run_dir


def read_run(run_dir: Path) -> dict[str, Any]:
    """config, metrics, provenance and the training log (metrics.jsonl) of a run folder."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"run_dir": str(run_dir)}
    for name in ("config", "metrics", "provenance"):
        p = run_dir / f"{name}.json"
        out[name] = json.loads(p.read_text()) if p.is_file() else None
    log = run_dir / "metrics.jsonl"
    out["log"] = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line per probe: accuracy and mIoU, e.g. ``cluster (crf): acc 61.2  mIoU 30.4``."""
    lines = []
    metrics = metrics.get("last_step", metrics)
    if "unlabelled" in metrics:
        return metrics["unlabelled"]
    for key, m in metrics.items():
        if isinstance(m, dict) and "accuracy" in m and "mIoU" in m:
            lines.append(f"{key:<22} acc {m['accuracy']:6.2f}  mIoU {m['mIoU']:6.2f}")
    return "\n".join(lines)
