"""Paper tables: cases, published rows, released-checkpoint matching, numbers read back from run folders (with and
without ``release_selected``), and 05_paper_tables run by papermill on a tiny fake Potsdam with a released .ckpt."""

import json
import math
from functools import partial

import fake_data
import pandas as pd
import pytest
import torch
from test_checkpoints import _released_state, _write_ckpt
from test_notebooks_params import TINY, _papermill

from depthg.cli.main import main
from depthg.errors import ConfigError
from depthg.notebook import resolve_config
from depthg.reporting import paper_plan as pp
from depthg.reporting import paper_tables as pt
from depthg.runs import read_run, write_run

POTSDAM = pp.Case("potsdam", "vit_small_patch8", "potsdam_vits8")
METRIC_KEYS = (
    ("cluster_acc", "cluster", "accuracy"),
    ("cluster_miou", "cluster", "mIoU"),
    ("linear_acc", "linear", "accuracy"),
    ("linear_miou", "linear", "mIoU"),
)


def _configure(data_dir):
    return partial(
        resolve_config,
        data_dir=str(data_dir),
        weights="random",
        iterations=2,
        max_images=2,
        crf=False,
        device="cpu",
        threads=1,
        overrides=TINY,
    )


def test_cases_follow_the_paper_presets():
    assert [(c.dataset, c.backbone) for c in pp.paper_cases("all")] == [
        ("cocostuff27", "vit_small_patch8"),
        ("cocostuff27", "vit_base_patch8"),
        ("cityscapes", "vit_base_patch8"),
        ("potsdam", "vit_small_patch8"),
    ]
    assert pp.paper_cases("potsdam") == [POTSDAM] and POTSDAM.tag == "potsdam-vits8"
    assert [c.tag for c in pp.paper_cases("cocostuff27", ["vit_base_patch8"])] == ["cocostuff27-vitb8"]
    assert pp.paper_cases("potsdamraw")[0].preset == "potsdam_vits8"
    assert pp.paper_cases("synthetic")[0].preset == "synthetic"
    with pytest.raises(ConfigError, match="no paper table; valid: all, cityscapes"):
        pp.paper_cases("mnist")
    with pytest.raises(ConfigError, match="valid: vit_base_patch8"):
        pp.paper_cases("cityscapes", ["vit_small_patch8"])
    with pytest.raises(ConfigError, match="fidelities"):
        pp.fidelity_variant("exact")


def test_published_rows_keep_source_status_and_say_not_retrieved():
    rows = pd.DataFrame(pt.published_rows(POTSDAM)).set_index("method")
    assert (rows.loc["STEGO", "cluster_acc"], rows.loc["STEGO", "cluster_miou"]) == (77.0, 62.6)
    assert rows.loc["STEGO", "source"] == "E+P1+STEGO#39" and rows.loc["STEGO", "status"] == "V"
    assert math.isnan(rows.loc["DepthG", "cluster_acc"]) and rows.loc["DepthG", "status"] == "X"
    shown = pt.display_table(rows.reset_index()).set_index("method")
    assert shown.loc["DepthG", "cluster Acc"] == "not retrieved (X)" and shown.loc["STEGO", "cluster mIoU"] == "62.6"
    assert shown.loc["STEGO", "release-selected cluster Acc / mIoU"] == "n/a"
    synthetic = pt.published_rows(pp.paper_cases("synthetic")[0])
    assert len(synthetic) == 1 and "nobody publishes" in synthetic[0]["note"]


@pytest.mark.slow  # two ViT-S/8 checkpoints written and read (~10 s on the shared CPU)
def test_released_checkpoints_are_matched_by_their_hyper_parameters(tmp_path, monkeypatch):
    assert pp.released_index(None) == {}
    with pytest.raises(ConfigError, match="not a folder"):
        pp.released_index(tmp_path / "nope")
    hparams = dict(
        dataset_name="potsdam",
        model_type="vit_small",
        dino_patch_size=8,
        dim=90,
        n_classes=3,
        extra_clusters=0,
        dropout=True,
    )
    _write_ckpt(tmp_path / "potsdam_test.ckpt", _released_state(90, 3), hparams, monkeypatch)
    torch.save({"w": torch.ones(1)}, tmp_path / "not_released.ckpt")  # skipped: not an authors' checkpoint
    assert pp.released_index(tmp_path) == {("potsdam", "vit_small_patch8"): tmp_path / "potsdam_test.ckpt"}
    _write_ckpt(tmp_path / "again.ckpt", _released_state(90, 3, seed=1), hparams, monkeypatch)
    with pytest.raises(ConfigError, match="both released checkpoints"):
        pp.released_index(tmp_path)


def _metrics(base: float, *, crf: bool) -> dict:
    """An evaluate_model-shaped dict; the CRF numbers differ from the plain ones, so reading the wrong one fails."""
    out = {"eval": {"split": "val", "images": 2, "crf": crf}}
    for i, probe in enumerate(("cluster", "linear")):
        out[probe] = {"accuracy": base + 10 * i, "mIoU": base + 10 * i + 1, "iou": []}
        if crf:
            out[f"{probe}_crf"] = {"accuracy": base + 10 * i + 5, "mIoU": base + 10 * i + 6, "iou": []}
    return out


def test_table_numbers_are_the_run_folders_with_and_without_release_selected(data_dir, tmp_path):
    """Finished run folders (as a GPU job leaves them) are reused and read back: last step for both fidelities, the
    release-selected checkpoint where metrics.json has one (CRF numbers), 'not selected' where not."""
    fake_data.make_potsdam(data_dir)
    results = tmp_path / "results"
    plan = pp.plan_tables([POTSDAM], _configure(data_dir), seeds=[0, 1], results_dir=str(results), reuse=True)
    assert [r.name for r in plan.runs] == [
        "paper-potsdam-vits8-reference-s0",
        "paper-potsdam-vits8-reference-s1",
        "paper-potsdam-vits8-paper-s0",
        "paper-potsdam-vits8-paper-s1",
    ]
    assert {r.status for r in plan.runs} == {"train"} and "to do: 4 runs, 8 training iterations" in plan.counts()
    written = {}
    for k, run in enumerate(plan.runs):
        metrics = {"last_step": _metrics(20.0 + k, crf=False)}
        if run.cfg.fidelity.dfc_target == "reference":  # issue 8: reference presets select as the release
            metrics["release_selected"] = {
                "label": "top-2 by cluster mIoU on the evaluation split",
                "after_iterations": 1,
                "checkpoint": "checkpoints/selected.pt",
                "metrics": _metrics(40.0 + k, crf=True),
            }
        write_run(
            results / "runs" / run.name,
            config=run.cfg.to_dict(),
            metrics=metrics,
            provenance={
                "git": {"commit": f"c{k}", "dirty": False},
                "device": "cpu: fake",
                "backbone_weights": "random",
                "wall_time_s": 1.5 + k,
            },
        )
        written[run.name] = metrics

    plan = pp.plan_tables([POTSDAM], _configure(data_dir), seeds=[0, 1], results_dir=str(results), reuse=True)
    assert {r.status for r in plan.runs} == {"reuse"} and "to do: 0 runs" in plan.counts()
    assert pp.speed_config(plan) is None  # nothing to train: no warm-up
    out = pt.run_tables(plan, log=None)
    table = out.tables["potsdam"].set_index("row")
    assert list(out.tables["potsdam"]["row"].drop_duplicates()) == list(pt.ROWS)
    ref, paper = table.loc["reference retrain"], table.loc["paper retrain"]
    for col, probe, key in METRIC_KEYS:
        assert ref[col] == pytest.approx((20.0 + 21.0) / 2 + (10 if probe == "linear" else 0) + (key == "mIoU"))
        assert paper[col] == pytest.approx(
            sum(written[f"paper-potsdam-vits8-paper-s{s}"]["last_step"][probe][key] for s in (0, 1)) / 2
        )
        assert ref[f"{col}_std"] == pytest.approx(math.sqrt(0.5))
        sel = [
            written[f"paper-potsdam-vits8-reference-s{s}"]["release_selected"]["metrics"][f"{probe}_crf"][key]
            for s in (0, 1)
        ]
        assert ref[f"selected_{col}"] == pytest.approx(sum(sel) / 2)
        assert math.isnan(paper[f"selected_{col}"])
    assert ref["n_selected"] == 2 and paper["n_selected"] == 0 and paper["selected"] == pt.NOT_SELECTED["paper"]
    assert ref["wall_time_s"] == pytest.approx(1.5 + 2.5) and ref["git_commit"] == "c0;c1"
    assert ref["device"] == "cpu: fake" and ref["seeds"] == "0;1"
    assert "not evaluated: no released_checkpoints folder" in table.loc["released checkpoint", "note"]

    shown = pt.display_table(out.tables["potsdam"]).set_index("row")
    assert shown.loc["paper retrain", "release-selected cluster Acc / mIoU"] == "not selected (paper fidelity)"
    assert shown.loc["paper retrain", "release-selected linear Acc / mIoU"] == "n/a"
    assert shown.loc["reference retrain", "release-selected cluster Acc / mIoU"] == "45.5 ± 0.7 / 46.5 ± 0.7"
    csv = pd.read_csv(results / "paper_potsdam.csv")
    assert list(csv["row"].drop_duplicates()) == list(pt.ROWS)
    runs = pd.read_csv(results / "paper_potsdam_runs.csv")
    assert len(runs) == 4 and runs["selected_checkpoint"].notna().sum() == 2
    md = (results / "paper_potsdam.md").read_text()
    assert "not retrieved (X)" in md and "release-selected = top-2 by cluster mIoU" in md and "[E]" in md
    assert out.figures["potsdam"].is_file()


def test_estimate_adds_up_the_plan():
    case = pp.paper_cases("synthetic")[0]
    cfg = resolve_config("synthetic", iterations=10)
    runs = [
        pp.PlannedRun(case, "retrain", "a", cfg, "train", 10, 8),
        pp.PlannedRun(case, "retrain", "b", cfg, "reuse", 10, 8),
        pp.PlannedRun(case, "released", "c", cfg, "evaluate", 0, 8),
    ]
    plan = pp.Plan([case], {case: cfg}, [0], ["paper"], {}, None, None, True, runs)
    speed = pp.Speed("cpu", setup_s=2.0, iteration_s=0.5, image_s=0.25, image_nocrf_s=0.1, measured_on="test")
    assert plan.estimate_s(speed) == pytest.approx(2.0 + 10 * 0.5 + 8 * 0.25 + 8 * 0.25)
    assert "to do: 2 runs, 10 training iterations, 16 evaluation images" in plan.counts()
    assert plan.describe(speed).endswith("estimated wall time: 11 s")
    assert pp.human_time(3 * 3600) == "3.0 h" and pp.human_time(5 * 86400) == "5.0 days"


@pytest.mark.slow
def test_paper_tables_notebook_on_a_tiny_fake_potsdam(data_dir, tmp_path, monkeypatch, capsys):
    """`papermill notebooks/05_paper_tables.ipynb out.ipynb -p dataset potsdam` with a released checkpoint: every
    row kind, and every number equal to its run folder's metrics; then the CLI reuses all runs."""
    fake_data.make_potsdam(data_dir)
    fake_data.make_knn(data_dir, "potsdam", "train", 3, res=32, crop="none")
    released = tmp_path / "released"
    released.mkdir()
    hparams = dict(
        dataset_name="potsdam",
        model_type="vit_small",
        dino_patch_size=8,
        dim=90,
        n_classes=3,
        extra_clusters=0,
        dropout=True,
    )
    _write_ckpt(released / "potsdam_test.ckpt", _released_state(90, 3), hparams, monkeypatch)
    results = tmp_path / "results"
    tiny = dict(
        dataset="potsdam",
        data_dir=str(data_dir),
        weights="random",
        iterations=2,
        seeds="0,1",
        max_images=2,
        device="cpu",
        overrides=TINY,
        results_dir=str(results),
        released_checkpoints=str(released),
    )
    _papermill("05_paper_tables.ipynb", tmp_path, **tiny)

    table = pd.read_csv(results / "paper_potsdam.csv")
    assert list(table["row"].drop_duplicates()) == list(pt.ROWS)
    rows = table.set_index("row")
    rel = rows.loc["released checkpoint"]
    rel_run = read_run(results / "runs" / rel["runs"])
    assert rel_run["metrics"]["checkpoint"] == str(released / "potsdam_test.ckpt")
    assert rel["cluster_acc"] == pytest.approx(rel_run["metrics"]["last_step"]["cluster"]["accuracy"], abs=1e-4)
    assert rel["linear_miou"] == pytest.approx(rel_run["metrics"]["last_step"]["linear"]["mIoU"], abs=1e-4)
    assert "sha256:" in rel["weights"] and rel["git_commit"]
    for fid in pp.FIDELITIES:
        row = rows.loc[f"{fid} retrain"]
        runs = [read_run(results / "runs" / name) for name in row["runs"].split(";")]
        assert len(runs) == 2 and all(r["config"]["train"]["iterations"] == 2 for r in runs)
        for col, probe, key in METRIC_KEYS:
            values = [r["metrics"]["last_step"][probe][key] for r in runs]
            assert row[col] == pytest.approx(sum(values) / 2, abs=1e-4), (fid, col)
            assert row[f"{col}_std"] == pytest.approx(pd.Series(values).std(ddof=1), abs=1e-4)
        assert row["wall_time_s"] == pytest.approx(sum(r["provenance"]["wall_time_s"] for r in runs), abs=1e-3)
        has = [r["metrics"].get("release_selected") is not None for r in runs]
        assert row["n_selected"] == sum(has)  # issue 8's key where the runs carry it, none otherwise
        if not any(has):
            assert row["selected"] == pt.NOT_SELECTED[fid]
    assert (results / "figures" / "05_paper_potsdam.png").is_file()

    capsys.readouterr()
    assert (
        main(
            [
                "tables",
                "--dataset",
                "potsdam",
                "--data-dir",
                str(data_dir),
                "--weights",
                "random",
                "--iterations",
                "2",
                "--seeds",
                "0,1",
                "--max-images",
                "2",
                "--no-crf",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--results-dir",
                str(results),
                "--released-checkpoints",
                str(released),
                "--reuse",
                "--no-progress",
                *TINY.split(),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "to do: 0 runs, 0 training iterations, 0 evaluation images" in printed, printed  # same config: reused
    assert "paper-potsdam-vits8-released-potsdam_test: reuse" in printed
    again = pd.read_csv(results / "paper_potsdam.csv")
    pd.testing.assert_frame_equal(again, table)
    assert json.loads((results / "runs" / rel["runs"] / "metrics.json").read_text())["last_step"]["eval"]["images"] == 2
