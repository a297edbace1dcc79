import dataclasses
import json

import pytest

from depthg.config import Config, FidelityConfig
from depthg.errors import ConfigError
from depthg.presets import load_preset, preset_names


def test_presets_exist_with_reference_values():
    assert set(preset_names()) >= {
        "cocostuff27_vits8",
        "cocostuff27_vitb8",
        "cityscapes_vitb8",
        "potsdam_vits8",
        "synthetic",
    }
    coco = load_preset("cocostuff27_vits8")
    # METHOD.md §7.2, paper_reproduction.sh l.5
    assert coco.loss.neg_inter_weight == 0.7000000000000001 and coco.loss.neg_inter_shift == 0.761
    assert coco.schedule.decay_every_steps == 250 and coco.schedule.depth_loss_decay_factor == 0.6
    assert coco.fidelity == FidelityConfig.all("reference")
    city = load_preset("cityscapes_vitb8")
    assert city.loss.depth_sampling == "random" and city.loss.pointwise is False and city.model.dim == 100
    pots = load_preset("potsdam_vits8")
    assert pots.data.batch_size == 16 and pots.model.n_classes == 3
    assert load_preset("cocostuff27_vitb8").loss.feature_samples == 12
    assert load_preset("synthetic").fidelity.summary == "paper"


def test_unknown_preset_lists_valid():
    with pytest.raises(ConfigError, match="valid presets: .*cocostuff27_vits8"):
        load_preset("coco")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.dfcc'.*depth_feat_weight"):
        load_preset("synthetic", ["loss.dfcc=false"])
    with pytest.raises(ConfigError, match="unknown config key"):
        Config.from_dict({"loss": {"nope": 1}})
    with pytest.raises(ConfigError, match="unknown config section"):
        load_preset("synthetic", {"losses.dfc": False})


def test_overrides_are_typed():
    cfg = load_preset("synthetic", ["loss.dfc=false", "train.iterations=12", "loss.depth_feat_weight=0.5"])
    assert cfg.loss.dfc is False and cfg.train.iterations == 12 and cfg.loss.depth_feat_weight == 0.5
    with pytest.raises(ConfigError, match="not an integer"):
        load_preset("synthetic", ["train.iterations=many"])
    with pytest.raises(ConfigError, match="boolean"):
        load_preset("synthetic", ["loss.dfc=maybe"])
    with pytest.raises(ConfigError, match="depth_sampling"):
        load_preset("synthetic", ["loss.depth_sampling=grid"])


def test_fidelity_switches():
    cfg = load_preset("synthetic", ["fidelity=reference"])
    assert cfg.fidelity.summary == "reference"
    cfg = cfg.with_overrides(["fidelity.fps_coords=paper"])
    assert cfg.fidelity.fps_coords == "paper" and cfg.fidelity.dfc_target == "reference"
    assert cfg.fidelity.summary.startswith("mixed")
    with pytest.raises(ConfigError):
        load_preset("synthetic", ["fidelity=exact"])


def test_json_round_trip(tmp_path):
    cfg = load_preset("cocostuff27_vitb8", ["train.seed=3"])
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert Config.from_json(path) == cfg
    d = json.loads(path.read_text())
    d["model"]["bogus"] = 1
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="model.bogus"):
        Config.from_json(path)


def test_config_is_immutable():
    cfg = load_preset("synthetic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.dfc = False  # type: ignore[misc]
