"""Run folders never silently overwrite each other: names carry the dataset, a folder of another config or of
committed results is refused unless asked (depthg.paths.run_name, claim_run_dir; depthg.training.train)."""

import json

import pytest

from depthg.errors import ConfigError
from depthg.paths import claim_run_dir, committed_files, repo_root, run_name
from depthg.presets import load_preset
from depthg.training.train import run_directory, train


def test_run_names_carry_the_dataset():
    assert run_name("synthetic", "synthetic", 0) == "synthetic-seed0"  # the preset says the dataset
    assert run_name("potsdam", "potsdam_vits8", 1) == "potsdam_vits8-seed1"
    assert run_name("potsdamraw", "potsdam_vits8", 1) == "potsdamraw-potsdam_vits8-seed1"
    assert run_name("directory:/data/my photos", "synthetic", 0) == "directory-data-my-photos-synthetic-seed0"
    assert run_name("potsdamraw", "potsdam_vits8", 0, kind="eval") == "eval-potsdamraw-potsdam_vits8-seed0"
    names = {run_name(d, "potsdam_vits8", 0) for d in ("potsdam", "potsdamraw")}
    assert len(names) == 2


def test_training_run_directory_uses_the_one_naming(tmp_path):
    cfg = load_preset("synthetic", {"data.dataset": "directory:photos", "model.n_classes": 3})
    assert run_directory(cfg, None, str(tmp_path)).name == "directory-photos-synthetic-seed0"
    assert run_directory(cfg, None, str(tmp_path), kind="figures").name == "figures-directory-photos-synthetic-seed0"
    assert run_directory(cfg, "mine", str(tmp_path)).name == "mine"


def test_a_folder_of_another_config_is_refused(tmp_path):
    a = load_preset("synthetic").to_dict()
    b = load_preset("synthetic", {"loss.dfc": False}).to_dict()
    run = tmp_path / "synthetic-seed0"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(a))
    assert claim_run_dir(run, a) == run  # the same experiment: rerun
    with pytest.raises(ConfigError, match=r"another config \(loss\.dfc\).*--overwrite"):
        claim_run_dir(run, b)
    assert claim_run_dir(run, b, resume=True) == run  # resuming: the checkpoint's own compatibility check decides
    assert claim_run_dir(run, b, overwrite=True) == run


def test_train_refuses_a_collision_before_touching_the_folder(tmp_path):
    cfg = load_preset("synthetic", {"train.iterations": 1})
    run = run_directory(cfg, None, str(tmp_path))
    run.mkdir(parents=True)
    other = load_preset("synthetic", {"train.iterations": 2}).to_dict()
    (run / "config.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="train.iterations"):
        train(cfg, results_dir=str(tmp_path), progress=False)
    assert json.loads((run / "config.json").read_text()) == other  # untouched


def test_committed_results_are_not_replaced_unless_asked():
    run = repo_root() / "results" / "runs" / "synthetic-seed0"
    if not committed_files(run):
        pytest.skip("not a git checkout with the committed results")  # e.g. an sdist
    cfg = json.loads((run / "config.json").read_text())
    with pytest.raises(ConfigError, match="committed to the repository"):
        claim_run_dir(run, cfg)
    assert claim_run_dir(run, cfg, overwrite=True) == run
