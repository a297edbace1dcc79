"""Evaluation: the STEGO protocol on an authors'-format released checkpoint, preset inference, CLI errors."""

import json

import pytest
import torch
from test_checkpoints import _released_state, _write_ckpt

from depthg.cli.main import main
from depthg.evaluation.evaluate import preset_for_released


@pytest.fixture
def released_synthetic(tmp_path, monkeypatch):
    """A released-format ViT-S/8 Lightning checkpoint (real key names and shapes) with 6 classes, dim 70."""
    path = tmp_path / "synthetic_vits.ckpt"
    hparams = dict(
        dataset_name="synthetic",
        model_type="vit_small",
        dino_patch_size=8,
        dim=70,
        n_classes=6,
        extra_clusters=0,
        dropout=True,
    )
    _write_ckpt(path, _released_state(70, 6), hparams, monkeypatch)
    return path


def test_eval_cli_on_released_checkpoint_writes_results_with_provenance(
    released_synthetic, synthetic_world, tmp_path, capsys
):
    rc = main(
        [
            "eval",
            str(released_synthetic),
            "--preset",
            "synthetic",
            f"data.data_dir={synthetic_world}",
            "eval.max_images=4",
            "eval.batch_size=2",
            "eval.crf_workers=2",
            "--results-dir",
            str(tmp_path),
            "--run-name",
            "released",
        ]
    )
    assert rc == 0
    run = tmp_path / "runs" / "released"
    metrics = json.loads((run / "metrics.json").read_text())["last_step"]
    assert set(metrics) >= {"cluster", "linear", "cluster_crf", "linear_crf", "eval"}
    assert metrics["eval"]["images"] == 4 and metrics["eval"]["crf"] is True
    for key in ("cluster", "linear", "cluster_crf", "linear_crf"):
        assert 0 <= metrics[key]["accuracy"] <= 100 and len(metrics[key]["iou"]) == 6
    assert sorted(metrics["cluster"]["assignment"]) == list(range(6))  # a permutation of the classes
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["backbone"] == "vit_small_patch8" and config["model"]["dim"] == 70
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["backbone_weights"].startswith(f"file:{released_synthetic}")
    assert prov["git"]["commit"] and "torch" in prov["packages"]
    # the CPU's vector instruction set decides how float sums round: recorded, so that a last-digit difference
    # between two runs of one commit can be traced to the machine
    assert prov["cpu"]["model"] and prov["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "cluster_crf" in capsys.readouterr().out


def test_flip_averaged_code_is_flip_equivariant(released_synthetic):
    from depthg.evaluation.released import load_released_checkpoint

    model, _ = load_released_checkpoint(released_synthetic)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = model.predict_code(x), model.predict_code(x.flip(-1))
    assert torch.allclose(a, b.flip(-1), atol=1e-5)


def test_preset_for_released():
    assert preset_for_released({"dataset_name": "cocostuff27", "backbone": "vit_base_patch8"}) == "cocostuff27_vitb8"
    assert preset_for_released({"dataset_name": "potsdam", "backbone": "vit_small_patch8"}) == "potsdam_vits8"
    with pytest.raises(Exception, match="--preset"):
        preset_for_released({"dataset_name": "nyuv2", "backbone": "vit_small_patch8", "path": "x.ckpt"})


def test_eval_cli_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.ckpt" in err and "Traceback" not in err


def test_git_dirty_flag_ignores_results_outputs(tmp_path):
    import subprocess

    from depthg.runs import git_state

    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    run("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("old\n")
    run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "table.md").write_text("new\n")  # a run rewrote its outputs: still clean code
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_unlabelled_evaluation_says_so_instead_of_nan(released_synthetic, data_dir, tmp_path, capsys):
    import fake_data

    fake_data.make_directory(data_dir, "photos", labels=False)
    rc = main(
        [
            "eval",
            str(released_synthetic),
            "--preset",
            "synthetic",
            "data.dataset=directory:photos",
            f"data.data_dir={data_dir}",
            "eval.res=32",
            "eval.batch_size=2",
            "--no-crf",
            "--results-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "no labelled pixels in directory:photos/val" in out and "labels/val/<image stem>.png" in out
    assert "nan" not in out.lower()
    run = tmp_path / "runs" / "eval-directory-photos-synthetic_vits"  # the dataset is in the default name
    metrics = json.loads((run / "metrics.json").read_text())["last_step"]
    assert "unlabelled" in metrics and "cluster" not in metrics and metrics["eval"]["images"] == 2
