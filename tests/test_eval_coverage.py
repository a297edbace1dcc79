"""An evaluation covers its split or stops, records its image count and the images that lost their CRF (issue 15
items 2 and 7); the synthetic world's errors advise commands that exist; an unknown backbone is named as such."""

from __future__ import annotations

import json
import shutil

import pytest
from test_locks import trained  # noqa: F401  (a one-iteration checkpoint on the synthetic world)

import depthg.evaluation.crf as crf_mod
from depthg.cli.main import main
from depthg.errors import DataError


@pytest.fixture
def world_copy(synthetic_world, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(synthetic_world / "synthetic", copy / "synthetic")
    return copy


def test_a_deleted_validation_image_stops_the_evaluation(trained, world_copy, tmp_path, capsys):  # noqa: F811
    victim = world_copy / "synthetic" / "img" / "val" / "00002.png"
    victim.unlink()
    rc = main(
        [
            "eval",
            str(trained),
            f"data.data_dir={world_copy}",
            "eval.crf=false",
            "--results-dir",
            str(tmp_path),
            "--run-name",
            "cov",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and str(victim) in err and "23 of its 24" in err and "prep synthetic" in err, err
    assert "--overwrite" not in err  # prep synthetic has no such flag


def test_eval_records_image_count_and_lost_crf_images(trained, synthetic_world, tmp_path, monkeypatch):  # noqa: F811
    real, calls = crf_mod.crf_from_probabilities, {"n": 0}

    def flaky(image, probs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("pretend the CRF ran out of memory")
        return real(image, probs)

    monkeypatch.setattr(crf_mod, "crf_from_probabilities", flaky)
    with pytest.warns(UserWarning, match="CRF lost for image 00001"):
        rc = main(
            [
                "eval",
                str(trained),
                f"data.data_dir={synthetic_world}",
                "eval.crf_workers=0",
                "eval.max_images=3",
                "eval.batch_size=3",
                "eval.crf_timeout=30",
                "--results-dir",
                str(tmp_path),
                "--run-name",
                "lost",
            ]
        )
    assert rc == 0
    record = json.loads((tmp_path / "runs" / "lost" / "metrics.json").read_text())["last_step"]["eval"]
    assert record["images"] == 3 and record["split_images"] == 24
    assert record["crf_lost"] == [
        {"image": "00001", "probe": "cluster", "reason": "MemoryError: pretend the CRF ran out of memory"}
    ]
    config = json.loads((tmp_path / "runs" / "lost" / "config.json").read_text())
    assert config["eval"]["crf_timeout"] == 30.0  # settable from the command line, recorded with the run


def test_synthetic_depth_advice_names_a_command_that_exists(world_copy):
    from PIL import Image

    from depthg.data.datasets import source_dataset

    depth = world_copy / "synthetic" / "depth" / "val" / "00000.png"
    from depthg.data.depth_io import write_depth

    write_depth(depth, __import__("numpy").ones((8, 8), "float32"), source="synthetic", units="metres")
    ds = source_dataset("synthetic", world_copy, "val")
    with pytest.raises(DataError, match="prep synthetic` with the world's") as info:
        ds[0]
    assert "--overwrite" not in str(info.value)
    assert Image.open(world_copy / "synthetic" / "img" / "val" / "00000.png").size != (8, 8)


def test_unknown_backbone_is_named_before_knn_files(synthetic_world, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--preset",
            "synthetic",
            f"data.data_dir={synthetic_world}",
            "model.backbone=vit_nope",
            "--results-dir",
            str(tmp_path),
            "--no-eval",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "vit_nope" in err and "backbone" in err and "knn" not in err.lower(), err
