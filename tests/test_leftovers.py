"""Leftovers of killed or failed stages never block or mislead the next run (issue 15 item 4, issue 14 item 2):
temporary files are removed, bad parameters are never recorded, good outputs survive a failed --overwrite."""

from __future__ import annotations

import subprocess
import sys

from depthg.cli.prep import main
from depthg.data.datasets import five_crop_dataset
from depthg.data.depth_estimation import depth_dir
from depthg.data.fivecrop import crop_paths, five_crop_dir
from depthg.data.knn_file import knn_path, load_knn
from depthg.data.stage import recorded_params
from depthg.files import remove_leftovers, temp_sibling

KNN = [
    "knn",
    "--dataset",
    "synthetic",
    "--backbone",
    "vit_tiny_patch8",
    "--res",
    "16",
    "--k",
    "6",
    "--num-neighbors",
    "5",
    "--device",
    "cpu",
    "--no-progress",
]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(target, pid: int):
    """The temporary file a writer with ``pid`` would have left when killed while writing ``target``."""
    live = temp_sibling(target)
    tmp = live.with_name(live.name.replace(f".{__import__('os').getpid()}.", f".{pid}."))
    tmp.write_bytes(b"\x89PNG half written")
    return tmp


def test_killed_fivecrop_leftovers_are_removed_and_the_item_redone(synthetic_tree, capsys):
    data = str(synthetic_tree.data_dir)
    assert main(["fivecrop", "--dataset", "synthetic", "--data-dir", data, "--splits", "train", "--no-progress"]) == 0
    root = five_crop_dir("synthetic", data)
    crop = crop_paths(root, "train", 7)["img"]
    crop.unlink()  # killed while writing crop 7's image: its temp file is all that is left
    dead = _leftover(crop, _dead_pid())
    alive = _leftover(crop_paths(root, "train", 3)["img"], __import__("os").getppid())  # a live writer's: kept
    capsys.readouterr()
    assert main(["fivecrop", "--dataset", "synthetic", "--data-dir", data, "--splits", "train", "--no-progress"]) == 0
    assert "1 computed" in capsys.readouterr().out
    assert crop.is_file() and not dead.exists() and alive.exists()
    ds = five_crop_dataset("synthetic", data, "train", with_depth=False)
    assert len(ds) == 20 and all(not k.startswith(".") for k in ds.keys())  # a temp file is never an item
    alive.unlink()


def test_failed_weights_keep_the_old_knn_file_and_record_nothing(synthetic_tree, tmp_path, capsys):
    data = str(synthetic_tree.data_dir)
    assert main(["fivecrop", "--dataset", "synthetic", "--data-dir", data, "--no-progress"]) == 0
    assert main([*KNN, "--data-dir", data, "--weights", "random", "--splits", "train"]) == 0
    path = knn_path("synthetic", "train", "vit_tiny_patch8", "five", 16, data)
    before, params = path.read_bytes(), recorded_params(path.parent, path.stem)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main([*KNN, "--data-dir", data, "--weights", str(bad), "--splits", "train", "--overwrite"]) == 2
    assert str(bad) in capsys.readouterr().err
    assert path.read_bytes() == before and recorded_params(path.parent, path.stem) == params

    # a first run whose weights fail records nothing, so the retry with other weights is accepted (no --overwrite)
    assert main([*KNN, "--data-dir", data, "--weights", str(bad), "--splits", "val"]) == 2
    val = knn_path("synthetic", "val", "vit_tiny_patch8", "five", 16, data)
    assert recorded_params(val.parent, val.stem) is None and not val.exists()
    assert main([*KNN, "--data-dir", data, "--weights", "random", "--splits", "val"]) == 0
    nns, meta = load_knn(val)
    assert meta["weights"].startswith("random") and nns.shape[1] == 6


def test_failed_depth_model_records_nothing_and_a_retry_is_accepted(coco_tree, tmp_path, capsys):
    data = str(coco_tree.data_dir)
    for model in (tmp_path / "no_such_model", tmp_path / "another_missing_model"):
        rc = main(
            [
                "depth",
                "--dataset",
                "cocostuff27",
                "--data-dir",
                data,
                "--model",
                str(model),
                "--device",
                "cpu",
                "--no-progress",
                "--splits",
                "val",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and str(model) in err and "other parameters" not in err, err  # the retry is not refused
    assert recorded_params(depth_dir("cocostuff27", data), "val") is None


def test_remove_leftovers_spares_live_writers_and_targets(tmp_path):
    target = tmp_path / "a" / "0.png"
    target.parent.mkdir()
    target.write_bytes(b"done")
    dead, live = _leftover(target, _dead_pid()), _leftover(tmp_path / "a" / "1.png", __import__("os").getppid())
    assert remove_leftovers(tmp_path) == 1
    assert target.is_file() and not dead.exists() and live.exists()


def test_truncated_stage_manifest_is_one_line(synthetic_tree, capsys):
    data = str(synthetic_tree.data_dir)
    assert main(["fivecrop", "--dataset", "synthetic", "--data-dir", data, "--splits", "val", "--no-progress"]) == 0
    manifest = five_crop_dir("synthetic", data) / "manifest.json"
    manifest.write_text(manifest.read_text()[:20])  # a torn write
    capsys.readouterr()
    assert main(["fivecrop", "--dataset", "synthetic", "--data-dir", data, "--splits", "val", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(manifest) in err[0] and "not valid JSON" in err[0]


def test_truncated_synthetic_manifest_is_one_line(tmp_path, capsys):
    world = tmp_path / "synthetic"
    world.mkdir()
    (world / "manifest.json").write_text('{"generator": "depthg.data.synth')
    assert main(["synthetic", "--data-dir", str(tmp_path), "--n-train", "1", "--n-val", "1", "--res", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json is damaged" in err[0], err


def test_file_sha256_reads_a_file_once_per_version(tmp_path, monkeypatch):
    """Hashed once while unchanged (weights are hashed by readiness, the kNN stage and the loader); a replaced file
    (atomic rename) and a file edited in place, same size, are read again."""
    import builtins
    import hashlib
    import os

    from depthg.files import atomic_write, file_sha256

    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 100)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    assert file_sha256(path) == file_sha256(path) == hashlib.sha256(b"a" * 100).hexdigest()
    assert opened.count(str(path)) == 1
    with atomic_write(path) as tmp:
        tmp.write_bytes(b"b" * 100)
    assert file_sha256(path) == hashlib.sha256(b"b" * 100).hexdigest()
    with real_open(path, "r+b") as fh:  # in place, same size and inode: the new mtime tells
        fh.write(b"c" * 100)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_sha256(path) == hashlib.sha256(b"c" * 100).hexdigest()
