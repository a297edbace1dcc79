"""Bad input is one clear line (exit 2), never a traceback (issue 15 item 6): config values out of range, checked
when the config is resolved, and damaged files."""

from __future__ import annotations

import dataclasses
import time

import pytest

from depthg.cli.main import main
from depthg.config import RANGES, Config, numeric_fields

# (argv, the key and value the message must name, the range it must state)
CASES = [
    (["train", "train.checkpoint_every=0"], "train.checkpoint_every=0", ">= 1"),
    (["train", "train.log_every=0"], "train.log_every=0", ">= 1"),
    (["train", "train.lr=-1"], "train.lr=-1.0", ">= 0"),
    (["train", "train.lr=nan"], "train.lr=nan", "finite number >= 0"),
    (["train", "train.probe_lr=inf"], "train.probe_lr=inf", "finite number > 0"),
    (["train", "data.num_workers=-1"], "data.num_workers=-1", ">= 0"),
    (["train", "train.threads=-1"], "train.threads=-1", ">= 0"),
    (["train", "eval.batch_size=0"], "eval.batch_size=0", ">= 1"),
    (["train", "eval.crf_workers=-1"], "eval.crf_workers=-1", ">= 0"),
    (["train", "eval.res=0"], "eval.res=0", ">= 8"),
    (["train", "eval.crf_timeout=0"], "eval.crf_timeout=0.0", "> 0"),
    (["train", "data.crop_ratio=1.5"], "data.crop_ratio=1.5", "in (0, 1]"),
    (["train", "loss.feature_samples=1000"], "loss.feature_samples=1000", "in [1, 64]"),
    (["train", "loss.pos_inter_weight=nan"], "loss.pos_inter_weight=nan", "finite number"),
    (["train", "train.seed=-1"], "train.seed=-1", ">= 0"),
    (["presets", "synthetic", "model.dim=0"], "model.dim=0", ">= 1"),
    (["prep", "synthetic", "--res", "2"], "--res=2", ">= 16"),
    (["prep", "synthetic", "--n-val", "0"], "--n-val=0", ">= 1"),
]


@pytest.mark.parametrize("argv,named,valid", CASES, ids=[c[1] for c in CASES])
def test_out_of_range_values_are_one_line_before_any_work(argv, named, valid, tmp_path, capsys):
    t0 = time.time()
    rc = main(
        [*argv, "--results-dir", str(tmp_path)]
        if argv[0] == "train"
        else [*argv, "--data-dir", str(tmp_path)]
        if argv[0] == "prep"
        else argv
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"{named} is out of range" in err and valid in err, err
    assert time.time() - t0 < 5, "refused only after starting work"


def test_every_numeric_field_has_a_range():
    """The table covers every int field (floats without a bound still must be finite)."""
    ints = [k for k, v in numeric_fields(Config()).items() if isinstance(v, int)]
    assert [k for k in ints if k not in RANGES] == []
    assert set(RANGES) <= set(numeric_fields(Config())), "a range for a field that does not exist"


def test_defaults_and_bounds_are_valid():
    cfg = Config()
    for key, rule in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        assert rule.holds(value), (key, value)
        if rule.low is not None and not rule.low_open:  # the bound itself is accepted
            edge = type(value)(rule.low)
            dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: edge})})


# ---- damaged files and full disks -----------------------------------------------------------------------------

from test_locks import trained  # noqa: E402,F401  (a one-iteration checkpoint on the synthetic world)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda s: s.pop("head"), "lacks or mangles head"),
        (lambda s: s.__setitem__("rng", "x"), "lacks or mangles rng"),
        (
            lambda s: s["head"].__setitem__("cluster1.0.weight", __import__("torch").zeros(3, 3, 1, 1)),
            "does not fit the model",
        ),
        (lambda s: s["linear_probe"].pop("bias"), "does not fit the model"),
    ],
    ids=["missing head", "mangled rng", "wrong shape", "missing tensor"],
)
def test_damaged_training_checkpoint_is_one_line(trained, tmp_path, capsys, damage, message):  # noqa: F811
    import torch

    state = torch.load(trained, weights_only=True)
    damage(state)
    bad = tmp_path / "damaged.pt"
    torch.save(state, bad)
    rc = main(["eval", str(bad), "--results-dir", str(tmp_path), "eval.crf=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad) in err[0] and message in err[0], err


def test_full_disk_while_training_is_one_line(synthetic_world, tmp_path, capsys, monkeypatch):
    import depthg.training.checkpoints as ck

    def full(obj, path, *a, **k):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ck.torch, "save", full)
    rc = main(
        [
            "train",
            "--preset",
            "synthetic",
            f"data.data_dir={synthetic_world}",
            "train.iterations=1",
            "train.threads=1",
            "--results-dir",
            str(tmp_path),
            "--no-eval",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0], err
