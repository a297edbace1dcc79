"""Preparation stages: manifests, skip-finished, refusal, sharding, the five-crop stage and the prep CLI."""

from __future__ import annotations

import json

import fake_data
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from depthg.cli.prep import main
from depthg.data.datasets import five_crop_dataset, source_dataset
from depthg.data.depth_io import read_depth
from depthg.data.fivecrop import crop_paths, five_crop, five_crop_boxes, five_crop_dir, write_item_crops
from depthg.data.stage import record_run, resolve_rank, run_stage, shard
from depthg.errors import ConfigError, DataError

# ---- sharding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_item_once(n, world):
    seen = [i for r in range(world) for i in shard(n, r, world)]
    assert sorted(seen) == list(range(n))
    assert all(i % world == r for r in range(world) for i in shard(n, r, world))


def test_resolve_rank_from_args_and_torchrun_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (2, 4)
    assert resolve_rank(1, 3) == (1, 3)  # explicit flags win over the environment
    with pytest.raises(ConfigError, match="--rank 3 / --world 3"):
        resolve_rank(3, 3)


# ---- the stage runner ----------------------------------------------------------------------------------------------


def _toy_stage(tmp_path, params, *, overwrite=False, rank=0, world=1, n=6):
    """A stage whose item i writes out/<i>.txt; returns (result, items processed)."""
    out = tmp_path / "stage"
    calls = []

    def process(batch):
        calls.extend(batch)
        for i in batch:
            (out / f"{i}.txt").write_text(json.dumps(params))

    res = run_stage(
        out,
        "toy",
        "train",
        params,
        n,
        done=lambda i: (out / f"{i}.txt").is_file(),
        remove=lambda i: (out / f"{i}.txt").unlink(missing_ok=True),
        process=process,
        overwrite=overwrite,
        rank=rank,
        world=world,
        batch_size=4,
        progress=False,
    )
    return res, calls


def test_manifest_skip_finished_and_refusal(tmp_path):
    res, calls = _toy_stage(tmp_path, {"a": 1, "t": (1, 2)})
    assert (res.processed, res.skipped, sorted(calls)) == (6, 0, list(range(6)))
    manifest = json.loads((tmp_path / "stage" / "manifest.json").read_text())
    assert manifest["stage"] == "toy"
    assert manifest["runs"]["train"]["params"] == {"a": 1, "t": [1, 2]}
    assert "depthg_version" in manifest["runs"]["train"]

    (tmp_path / "stage" / "3.txt").unlink()  # an interrupted run: only the missing item is redone
    res, calls = _toy_stage(tmp_path, {"a": 1, "t": (1, 2)})
    assert (res.processed, res.skipped, calls) == (1, 5, [3])
    res, calls = _toy_stage(tmp_path, {"a": 1, "t": [1, 2]})  # tuple == list after the JSON round trip
    assert (res.processed, calls) == (0, [])

    with pytest.raises(DataError, match=r"a: 1 -> 2.*--overwrite"):
        _toy_stage(tmp_path, {"a": 2, "t": [1, 2]})
    res, calls = _toy_stage(tmp_path, {"a": 2, "t": [1, 2]}, overwrite=True)
    assert res.processed == 6 and json.loads((tmp_path / "stage" / "0.txt").read_text())["a"] == 2


def test_outputs_without_manifest_entry_are_redone(tmp_path):
    (tmp_path / "stage").mkdir()
    for i in range(6):
        (tmp_path / "stage" / f"{i}.txt").write_text("unknown origin")
    res, _ = _toy_stage(tmp_path, {"a": 1})
    assert res.processed == 6


def test_overwrite_removes_old_outputs_before_recording(tmp_path):
    """An --overwrite run that dies before an item is redone must not leave that item's old output as 'done'."""
    _toy_stage(tmp_path, {"a": 1})
    out = tmp_path / "stage"

    def die(batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(
            out,
            "toy",
            "train",
            {"a": 2},
            6,
            done=lambda i: (out / f"{i}.txt").is_file(),
            remove=lambda i: (out / f"{i}.txt").unlink(missing_ok=True),
            process=die,
            overwrite=True,
            progress=False,
        )
    res, calls = _toy_stage(tmp_path, {"a": 2})
    assert res.processed == 6


def test_sharded_stage_processes_each_item_once(tmp_path):
    done = []
    for rank in range(3):
        res, calls = _toy_stage(tmp_path, {"a": 1}, rank=rank, world=3, n=8)
        assert res.total == len(range(rank, 8, 3))
        done += calls
    assert sorted(done) == list(range(8))
    _, calls = _toy_stage(tmp_path, {"a": 1}, n=8)  # everything done: a single-process rerun does nothing
    assert calls == []


def test_mismatched_manifest_names_the_difference(tmp_path):
    record_run(tmp_path, "toy", "val", {"model": "a"})
    with pytest.raises(DataError, match="model: 'a' -> 'b'"):
        run_stage(
            tmp_path,
            "toy",
            "val",
            {"model": "b"},
            1,
            done=lambda i: True,
            remove=lambda i: None,
            process=lambda b: None,
            progress=False,
        )


# ---- five-crop geometry ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(7, 9), (10, 10), (11, 6), (480, 640), (5, 3)])
def test_five_crop_matches_torchvision(hw):
    h, w = hw
    coords = torch.arange(h * w, dtype=torch.int64).reshape(1, h, w)
    want = TF.five_crop(coords, [int(0.5 * h), int(0.5 * w)])  # the release's call (crop_datasets.py:68-80)
    got = five_crop(coords[0].numpy(), 0.5)
    assert len(got) == 5
    for g, t in zip(got, want):
        np.testing.assert_array_equal(g, t[0].numpy())
    assert five_crop_boxes(h, w)[0] == (0, 0, h // 2, w // 2)


def test_five_crop_bad_ratio():
    with pytest.raises(DataError, match="ratio"):
        five_crop_boxes(4, 4, 0.1)


def test_image_label_depth_cropped_identically(tmp_path):
    """A coordinate-encoding image: every pixel of every crop decodes to the same source (row, col) in all three."""
    H, W = 13, 18
    r, c = np.mgrid[0:H, 0:W]
    image = np.stack([r, c, (r * 7 + c) % 256], -1).astype(np.uint8)
    label = ((r * W + c) % 30 - 1).astype(np.int64)  # includes -1 (ignore)
    depth = (r * W + c).astype(np.float32) + 0.5
    item = {
        "key": "k",
        "image": Image.fromarray(image),
        "label": label,
        "depth": depth,
        "depth_units": "metres",
        "depth_bits": 16,
    }
    write_item_crops(item, 2, tmp_path, "train", 0.5, dataset="toy")
    for k, (top, left, h, w) in enumerate(five_crop_boxes(H, W)):
        p = crop_paths(tmp_path, "train", 5 * 2 + k)  # n = 5 i + k
        img = np.asarray(Image.open(p["img"]))
        lab = np.asarray(Image.open(p["label"]))
        d, meta = read_depth(p["depth"], with_meta=True)
        assert img.shape == (h, w, 3) and lab.dtype == np.uint8 and d.shape == (h, w)
        rows, cols = img[..., 0].astype(int), img[..., 1].astype(int)
        assert (rows == np.arange(top, top + h)[:, None]).all() and (cols == np.arange(left, left + w)).all()
        np.testing.assert_array_equal(lab.astype(np.int64) - 1, label[rows, cols])  # stored as label + 1
        np.testing.assert_allclose(d, depth[rows, cols], atol=(depth.max() - depth.min()) / 65535)
        assert meta["units"] == "metres" and meta["five_crop"]["box"] == [top, left, h, w]
        assert meta["five_crop"]["source_max"] == float(depth.max())
    assert (np.asarray(Image.open(crop_paths(tmp_path, "train", 10)["label"])) == 0).any()  # -1 -> 0


def test_label_out_of_uint8_range_is_refused(tmp_path):
    item = {"key": "k", "image": Image.new("RGB", (4, 4)), "label": np.full((4, 4), 300), "depth": None}
    with pytest.raises(DataError, match="label\\+1"):
        write_item_crops(item, 0, tmp_path, "train", 0.5, dataset="toy")


# ---- the five-crop stage through the CLI -------------------------------------------------------------------------


def test_fivecrop_stage_cli(cityscapes_tree, capsys):
    data = str(cityscapes_tree.data_dir)
    assert main(["fivecrop", "--dataset", "cityscapes", "--data-dir", data, "--no-progress"]) == 0
    assert "fivecrop train: 4 computed" in capsys.readouterr().out
    root = five_crop_dir("cityscapes", data)
    assert sorted(int(p.stem) for p in (root / "img" / "train").glob("*.png")) == list(range(20))
    # the training side reads them back: crop n = 5 i + k of source item i, labels decoded (label+1 -> label)
    src, crops = source_dataset("cityscapes", data, "train"), five_crop_dataset("cityscapes", data, "train")
    assert len(crops) == 5 * len(src)
    for i, k in [(0, 0), (1, 4), (3, 2)]:
        item, crop = src[i], crops[5 * i + k]
        np.testing.assert_array_equal(crop["label"], five_crop(item["label"])[k])
        np.testing.assert_array_equal(np.asarray(crop["image"]), five_crop(np.asarray(item["image"]))[k])
        assert crop["depth"].shape == crop["label"].shape
    assert not list((cityscapes_tree.data_dir / "cityscapes" / "leftImg8bit").rglob("*derived*"))

    assert main(["fivecrop", "--dataset", "cityscapes", "--data-dir", data, "--no-progress"]) == 0
    assert "fivecrop train: 0 computed, 4 already done" in capsys.readouterr().out


def test_fivecrop_sharded_ranks(synthetic_tree, capsys):
    data = str(synthetic_tree.data_dir)
    for rank in (0, 1):
        args = [
            "fivecrop",
            "--dataset",
            "synthetic",
            "--data-dir",
            data,
            "--splits",
            "train",
            "--rank",
            str(rank),
            "--world",
            "2",
            "--no-progress",
        ]
        assert main(args) == 0
        assert "2 computed, 0 already done, 2 items in this shard" in capsys.readouterr().out
    files = sorted(int(p.stem) for p in (five_crop_dir("synthetic", data) / "img" / "train").glob("*.png"))
    assert files == list(range(20))


# ---- CLI errors and check -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fivecrop", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["depth", "--dataset", "cocostuff27", "--data-dir", "/nonexistent/depthg-data"], "does not exist"),
        (["knn", "--dataset", "cityscapes"], "cityscapes"),
        (["fivecrop", "--dataset", "synthetic", "--rank", "2", "--world", "2"], "--rank 2 / --world 2"),
    ],
)
def test_cli_bad_input_is_one_clear_line(argv, message, data_dir, capsys):
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(data_dir)]  # an empty data root: the dataset folder is missing
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_check_reports_and_suggests(synthetic_tree, capsys):
    data = str(synthetic_tree.data_dir)
    assert main(["check", "--dataset", "synthetic", "--data-dir", data]) == 1  # the kNN file is missing
    out = capsys.readouterr().out
    assert "train: 4 images; labels for 4/4; depth for 4/4; kNN files: none" in out
    assert (
        f"prep knn --dataset synthetic --data-dir {data} --splits train --backbone vit_tiny_patch8 "
        "--weights bundled --res 112 --crop none --k 4 --num-neighbors 3" in out
    )  # the preset's values
    assert "only 4 training items" in out and "data.num_neighbors=3" in out  # 4 items cannot give 7 neighbours
    assert "<model." not in out and "<data." not in out and "five-crop" not in out  # the preset does not crop
    assert "prep depth --dataset" not in out  # the synthetic world has exact depth
    fake_data.make_knn(
        synthetic_tree.data_dir, "synthetic", "train", 4, backbone="vit_tiny_patch8", res=112, crop="none"
    )
    assert main(["check", "--dataset", "synthetic", "--data-dir", data]) == 0
    assert "everything training and evaluation need is prepared" in capsys.readouterr().out


def test_check_on_a_missing_or_misplaced_tree_exits_non_zero(data_dir, capsys):
    assert main(["check", "--dataset", "cocostuff27", "--data-dir", str(data_dir)]) == 1
    out = capsys.readouterr().out
    assert "train: MISSING" in out and str(data_dir / "cocostuff") in out and "get the dataset" in out
    assert "the train and val splits" in out  # one line for one cause
    (data_dir / "photos" / "train").mkdir(parents=True)  # imgs/ left out of the directory layout
    assert (
        main(
            [
                "check",
                "--dataset",
                "directory:photos",
                "--data-dir",
                str(data_dir),
                "--preset",
                "synthetic",
                "model.n_classes=3",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert str(data_dir / "photos" / "imgs" / "train") in out and "MISSING" in out


def test_check_of_potsdam_lists_no_five_crop(potsdam_tree, capsys):
    assert main(["check", "--dataset", "potsdam", "--data-dir", str(potsdam_tree.data_dir)]) == 1
    out = capsys.readouterr().out
    assert "five-crop" not in out and "prep fivecrop" not in out and "not cropped" in out
    assert "only 3 training items" in out and "data.num_neighbors=2" in out  # too few for 7 neighbours


def test_knn_stage_stops_with_the_fix_on_a_small_set(synthetic_tree, capsys):
    argv = [
        "knn",
        "--dataset",
        "synthetic",
        "--data-dir",
        str(synthetic_tree.data_dir),
        "--crop",
        "none",
        "--splits",
        "train",
        "--weights",
        "random",
        "--backbone",
        "vit_tiny_patch8",
    ]
    assert main(argv + ["--k", "30", "--num-neighbors", "2"]) == 2
    err = capsys.readouterr().err
    assert "data.num_neighbors (2) < k <= 4" in err and "--k 4" in err
    assert main(argv) == 2  # 4 items cannot give 7 neighbours and the item itself
    err = capsys.readouterr().err
    assert "too few for data.num_neighbors=7" in err and "data.num_neighbors=3" in err


def test_fivecrop_without_depth_points_to_the_depth_stage(potsdamraw_tree, capsys):
    assert main(["fivecrop", "--dataset", "potsdamraw", "--data-dir", str(potsdamraw_tree.data_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no depth map" in err and "prep depth" in err and "Traceback" not in err


def test_fivecrop_directory_without_labels(data_dir):
    tree = fake_data.make_directory(data_dir, labels=False, depth=("ours",))
    assert (
        main(
            [
                "fivecrop",
                "--dataset",
                "directory:mydir",
                "--data-dir",
                str(data_dir),
                "--splits",
                "val",
                "--no-progress",
            ]
        )
        == 0
    )
    root = five_crop_dir("directory:mydir", data_dir)
    assert root == data_dir / "mydir" / "derived" / "five_crop_0.5"
    assert len(list((root / "img" / "val").glob("*.png"))) == 5 * len(tree.keys["val"])
    assert len(list((root / "depth" / "val").glob("*.json"))) == 5 * len(tree.keys["val"])
    assert not (root / "label").exists()


def test_reference_depth_of_a_crop_keeps_the_full_images_8bit_values(coco_tree):
    """The release crops its 8-bit depth files, so a crop's reference depth is the source's 0..255 values, not the
    crop re-stretched to its own 0..255 (METHOD.md §1.3-1.4); paper depth is min-max per training image."""
    from depthg.data.fivecrop import run_fivecrop
    from depthg.data.transforms import depth_tensor

    run_fivecrop("cocostuff27", coco_tree.data_dir, ["train"], ratio=0.5, progress=False)
    src = source_dataset("cocostuff27", coco_tree.data_dir, "train")[0]
    assert src["depth_bits"] == 8
    crops = five_crop_dataset("cocostuff27", coco_tree.data_dir, "train", ratio=0.5)
    for k in range(5):
        item = crops[k]
        expected = five_crop(src["depth"], 0.5)[k]
        ref = depth_tensor(
            item["depth"],
            item["depth"].shape[0],
            fidelity="reference",
            dataset="cocostuff27",
            is_8bit=item["depth_bits"] == 8,
            value_range=item["depth_range"],
        )[0].numpy()
        h, w = expected.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2  # depth_tensor centre-crops to a square
        assert np.array_equal(ref, expected[top : top + side, left : left + side].astype(np.float32))
        paper = depth_tensor(
            item["depth"], side, fidelity="paper", dataset="cocostuff27", is_8bit=False, value_range=item["depth_range"]
        )
        e = expected.astype(np.float32)
        norm = (e - e.min()) / (e.max() - e.min())  # min-max over the whole crop, before the square centre crop
        assert np.allclose(paper[0].numpy(), norm[top : top + side, left : left + side], atol=1e-4)


def test_training_on_a_missing_dataset_names_the_data_not_the_crops(data_dir):
    from depthg.data.pairs import build_train_set
    from depthg.presets import load_preset

    cfg = load_preset("cocostuff27_vits8", {"data.data_dir": str(data_dir)})
    with pytest.raises(DataError, match=r"cocostuff.* does not exist") as err:
        build_train_set(cfg)
    assert "five-crop" not in str(err.value)
