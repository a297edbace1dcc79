"""Training: resume after SIGKILL, non-finite loss, torchrun/DDP, and that learning works on the synthetic world."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from depthg.errors import TrainingError
from depthg.evaluation.experiment import train_and_evaluate
from depthg.presets import load_preset
from depthg.training import checkpoints
from depthg.training.train import train

ROOT = Path(__file__).resolve().parent.parent


def _cfg(data_dir, *extra):
    return load_preset(
        "synthetic", [f"data.data_dir={data_dir}", "train.threads=1", "eval.crf=false", "data.batch_size=4", *extra]
    )


def _cli(args, env_extra, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "depthg", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _head(ckpt):
    state = checkpoints.load_training_state(ckpt)
    return state, {
        **state["head"],
        **{"cp." + k: v for k, v in state["cluster_probe"].items()},
        **{"lp." + k: v for k, v in state["linear_probe"].items()},
    }


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(synthetic_world, tmp_path):
    common = [
        "--preset",
        "synthetic",
        f"data.data_dir={synthetic_world}",
        "train.iterations=12",
        "train.checkpoint_every=3",
        "train.log_every=1",
        "train.threads=1",
        "data.batch_size=4",
        "--results-dir",
        str(tmp_path),
        "--no-eval",
        "--no-progress",
    ]
    ref = _cli(["train", *common, "--run-name", "full"], {})
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out

    ckpt = tmp_path / "runs" / "cut" / "checkpoints" / "last.pt"
    proc = _cli(["train", *common, "--run-name", "cut"], {})
    deadline = time.time() + 600
    while time.time() < deadline:  # kill it once a mid-run checkpoint exists
        if ckpt.is_file():
            try:
                if checkpoints.load_training_state(ckpt)["iteration"] >= 6:
                    break
            except Exception:
                pass  # being replaced right now
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = checkpoints.load_training_state(ckpt)["iteration"]
    assert 6 <= killed_at < 12, f"the run was not killed part-way (checkpoint at {killed_at})"
    # a kill in the middle of a log write leaves half a record without its newline: resume must drop it
    with (tmp_path / "runs" / "cut" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"iteration": killed_at, "loss": 0.5, "dfc": 0.25})[:25])

    resumed = _cli(["train", *common, "--run-name", "cut", "--resume"], {})
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out

    full_state, full = _head(tmp_path / "runs" / "full" / "checkpoints" / "last.pt")
    cut_state, cut = _head(ckpt)
    assert full_state["iteration"] == cut_state["iteration"] == 12
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), f"{k} differs after resume"
    assert full_state["schedule"] == cut_state["schedule"]
    log = lambda name: [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    full_log, cut_log = log("full"), log("cut")
    assert [r["iteration"] for r in cut_log] == list(range(12))
    for a, b in zip(full_log, cut_log):
        assert a["loss"] == b["loss"] and a["dfc"] == b["dfc"], (a, b)


def test_resume_log_drops_a_torn_last_line_and_stops_at_damage(tmp_path):
    from depthg.training.train import truncate_log

    log = tmp_path / "metrics.jsonl"
    records = [json.dumps({"iteration": i, "loss": 1.0 / (i + 1)}) for i in range(5)]
    log.write_text("".join(r + "\n" for r in records) + records[0][:17])  # killed while writing a 6th record
    truncate_log(log, start=3)
    assert log.read_text() == "".join(r + "\n" for r in records[:3])
    truncate_log(log, start=3)  # a complete log is left as it is
    assert log.read_text() == "".join(r + "\n" for r in records[:3])
    log.write_text(records[0] + "\n{not json\n" + records[1] + "\n")
    with pytest.raises(TrainingError, match=r"metrics\.jsonl line 2 is not a JSON record"):
        truncate_log(log, start=3)


def test_nonfinite_loss_names_iteration_and_term(synthetic_world, tmp_path, monkeypatch):
    import depthg.training.step as step_mod

    real = step_mod.correlation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th iteration's correlation terms (one call per iteration, LHP off)
            out["inter"] = out["inter"] * float("nan")
        return out

    monkeypatch.setattr(step_mod, "correlation_loss", poisoned)
    cfg = _cfg(synthetic_world, "train.iterations=6", "train.checkpoint_every=2")
    with pytest.raises(TrainingError, match=r"iteration 3 in term\(s\) inter"):
        train(cfg, run_name="nan", results_dir=str(tmp_path), progress=False)
    state = checkpoints.load_training_state(tmp_path / "runs" / "nan" / "checkpoints" / "last.pt")
    assert state["iteration"] == 2  # the last good checkpoint survives


def test_resume_refuses_a_different_config(synthetic_world, tmp_path):
    cfg = _cfg(synthetic_world, "train.iterations=2", "train.checkpoint_every=2")
    train(cfg, run_name="r", results_dir=str(tmp_path), progress=False)
    other = cfg.with_overrides(["loss.pos_inter_weight=0.9", "train.iterations=4"])
    with pytest.raises(TrainingError, match="loss.pos_inter_weight"):
        train(other, run_name="r", results_dir=str(tmp_path), resume=True, progress=False)


@pytest.mark.slow
def test_torchrun_two_gloo_processes_hold_identical_weights(synthetic_world, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        str(ROOT / "tests" / "ddp_worker.py"),
        str(synthetic_world),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert w0.keys() == w1.keys() and len(w0) > 0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"{k} differs between ranks"
    init = torch.load(tmp_path / "init.pt")
    assert any(not torch.equal(init[k], w0[k]) for k in init), "training changed nothing"
    saved = checkpoints.load_training_state(tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt")
    assert len(saved["rng"]) == 2  # both ranks' RNG states, for resume
    for k, v in saved["head"].items():
        assert torch.equal(v, w0["head." + k])


def test_periodic_validation_reports_best_beside_last_step_labelled(synthetic_world, tmp_path):
    cfg = _cfg(synthetic_world, "train.iterations=4", "train.val_every=2", "eval.max_images=4")
    result = train_and_evaluate(cfg, run_name="val", results_dir=str(tmp_path), progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics) == {"last_step", "best_on_validation"}
    best = metrics["best_on_validation"]
    assert "test data" in best["label"] and best["after_iterations"] == 2  # the last step is not re-validated
    log = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "validation" in r] == [1]
    assert [r["iteration"] for r in log if "loss" in r] == [0, 3]  # log_every=10: the first and the last


def test_one_device_resolver_for_training_and_preparation():
    from depthg.device import DistInfo, resolve_device
    from depthg.errors import ConfigError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda", DistInfo(rank=1, world=2, local_rank=1))
