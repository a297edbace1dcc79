"""Reference presets run the authors' experiment (issue 8): precision, checkpoint selection, five-crop encoding,
partial batches and the 3D-LHP wiring."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from depthg.data.datasets import five_crop_dataset
from depthg.data.fivecrop import run_fivecrop
from depthg.evaluation.experiment import train_and_evaluate
from depthg.model.backbone import bf16_feature_gap
from depthg.paths import bundled_weights_path
from depthg.presets import load_preset
from depthg.training import checkpoints
from depthg.training.distributed import ResumableBatchSampler
from depthg.training.rng import seed_everything
from depthg.training.train import build_training, train


def _cfg(data_dir, *extra):
    return load_preset(
        "synthetic", [f"data.data_dir={data_dir}", "train.threads=1", "eval.crf=false", "data.batch_size=4", *extra]
    )


# ---- item 2: precision ------------------------------------------------------------------------------------------


def test_reference_presets_are_fp32_without_tf32():
    for name in ("cocostuff27_vits8", "cocostuff27_vitb8", "cityscapes_vitb8", "potsdam_vits8"):
        cfg = load_preset(name)
        assert cfg.train.bf16 is False and cfg.train.tf32 is False, name


@pytest.mark.parametrize("bf16", [False, True])
def test_train_bf16_governs_the_backbone(bf16):
    cfg = load_preset("synthetic", [f"train.bf16={bf16}"])
    model, _, _ = build_training(cfg, torch.device("cpu"))
    assert model.backbone.precision("cuda") == ("bf16" if bf16 else "fp32")
    assert model.backbone.precision("cpu") == "fp32"  # CPU training stays fp32 whatever the flag


@pytest.mark.slow
def test_bf16_feature_gap_is_measured_on_cpu():
    gap = bf16_feature_gap("vit_tiny_patch8", res=32, n_images=2)
    assert 0.9 < gap["cosine_min"] <= gap["cosine_mean"] < 1.0, gap  # bf16 really ran: the features differ
    assert 0 < gap["max_abs"] and 0 < gap["max_abs_relative"] < 0.1, gap


# ---- item 3: checkpoint selection as the release ---------------------------------------------------------------


def test_reference_presets_select_checkpoints_as_the_release():
    assert load_preset("cocostuff27_vits8").train.select == "release"
    assert load_preset("cocostuff27_vits8").train.val_every == 100
    assert load_preset("cocostuff27_vitb8").train.val_every == 50  # val_freq 50 (METHOD §7.2)
    assert load_preset("cityscapes_vitb8").train.select_metric == "cluster/mIoU"
    assert load_preset("potsdam_vits8").train.select_metric == "cluster/accuracy"
    assert load_preset("synthetic").train.select == "last"


@pytest.mark.slow
def test_release_selection_keeps_top2_and_reports_them_beside_the_last_step(synthetic_world, tmp_path):
    cfg = _cfg(
        synthetic_world,
        "train.iterations=6",
        "train.val_every=2",
        "train.select=release",
        "eval.max_images=4",
        "eval.crf=true",
        "eval.crf_workers=1",
    )
    result = train_and_evaluate(cfg, run_name="sel", results_dir=str(tmp_path), progress=False)
    run = result.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"last_step", "best_on_validation", "release_selected"}
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["iteration"] + 1, r["validation"]["cluster"]["mIoU"]) for r in log if "validation" in r]
    assert [it for it, _ in vals] == [2, 4, 6], "every val_every batches, the final batch included"
    ranked = sorted(vals, key=lambda v: -v[1])  # stable: ties keep the earlier checkpoint
    sel = metrics["release_selected"]
    assert sel["after_iterations"] == ranked[0][0] and "evaluation split" in sel["label"]
    assert sel["checkpoint"] == f"checkpoints/selected-it{ranked[0][0]}.pt" and (run / sel["checkpoint"]).is_file()
    assert "cluster_crf" in sel["metrics"] and "cluster_crf" in metrics["last_step"]
    kept = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    assert kept == sorted(["last.pt"] + [f"selected-it{it}.pt" for it, _ in ranked[:2]])
    # the selected checkpoint holds that iteration's weights; the model returned to the last step's
    state = checkpoints.load_training_state(run / sel["checkpoint"])
    assert state["iteration"] == ranked[0][0]
    last = checkpoints.load_training_state(run / "checkpoints" / "last.pt")
    for k, v in last["head"].items():
        assert torch.equal(result.model.head.state_dict()[k], v)
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["precision"] == "fp32"
    assert prov["backbone_checkpoint"]["name"] == bundled_weights_path("vit_tiny_patch8").name  # the preset's weights


@pytest.mark.slow
def test_last_step_runs_have_no_release_selected_key(synthetic_world, tmp_path):
    cfg = _cfg(synthetic_world, "train.iterations=2", "train.val_every=1", "eval.max_images=4")
    result = train_and_evaluate(cfg, run_name="last", results_dir=str(tmp_path), progress=False)
    assert "release_selected" not in json.loads((result.run_dir / "metrics.json").read_text())
    assert not list((result.run_dir / "checkpoints").glob("selected-*"))


# ---- item 6: five-crop encoding and partial batches --------------------------------------------------------------


def test_reference_five_crops_are_jpeg_quality_75(coco_tree):
    run_fivecrop("cocostuff27", coco_tree.data_dir, ["train"], fidelity="reference", progress=False)
    ds = five_crop_dataset("cocostuff27", coco_tree.data_dir, "train")
    files = [ds.image_path(i) for i in range(len(ds))]
    assert len(files) == 15 and all(p.suffix == ".jpg" for p in files)
    import io

    probe = io.BytesIO()
    Image.new("RGB", (8, 8)).save(probe, format="JPEG", quality=75)
    with Image.open(files[0]) as im, Image.open(probe) as q75:
        assert im.format == "JPEG" and im.quantization == q75.quantization, "quality 75 quantisation tables"
        assert ds[0]["image"].size == im.size


def test_paper_five_crops_stay_png(coco_tree):
    run_fivecrop("cocostuff27", coco_tree.data_dir, ["train"], progress=False)
    ds = five_crop_dataset("cocostuff27", coco_tree.data_dir, "train")
    assert all(ds.image_path(i).suffix == ".png" for i in range(len(ds)))


def _epoch(sampler, n_batches):
    return [b for _, b in zip(range(n_batches), iter(sampler))]


def test_kept_partial_batch_is_present_resumable_and_rank_aware():
    n, B = 10, 4
    keep = ResumableBatchSampler(n, B, seed=3, start=0, total=6, drop_last=False)
    assert keep.batches_per_epoch == 3
    batches = list(keep)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2], "the last partial batch of each epoch is kept"
    assert sorted(i for b in batches[:3] for i, _ in b) == list(range(n)) and {e for _, e in batches[3][:1]} == {1}
    assert list(ResumableBatchSampler(n, B, seed=3, start=2, total=6, drop_last=False)) == batches[2:]
    ranks = [
        list(ResumableBatchSampler(n, B, seed=3, start=0, total=6, rank=r, world=2, drop_last=False)) for r in range(2)
    ]
    for it in range(6):
        assert sorted(ranks[0][it] + ranks[1][it]) == sorted(batches[it])
        assert not set(ranks[0][it]) & set(ranks[1][it])
    drop = list(ResumableBatchSampler(n, B, seed=3, start=0, total=4))
    assert [len(b) for b in drop] == [4, 4, 4, 4], "paper fidelity drops it"


@pytest.mark.slow
def test_reference_training_sees_the_partial_batch(synthetic_world, tmp_path, monkeypatch):
    sizes = []
    from depthg.training import train as train_mod

    real = train_mod.iteration
    monkeypatch.setattr(
        train_mod, "iteration", lambda run, batch: (sizes.append(batch["img"].shape[0]), real(run, batch))[1]
    )
    # 64 training items, batch 12: 5 full batches and a partial one of 4 per epoch
    cfg = _cfg(synthetic_world, "train.iterations=6", "data.batch_size=12", "fidelity.partial_batch=reference")
    train(cfg, run_name="partial", results_dir=str(tmp_path), progress=False)
    assert sizes == [12] * 5 + [4]


# ---- item 7: 3D-LHP wiring ---------------------------------------------------------------------------------------


def _lhp_cfg(data_dir, wiring, *extra):
    return _cfg(
        data_dir,
        "loss.lhp=true",
        "loss.depth_feat_weight=0.2",
        "train.iterations=3",
        f"fidelity.lhp_wiring={wiring}",
        *extra,
    )


@pytest.mark.slow
@pytest.mark.parametrize("wiring", ["reference", "paper"])
def test_reference_lhp_projection_stays_at_its_initialisation(synthetic_world, tmp_path, wiring):
    cfg = _lhp_cfg(synthetic_world, wiring)
    seed_everything(cfg.train.seed)  # as train() does before building the model
    _, step, optimizers = build_training(cfg, torch.device("cpu"))
    init = {k: v.clone() for k, v in step.lhp_projection.state_dict().items()}
    in_optim = {id(p) for o in optimizers.values() for g in o.param_groups for p in g["params"]}
    assert any(id(p) in in_optim for p in step.lhp_projection.parameters()) == (wiring == "paper")
    result = train(cfg, run_name=f"lhp-{wiring}", results_dir=str(tmp_path), progress=False)
    saved = checkpoints.load_training_state(result.checkpoint)["lhp_projection"]
    same = all(torch.equal(saved[k], init[k]) for k in init)
    assert same == (wiring == "reference"), "reference: unchanged; paper: trained"


@pytest.mark.slow
def test_reference_lhp_draws_its_own_coords_and_counts_only_with_dfc(tmp_path, monkeypatch):
    from depthg.training import step as step_mod

    calls = []
    real = step_mod.choose_coords
    monkeypatch.setattr(step_mod, "choose_coords", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    B, C, h = 2, 192, 14
    g = torch.Generator().manual_seed(0)
    f, f_pos = torch.randn(B, C, h, h, generator=g), torch.randn(B, C, h, h, generator=g)
    depth = torch.rand(B, 1, 112, 112, generator=g) + 0.1
    label = torch.zeros(B, 112, 112, dtype=torch.long)
    for wiring, dfc, n_calls, has_lhp in (
        ("reference", True, 4, True),
        ("paper", True, 2, True),
        ("reference", False, 2, False),
        ("paper", False, 2, True),
    ):
        cfg = _lhp_cfg(tmp_path, wiring, f"loss.dfc={dfc}")  # the step needs no data
        _, step, _ = build_training(cfg, torch.device("cpu"))
        calls.clear()
        out = step(f, f_pos, depth, depth, label, samples=5, dfc_weight=0.2, dfc_shift=0.0, generator=g)
        assert len(calls) == n_calls and ("lhp" in out) == has_lhp, (wiring, dfc)
    assert np.isfinite(out["loss"].item())
