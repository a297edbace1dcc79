"""Depth stage: tiny randomly initialised transformers depth models saved to a tmp folder (no download happens)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from depthg.cli.prep import main
from depthg.data import depth_estimation as de
from depthg.data.datasets import source_dataset
from depthg.data.depth_estimation import DEFAULT_MODEL, DepthEstimator, depth_dir, disparity_to_depth, run_depth
from depthg.data.depth_io import read_depth, sidecar_path
from depthg.errors import DataError, WeightsError

transformers = pytest.importorskip("transformers")


def _save_depth_anything(path):
    """Depth Anything (relative: disparity) with a 2-block Dinov2 of width 32: ~70k parameters."""
    bb = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
        out_features=["stage1", "stage2"],
        reshape_hidden_states=False,
    )
    cfg = transformers.DepthAnythingConfig(
        backbone_config=bb,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16],
        reassemble_factors=[2, 1],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    torch.manual_seed(0)
    transformers.DepthAnythingForDepthEstimation(cfg).save_pretrained(path)
    transformers.DPTImageProcessor(
        size={"height": 28, "width": 28},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return str(path)


def _save_zoedepth(path):
    """ZoeDepth (metric) with a 4-block BEiT of width 32."""
    bb = transformers.BeitConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        use_relative_position_bias=True,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    cfg = transformers.ZoeDepthConfig(
        backbone_config=bb,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        bottleneck_features=16,
        num_attractors=[4, 4, 4, 4],
        bin_embedding_dim=8,
        num_relative_features=8,
        bin_configurations=[{"n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0, "name": "nyu"}],
    )
    torch.manual_seed(0)
    transformers.ZoeDepthForDepthEstimation(cfg).save_pretrained(path)
    transformers.ZoeDepthImageProcessor(
        size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=8
    ).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_da(tmp_path_factory):
    return _save_depth_anything(tmp_path_factory.mktemp("tiny_depth_anything"))


class _RampNet(torch.nn.Module):
    """Stands in for the network: output rises from left to right (a disparity: the right side is nearer)."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, pixel_values):
        B, _, h, w = pixel_values.shape
        ramp = torch.linspace(0.0, 5.0, w).expand(B, h, w)
        return transformers.modeling_outputs.DepthEstimatorOutput(predicted_depth=ramp.clone())


# ---- conversion ---------------------------------------------------------------------------------------------------


def test_disparity_to_depth_inverts_order_and_is_bounded():
    disp = torch.tensor([[[0.0, 1.0, 3.0, 9.0]], [[2.0, 2.0, 2.0, 2.0]]])  # [2,1,4]
    depth = disparity_to_depth(disp, eps=0.1)
    assert (depth[0, 0, :-1] > depth[0, 0, 1:]).all()  # larger disparity = nearer = smaller depth
    assert depth[0].max().item() == pytest.approx(10.0) and depth[0].min().item() == pytest.approx(1 / 1.1)
    assert torch.allclose(depth[1], torch.full_like(depth[1], 10.0))  # constant map: n = 0
    # per map: scaling and shifting a disparity (it is affine-invariant) gives the same depth
    assert torch.allclose(disparity_to_depth(3 * disp[:1] + 7), depth[:1])


def test_larger_means_farther_end_to_end(tiny_da):
    est = DepthEstimator(tiny_da, device="cpu")
    assert est.kind == "disparity" and est.units == "relative"
    est.net = _RampNet(est.net.config)
    (depth,) = est.predict([Image.new("RGB", (40, 20))])
    assert depth.shape == (20, 40) and depth.dtype == np.float32
    assert (depth[:, 0] > depth[:, -1]).all()  # left: lowest disparity = farthest
    assert depth.max() <= 10.0 + 1e-4 and depth.min() >= 1 / 1.1 - 1e-4

    metric = DepthEstimator(tiny_da, device="cpu", output_kind="metric")
    metric.net = _RampNet(metric.net.config)
    (d,) = metric.predict([Image.new("RGB", (40, 20))])
    assert metric.units == "metres" and d.min() >= 0 and (d[:, 0] < d[:, -1]).all()  # metric output kept as is


def test_mixed_sizes_in_one_batch(tiny_da):
    est = DepthEstimator(tiny_da, device="cpu")
    sizes = [(24, 32), (32, 24), (24, 32), (17, 9)]
    out = est.predict([Image.new("RGB", (w, h), (h, w, 0)) for h, w in sizes])
    assert [o.shape for o in out] == sizes and all(np.isfinite(o).all() for o in out)


def test_zoedepth_is_metric_with_flip_averaging(tmp_path):
    est = DepthEstimator(_save_zoedepth(tmp_path / "zoe"), device="cpu")
    assert est.kind == "metric" and est.flip_tta and est.units == "metres"
    (d,) = est.predict([Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), np.uint8))])
    assert d.shape == (24, 40) and (d >= 0).all()


# ---- the stage ----------------------------------------------------------------------------------------------------


def _source_files(root):
    """Files of a dataset folder outside its derived/ subfolder (where the stages write)."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "derived" not in p.parts}


def test_depth_stage_files_sidecar_and_idempotence(tiny_da, cityscapes_tree, monkeypatch, capsys):
    data = cityscapes_tree.data_dir
    source_before = _source_files(data / "cityscapes")
    assert (
        main(
            [
                "depth",
                "--dataset",
                "cityscapes",
                "--data-dir",
                str(data),
                "--model",
                tiny_da,
                "--device",
                "cpu",
                "--batch-size",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "depth train: 4 computed" in capsys.readouterr().out
    assert _source_files(data / "cityscapes") == source_before  # never writes into the source tree

    for split, keys in cityscapes_tree.keys.items():
        for key in keys:  # keys hold the city folder: <city>/<stem>
            png = depth_dir("cityscapes", data) / split / f"{key}.png"
            depth, meta = read_depth(png, with_meta=True)
            assert depth.shape == cityscapes_tree.raw[split][key]["image"].shape[:2]
            assert meta["source"] == tiny_da and meta["units"] == "relative" and meta["larger_is_farther"]
            assert meta["output_kind"] == "disparity" and meta["conversion"] == "depth = 1 / (n + eps)"
            assert meta["eps"] == 0.1 and meta["key"] == key and "min-max" in meta["normalisation"]
            assert depth.max() <= 10.0 + 1e-3 and depth.min() >= 1 / 1.1 - 1e-3
    item = source_dataset("cityscapes", data, "val")[0]  # the datasets read ours first
    assert item["depth_bits"] == 16

    def no_model(*a, **k):
        raise AssertionError("a finished stage must not load the model")

    monkeypatch.setattr(de, "load_depth_model", no_model)
    res = run_depth("cityscapes", data, ["train", "val"], model=tiny_da, device="cpu", progress=False)
    assert [(s, r.processed, r.skipped) for s, r in res] == [("train", 0, 4), ("val", 0, 2)]
    with pytest.raises(DataError, match="eps: 0.1 -> 0.2.*--overwrite"):
        run_depth("cityscapes", data, ["train"], model=tiny_da, eps=0.2, progress=False)


def test_depth_stage_sharded_then_resumed(tiny_da, coco_tree):
    data = coco_tree.data_dir
    r1 = run_depth("cocostuff27", data, ["train"], model=tiny_da, device="cpu", rank=1, world=2, progress=False)
    assert r1[0][1].processed == 1  # items 1 of 0..2
    out = depth_dir("cocostuff27", data) / "train"
    assert sorted(p.stem for p in out.glob("*.png")) == [coco_tree.keys["train"][1]]
    r0 = run_depth("cocostuff27", data, ["train"], model=tiny_da, device="cpu", rank=0, world=2, progress=False)
    assert r0[0][1].processed == 2
    assert all(sidecar_path(out / f"{k}.png").is_file() for k in coco_tree.keys["train"])
    meta = json.loads((depth_dir("cocostuff27", data) / "manifest.json").read_text())
    assert meta["runs"]["train"]["params"] == {"model": tiny_da, "output_kind": "auto", "eps": 0.1}


# ---- errors -------------------------------------------------------------------------------------------------------


def test_offline_without_weights_names_the_model_and_the_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    with pytest.raises(WeightsError) as err:
        DepthEstimator(DEFAULT_MODEL, device="cpu")
    msg = str(err.value)
    assert DEFAULT_MODEL in msg and "--model <dir>" in msg and "HF_HUB_OFFLINE=1" in msg
    assert f"hf download {DEFAULT_MODEL}" in msg and "-p depth_model <dir>" in msg and "huggingface-cli" not in msg


def test_no_network_fails_at_once_without_hf_hub_offline(monkeypatch, tmp_path):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is unreachable
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="hf download"):
        DepthEstimator(DEFAULT_MODEL, device="cpu")
    assert time.perf_counter() - t0 < 20, "no network must not mean minutes of retries"


def test_cli_offline_error_is_one_line(monkeypatch, tmp_path, coco_tree, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    assert (
        main(
            [
                "depth",
                "--dataset",
                "cocostuff27",
                "--data-dir",
                str(coco_tree.data_dir),
                "--model",
                "Intel/zoedepth-nyu-kitti",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load depth model 'Intel/zoedepth-nyu-kitti'") and "Traceback" not in err
    assert err.count("\n") == 1


def test_missing_model_directory(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        DepthEstimator(str(tmp_path / "no_such_model"), device="cpu")


# ---- the paper's depth model, its 8-bit encoding and the model record (issue 8 item 4) -------------------------


def test_the_papers_model_is_zoed_m12_n_nyu_and_reference_presets_ask_for_it():
    from depthg.presets import load_preset

    assert de.PAPER_MODEL == "Intel/zoedepth-nyu"  # ZoeD_M12_N; Intel/zoedepth-nyu-kitti is ZoeD_NK
    assert load_preset("cocostuff27_vits8").data.depth_model == "Intel/zoedepth-nyu"
    assert load_preset("synthetic").data.depth_model == ""  # paper fidelity accepts any estimator


def test_release8_encoding_stores_the_releases_8bit_maps_with_the_model(tmp_path, coco_tree):
    zoe = _save_zoedepth(tmp_path / "zoe")
    data = coco_tree.data_dir
    run_depth("cocostuff27", data, ["val"], model=zoe, device="cpu", encoding="release8", progress=False)
    est = DepthEstimator(zoe, device="cpu")
    src = source_dataset("cocostuff27", data, "val", with_depth=False)
    preds = est.predict([src[i]["image"] for i in range(len(src))])  # one batch, as the stage ran them
    for key, pred in zip(src.keys(), preds):
        png = depth_dir("cocostuff27", data) / "val" / f"{key}.png"
        norm = (pred - pred.min()) / (pred.max() - pred.min())  # DG generate_depth.py:232-240
        expected = np.floor(norm.astype(np.float32) * np.float32(255)).astype(np.uint8)
        with Image.open(png) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), expected)
        depth, meta = read_depth(png, with_meta=True)
        assert meta["bits"] == 8 and meta["model"] == zoe and meta["encoding"] == "release8"
    manifest = json.loads((depth_dir("cocostuff27", data) / "manifest.json").read_text())
    assert "release8" in json.dumps(manifest) and zoe in json.dumps(manifest)


def _train_cfg(data_dir, depth_model, allow=False):
    from depthg.presets import load_preset

    return load_preset(
        "synthetic",
        {
            "data.dataset": "potsdam",
            "data.data_dir": str(data_dir),
            "data.res": 16,
            "data.knn_res": 16,
            "data.crop_type": "none",
            "model.n_classes": 3,
            "data.depth_model": depth_model,
            "data.allow_other_depth_model": allow,
        },
    )


def test_training_refuses_depth_of_another_model_and_prefers_the_released_maps(tiny_da, potsdam_tree):
    import fake_data

    from depthg.data.pairs import build_train_set

    data = potsdam_tree.data_dir
    fake_data.make_knn(data, "potsdam", "train", 3, backbone="vit_tiny_patch8", res=16, crop="none")
    # only the authors' released maps (8-bit, ZoeD_M12_N): fine for the release's model, refused for another
    assert build_train_set(_train_cfg(data, "Intel/zoedepth-nyu")).source[0]["depth_model"] == "Intel/zoedepth-nyu"
    with pytest.raises(DataError, match=r"made by 'Intel/zoedepth-nyu'.*data.depth_model=.*allow_other_depth_model"):
        build_train_set(_train_cfg(data, tiny_da))
    with pytest.warns(UserWarning, match="allowed"):
        build_train_set(_train_cfg(data, tiny_da, allow=True))
    # ours, made by another model, beside the released ones: the release's model still reads the released maps
    run_depth("potsdam", data, ["train"], model=tiny_da, device="cpu", progress=False)
    assert build_train_set(_train_cfg(data, tiny_da)).source[0]["depth_model"] == tiny_da
    assert build_train_set(_train_cfg(data, "Intel/zoedepth-nyu")).source[0]["depth_model"] == "Intel/zoedepth-nyu"
    assert build_train_set(_train_cfg(data, "")).source[0]["depth_model"] == tiny_da  # ours first by default


def test_five_crops_carry_their_source_maps_model(tiny_da, coco_tree):
    from depthg.data.datasets import five_crop_dataset
    from depthg.data.fivecrop import run_fivecrop

    data = coco_tree.data_dir
    run_depth("cocostuff27", data, ["train"], model=tiny_da, device="cpu", progress=False)
    run_fivecrop("cocostuff27", data, ["train"], progress=False)
    assert five_crop_dataset("cocostuff27", data, "train")[0]["depth_model"] == tiny_da
