"""DINO pretraining of the synthetic backbone (depthg.training.pretrain): determinism, exact resume, bundled file."""

import json

import numpy as np
import pytest
import torch

from depthg.errors import ConfigError, TrainingError
from depthg.files import file_sha256
from depthg.model.backbone import DinoBackbone
from depthg.paths import bundled_weights_path
from depthg.training.dino import DinoLoss, PatchLoss
from depthg.training.pretrain import (
    PretrainConfig,
    config_from_overrides,
    export_checkpoint,
    pretrain,
    read_manifest,
    schedules,
)

TINY = dict(
    n_images=6, res=32, global_px=32, local_px=16, n_local=2, iterations=4, batch_size=3, out_dim=32, patch_weight=1.0
)


def _run(tmp_path, name, **kw):
    torch.set_num_threads(1)
    return pretrain(PretrainConfig(**TINY), tmp_path / f"{name}.safetensors", progress=False, estimate=False, **kw)


@pytest.mark.slow
def test_short_run_is_deterministic_and_resumes_exactly(tmp_path):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert file_sha256(a) == file_sha256(b), "two runs with the same parameters must give the same bytes"
    man = read_manifest(a)
    assert man["sha256"] == file_sha256(a) and man["params"]["threads"] == 1
    assert len(man["loss_curve"]) == TINY["iterations"] and np.isfinite(man["final_loss"])
    assert man["world"]["split"] == "train" and man["world"]["indices"] == [0, TINY["n_images"] - 1]
    assert man["regenerate"].startswith("python -m depthg prep pretrain --threads 1")
    # stopped after 2 of 4 iterations (weights of iteration 2, checkpoint kept), then resumed: the same bytes as
    # the uninterrupted run, and the checkpoint exported gives the stopped run's bytes
    c = _run(tmp_path, "c", stop_at=2)
    half = read_manifest(c)
    assert not half["complete"] and half["iterations_done"] == 2 and half["regenerate"].endswith("--stop-at 2")
    assert half["sha256"] != man["sha256"] and (tmp_path / "c.safetensors.ckpt").is_file()
    exported = export_checkpoint(tmp_path / "c.safetensors.ckpt", tmp_path / "e.safetensors")
    assert file_sha256(exported) == half["sha256"]
    c = _run(tmp_path, "c")
    assert file_sha256(c) == file_sha256(a) and read_manifest(c)["complete"]
    assert read_manifest(c)["loss_curve"] == man["loss_curve"]
    assert not (tmp_path / "c.safetensors.ckpt").exists(), "the checkpoint is removed once the weights exist"
    # the weights load into the backbone and change its features
    feats = DinoBackbone("vit_tiny_patch8", a)(torch.zeros(1, 3, 32, 32), attention=False)[0]
    rand = DinoBackbone("vit_tiny_patch8", "random")(torch.zeros(1, 3, 32, 32), attention=False)[0]
    assert feats.shape == rand.shape and not torch.equal(feats, rand)


@pytest.mark.slow
def test_resume_with_other_parameters_is_refused(tmp_path):
    _run(tmp_path, "d", stop_at=2)
    torch.set_num_threads(1)
    with pytest.raises(TrainingError, match="other parameters"):
        pretrain(PretrainConfig(**{**TINY, "lr": 1e-3}), tmp_path / "d.safetensors", progress=False, estimate=False)


def test_schedules_shapes_and_ends():
    cfg = PretrainConfig(iterations=100)
    s = schedules(cfg)
    assert all(len(v) == 100 for v in s.values())
    assert s["lr"][0] == 0 and s["lr"].max() == pytest.approx(cfg.lr) and s["lr"][-1] == pytest.approx(cfg.min_lr)
    assert s["momentum"][0] == pytest.approx(cfg.momentum[0]) and s["momentum"][-1] == pytest.approx(1.0)
    assert np.all(np.diff(s["momentum"]) >= 0) and np.all(np.diff(s["teacher_temp"]) >= 0)
    assert s["wd"][-1] == pytest.approx(cfg.weight_decay[1])


def test_dino_loss_centres_and_never_pairs_a_view_with_itself():
    loss = DinoLoss(4, center_m=0.5)
    t = torch.tensor([[[5.0, 0, 0, 0]]]).expand(2, 1, 4)  # both teacher views pick prototype 0
    s_good = torch.tensor([[[5.0, 0, 0, 0]]]).expand(3, 1, 4) * 10
    s_bad = torch.tensor([[[0, 5.0, 0, 0]]]).expand(3, 1, 4) * 10
    assert loss(s_good, t, 0.1) < loss(s_bad, t, 0.1)
    assert torch.allclose(loss.center, torch.tensor([[3.75, 0, 0, 0]]))  # 0.5 * (0.5 * 0 + 0.5 * 5) + 0.5 * 5
    # view 0 of the student is the teacher's view 0: changing only it moves the loss through pair (1, 0) alone
    ref = DinoLoss(4)(s_good, t, 0.1)
    s2 = s_good.clone()
    s2[0] = s_bad[0]
    assert DinoLoss(4)(s2, t, 0.1) > ref
    p = PatchLoss(4)
    mask = torch.tensor([[True, False]])
    st, tt = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    st[0, 1, 0] = 100.0  # an unmasked patch: no effect
    assert p(st, tt, mask, 0.1) == pytest.approx(np.log(4), rel=1e-5)


def test_overrides():
    cfg = config_from_overrides(["iterations=7", "global_scale=0.5,1", "lr=0.002"])
    assert cfg.iterations == 7 and cfg.global_scale == (0.5, 1.0) and cfg.lr == 0.002
    with pytest.raises(ConfigError, match="iteration"):
        config_from_overrides(["iteration=7"])
    with pytest.raises(ConfigError, match="not a int"):
        config_from_overrides(["iterations=seven"])


def test_bundled_weights_match_their_manifest():
    path = bundled_weights_path("vit_tiny_patch8")
    assert path.is_file(), f"{path} is part of the package; regenerate with `python -m depthg prep pretrain`"
    man = json.loads(path.with_suffix(".json").read_text())
    assert man["sha256"] == file_sha256(path) and man["size_bytes"] == path.stat().st_size <= 20 * 2**20
    assert man["world"]["split"] == "train" and man["params"]["threads"] >= 1
    net = DinoBackbone("vit_tiny_patch8", "bundled")
    assert net.weights_source.startswith(f"bundled:{path.name} sha256:{man['sha256'][:12]}")


@pytest.mark.slow
def test_a_resume_on_another_device_is_refused_and_the_command_names_the_device(tmp_path):
    """Off the CPU the device is part of the parameters (float sums differ), so a GPU checkpoint does not resume on
    the CPU; the manifest's command names it. The CPU run records no device, as the bundled weights' manifest."""
    from depthg.training.pretrain import _command

    _run(tmp_path, "g", stop_at=2)
    ckpt = tmp_path / "g.safetensors.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert "device" not in state["params"]
    state["params"]["device"] = "cuda"  # as a GPU run writes it
    torch.save(state, ckpt)
    with pytest.raises(TrainingError, match="other parameters.*'device': \\('cuda', None\\)"):
        _run(tmp_path, "g")
    cmd = _command(PretrainConfig(**TINY), tmp_path / "g.safetensors", 1, "cuda")
    assert cmd.startswith("python -m depthg prep pretrain --threads 1 --device cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        pretrain(PretrainConfig(**TINY), tmp_path / "h.safetensors", progress=False, device="cuda")
