"""A diverged run keeps a usable checkpoint and resumes with a lower learning rate (issue 15 item 5)."""

from __future__ import annotations

import json

import pytest
import torch

from depthg.errors import TrainingError
from depthg.presets import load_preset
from depthg.training import checkpoints
from depthg.training.train import train


def _cfg(data_dir, *extra):
    return load_preset(
        "synthetic",
        [
            f"data.data_dir={data_dir}",
            "train.threads=1",
            "eval.crf=false",
            "data.batch_size=4",
            "train.checkpoint_every=1",
            "train.log_every=1",
            *extra,
        ],
    )


def test_diverged_run_keeps_the_last_finite_checkpoint_and_resumes_with_a_lower_lr(synthetic_world, tmp_path):
    cfg = _cfg(synthetic_world, "train.iterations=2")
    train(cfg, run_name="d", results_dir=str(tmp_path), progress=False)  # two good iterations at the preset's lr
    ckpt = tmp_path / "runs" / "d" / "checkpoints" / "last.pt"
    good = checkpoints.load_training_state(ckpt)
    assert good["iteration"] == 2
    # continue at lr 1e30: the first such step yields ~1e30 weights (finite), whose loss is not finite
    hot = cfg.with_overrides(["train.iterations=6", "train.lr=1e30"])
    with pytest.raises(TrainingError, match=rf"non-finite .*the last good checkpoint is {ckpt}.*train.lr"):
        train(hot, run_name="d", results_dir=str(tmp_path), resume=True, progress=False)
    kept = checkpoints.load_training_state(ckpt)
    head = torch.cat([v.flatten() for v in kept["head"].values()])
    assert torch.isfinite(head).all() and head.abs().max() < 1e3, "the kept checkpoint holds diverged weights"
    assert kept["iteration"] == 2  # iteration 3's ~1e30 weights gave the non-finite loss: rolled back past them

    calm = cfg.with_overrides(["train.iterations=4", "train.lr=1e-4"])  # as the message recommends
    result = train(calm, run_name="d", results_dir=str(tmp_path), resume=True, progress=False)
    assert result.iterations == 4
    state = checkpoints.load_training_state(ckpt)
    assert state["iteration"] == 4 and state["config"]["train"]["lr"] == 1e-4
    assert state["optimizers"]["head"]["param_groups"][0]["lr"] == 1e-4  # the optimiser really uses the new rate
    resumes = json.loads((tmp_path / "runs" / "d" / "resumes.json").read_text())
    assert [(r["from_iteration"], r["changes"]) for r in resumes] == [
        (2, {"train.lr": [5e-4, 1e30]}),
        (2, {"train.lr": [5e-4, 1e-4]}),
    ]
    prov = json.loads((tmp_path / "runs" / "d" / "provenance.json").read_text())
    assert prov["resume_changes"] == {"train.lr": [5e-4, 1e-4]}


def test_resume_still_refuses_other_changes(synthetic_world, tmp_path):
    cfg = _cfg(synthetic_world, "train.iterations=1")
    train(cfg, run_name="r", results_dir=str(tmp_path), progress=False)
    with pytest.raises(TrainingError, match="loss.neg_samples"):
        train(
            cfg.with_overrides(["train.lr=1e-5", "loss.neg_samples=3"]),
            run_name="r",
            results_dir=str(tmp_path),
            resume=True,
            progress=False,
        )
