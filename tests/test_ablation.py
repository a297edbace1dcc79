"""Ablation: variant definitions -> config switches, aggregation over seeds, run sharing/reuse, tables, anchors."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from depthg.config import FidelityConfig
from depthg.presets import load_preset
from depthg.reporting import ablation, anchors
from depthg.runs import write_run

SWITCHES = ("dfc", "depth_sampling", "lhp")


def _switches(cfg):
    return tuple(getattr(cfg.loss, k) for k in SWITCHES)


def _without(d: dict, drop: list[tuple[str, str]]) -> dict:
    d = json.loads(json.dumps(d))
    for section, key in drop:
        d[section].pop(key)
    return d


def test_component_variants_set_exactly_the_three_switches():
    base = load_preset("synthetic")
    expected = {
        "stego": (False, "random", False),
        "dfc": (True, "random", False),
        "fps": (False, "fps", False),
        "dfc_fps": (True, "fps", False),
        "lhp": (False, "random", True),
        "all": (True, "fps", True),
    }
    variants = ablation.component_variants()
    assert [v.key for v in variants] == list(expected)
    assert variants[0].label == "STEGO baseline" and variants[2].label == "+FPS"
    drop = [("loss", k) for k in SWITCHES] + [("train", "seed")]
    for v in variants:
        cfg = v.config(base, seed=3)
        assert _switches(cfg) == expected[v.key], v.key
        assert cfg.train.seed == 3
        # nothing else moves: weights, schedules and fidelity stay the preset's
        assert _without(cfg.to_dict(), drop) == _without(base.to_dict(), drop), v.key


def test_component_variants_keep_a_reference_preset_at_reference_fidelity():
    base = load_preset("potsdam_vits8")
    for v in ablation.component_variants():
        assert v.config(base, 0).fidelity == FidelityConfig.all("reference")


def test_fidelity_variants_flip_one_aspect_at_a_time():
    base = load_preset("potsdam_vits8")  # a reference preset: the variants must set paper themselves
    variants = ablation.fidelity_variants()
    cfgs = {v.key: v.config(base, 0) for v in variants}
    assert cfgs["fid_paper"].fidelity == FidelityConfig.all("paper")
    assert cfgs["fid_reference"].fidelity == FidelityConfig.all("reference")
    flipped = [a for a in ablation.ASPECTS if a not in ablation.NOT_IN_TRAINING]
    assert [v.key for v in variants] == ["fid_paper"] + [f"fid_{a}" for a in flipped] + ["fid_reference"]
    assert "knn_features" not in flipped and "knn_features" in ablation.ASPECTS
    for a in flipped:
        fid = cfgs[f"fid_{a}"].fidelity
        ref = [f for f in ablation.ASPECTS if getattr(fid, f) == "reference"]
        assert ref == [a], (a, ref)
    for key, cfg in cfgs.items():
        assert _switches(cfg) == (True, "fps", True), key  # every component on
    assert len({v.label for v in variants}) == len(variants)


def test_released_variant_is_the_presets_own_configuration():
    assert ablation.released_variant(load_preset("potsdam_vits8")).key == "dfc_fps"
    assert ablation.released_variant(load_preset("cocostuff27_vits8")).key == "dfc_fps"
    assert ablation.released_variant(load_preset("cityscapes_vitb8")).key == "dfc"  # no FPS in the release
    assert ablation.released_variant(load_preset("synthetic")).key == "dfc"  # random sampling, like Cityscapes


def _fake_run(root, name, cfg, *, cluster, linear, commit="abc123", crf=False):
    """A run folder as train() leaves it: config.json, metrics.json (last_step) and provenance.json."""
    probe = lambda acc, miou: {"accuracy": acc, "mIoU": miou, "iou": [miou / 100] * 3}
    metrics = {
        "cluster": probe(*cluster),
        "linear": probe(*linear),
        "eval": {"split": "val", "images": 7, "crf": crf, "flip": True, "res": 112},
    }
    if crf:  # the CRF numbers are the ones a CRF table must use
        metrics.update(
            cluster_crf=probe(cluster[0] + 1, cluster[1] + 1), linear_crf=probe(linear[0] + 1, linear[1] + 1)
        )
    run_dir = root / "runs" / name
    write_run(
        run_dir,
        config=cfg.to_dict(),
        metrics={"last_step": metrics},
        provenance={
            "git": {"commit": commit, "dirty": False},
            "seed": cfg.train.seed,
            "backbone_weights": "random",
            "wall_time_s": 1.5,
        },
    )
    return run_dir


def test_aggregate_mean_and_sample_std_over_seeds(tmp_path):
    base = load_preset("synthetic")
    values = {
        ("stego", 0): (50.0, 20.0),
        ("stego", 1): (54.0, 22.0),
        ("stego", 2): (58.0, 27.0),
        ("dfc", 0): (60.0, 30.0),
        ("dfc", 1): (62.0, 30.0),
        ("dfc", 2): (61.0, 33.0),
    }
    variants = {v.key: v for v in ablation.component_variants()}
    rows = []
    for (key, seed), (acc, miou) in values.items():
        cfg = variants[key].config(base, seed)
        run = _fake_run(
            tmp_path,
            f"a-{key}-s{seed}",
            cfg,
            cluster=(acc, miou),
            linear=(acc + 10, miou + 5),
            commit="c1" if seed < 2 else "c2",
        )
        rows.append(ablation.run_record(run, variant=variants[key], seed=seed))
    records = pd.DataFrame(rows)
    assert list(records["iterations"]) == [base.train.iterations] * 6 and not records["crf"].any()
    agg = ablation.aggregate(records)
    assert list(agg["key"]) == ["stego", "dfc"]  # order of appearance, not alphabetical
    for key in ("stego", "dfc"):
        acc = np.array([values[(key, s)][0] for s in range(3)])
        miou = np.array([values[(key, s)][1] for s in range(3)])
        row = agg[agg["key"] == key].iloc[0]
        assert row["n_seeds"] == 3
        assert row["cluster_acc_mean"] == pytest.approx(acc.mean())
        assert row["cluster_acc_std"] == pytest.approx(acc.std(ddof=1))
        assert row["cluster_miou_std"] == pytest.approx(miou.std(ddof=1))
        assert row["linear_acc_mean"] == pytest.approx(acc.mean() + 10)
        assert row["linear_miou_mean"] == pytest.approx(miou.mean() + 5)
        assert row["seeds"] == "0;1;2"
        assert row["runs"] == f"a-{key}-s0;a-{key}-s1;a-{key}-s2"
        assert row["git_commit"] == "c1;c2" and row["iterations"] == str(base.train.iterations)
    one = ablation.aggregate(records[records["seed"] == 0])
    assert one["n_seeds"].eq(1).all() and one["cluster_acc_std"].isna().all()  # no std from one seed


def test_run_record_reads_the_crf_metrics_when_the_run_used_crf(tmp_path):
    v = ablation.component_variants()[0]
    run = _fake_run(tmp_path, "crf", v.config(load_preset("synthetic"), 0), cluster=(50, 20), linear=(70, 30), crf=True)
    rec = ablation.run_record(run, variant=v, seed=0)
    assert rec["crf"] and rec["cluster_acc"] == 51 and rec["linear_miou"] == 31


def test_run_variants_shares_identical_configs_and_reuses_finished_runs(tmp_path, monkeypatch):
    calls = []

    def fake_train(cfg, *, run_name, results_dir, resume, evaluate_at_end, progress, overwrite=False):
        calls.append(run_name)
        _fake_run(tmp_path, run_name, cfg, cluster=(50 + cfg.train.seed, 20), linear=(70, 30))

    monkeypatch.setattr(ablation, "train_and_evaluate", fake_train)
    base = load_preset("synthetic")  # paper fidelity: the component 'all' run equals the fidelity 'all paper' run
    variants = [ablation.component_variants()[-1], ablation.fidelity_variants()[0]]
    records = ablation.run_variants(base, variants, [0, 1], prefix="t", results_dir=str(tmp_path), log=None)
    assert calls == ["t-all-s0", "t-all-s1"]
    assert list(records["run"]) == ["t-all-s0", "t-all-s1", "t-all-s0", "t-all-s1"]
    assert list(records["variant"]) == ["all (DFC+FPS+3D-LHP)"] * 2 + ["all paper"] * 2

    calls.clear()
    shared = {}  # two tables (two calls) share a run through one registry
    ablation.run_variants(base, variants[:1], [0], prefix="u", results_dir=str(tmp_path), made=shared, log=None)
    other = ablation.run_variants(base, variants[1:], [0], prefix="v", results_dir=str(tmp_path), made=shared, log=None)
    assert calls == ["u-all-s0"] and list(other["run"]) == ["u-all-s0"]

    calls.clear()
    ablation.run_variants(base, variants[:1], [0, 1], prefix="t", results_dir=str(tmp_path), reuse=True, log=None)
    assert calls == []  # finished with the same config: reused
    ablation.run_variants(
        base.with_overrides({"train.iterations": 7}),
        variants[:1],
        [0],
        prefix="t",
        results_dir=str(tmp_path),
        reuse=True,
        log=None,
    )
    assert calls == ["t-all-s0"]  # another config under the same name: trained again
    calls.clear()
    ablation.run_variants(base, variants[:1], [1], prefix="t", results_dir=str(tmp_path), log=None)
    assert calls == ["t-all-s1"]  # without reuse every run is trained afresh


def _agg_for(cfg, tmp_path):
    rows = []
    for v in ablation.component_variants():
        for seed in (0, 1):
            run = _fake_run(
                tmp_path, f"x-{v.key}-s{seed}", v.config(cfg, seed), cluster=(60 + seed, 30), linear=(80, 40 + seed)
            )
            rows.append(ablation.run_record(run, variant=v, seed=seed))
    records = pd.DataFrame(rows)
    return records, ablation.aggregate(records)


def test_write_table_carries_provenance_and_published_numbers(tmp_path):
    cfg = load_preset("potsdam_vits8", {"model.weights": "random"})
    records, agg = _agg_for(cfg, tmp_path)
    agg = ablation.with_published(agg, cfg)
    by_key = agg.set_index("key")
    assert by_key.loc["stego", "published_cluster"] == "STEGO: 77.0 / 62.6"
    assert by_key.loc["stego", "published_cluster_source"].startswith("V [")
    assert by_key.loc["dfc_fps", "published_cluster"] == "DepthG: not retrieved (X)"  # never invented
    assert by_key.loc["fps", "published_cluster"] == ""
    paths = ablation.write_table(agg, records, cfg=cfg, table="ablation", results_dir=str(tmp_path))
    assert paths["csv"].name == "ablation_potsdam.csv" and paths["md"].name == "ablation_potsdam.md"
    csv = pd.read_csv(paths["csv"])
    for col in (
        "variant",
        "seeds",
        "runs",
        "iterations",
        "git_commit",
        "cluster_acc_mean",
        "cluster_acc_std",
        "linear_miou_mean",
        "crf",
    ):
        assert col in csv.columns, col
    assert len(csv) == 6 and csv["runs"].iloc[0] == "x-stego-s0;x-stego-s1"
    assert len(pd.read_csv(paths["runs_csv"])) == 12
    md = paths["md"].read_text()
    assert "60.5 ± 0.7" in md and "without DenseCRF" in md and "not retrieved (X)" in md
    assert "abc123" in md and anchors.ABLATION_STATUS in md


def test_with_published_leaves_synthetic_tables_alone(tmp_path):
    cfg = load_preset("synthetic")
    records, agg = _agg_for(cfg, tmp_path)
    assert ablation.with_published(agg, cfg).equals(agg)
    shown = ablation.display_table(agg)
    assert list(shown.columns) == [
        "variant",
        "cluster Acc",
        "cluster mIoU",
        "linear Acc",
        "linear mIoU",
        "seeds",
        "runs",
    ]
    md = ablation.markdown(pd.DataFrame({"a": ["x|y"], "b": [1]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_anchor_rows_have_sources_and_status_and_no_invented_depthg_numbers():
    df = anchors.table()
    assert len(df) > 40
    for keys in df["source"]:
        assert keys and all(k in anchors.SOURCES for k in keys.split("+")), keys
    assert set(df["status"]) <= {"V", "T", "X"}
    depthg = df[df["method"] == "DepthG"]
    missing = depthg[depthg["dataset"].isin(["cocostuff27", "potsdam"])]
    assert len(missing) == 5 and (missing["status"] == "X").all()
    assert missing["accuracy"].isna().all() and missing["mIoU"].isna().all()
    city = depthg[(depthg["dataset"] == "cityscapes") & (depthg["probe"] == "cluster")].iloc[0]
    assert (city["accuracy"], city["mIoU"], city["status"]) == (81.6, 23.1, "T")
    numbered = df.dropna(subset=["mIoU"])
    assert (numbered["status"] != "X").all()  # a number always has a source we could read
    assert anchors.cell(missing.iloc[0]) == "not retrieved (X)"
    stego = anchors.published("potsdamraw", backbone="vit_small_patch8", probe="cluster")
    assert list(stego["method"]) == ["STEGO", "DepthG", "PriMaPs-EM + HP"]
    assert anchors.published("synthetic").empty
    assert math.isnan(anchors.published("potsdam", backbone="vit_small_patch8")["mIoU"].iloc[1])


def test_paired_differences_give_a_t_interval_over_seeds():
    """Δ to the baseline is paired by seed; the 95% interval is mean ± t(0.975, n-1) sd / sqrt(n)."""
    import math

    from scipy import stats

    base = [20.0, 22.0, 21.0]
    dfc = [21.0, 24.5, 22.0]  # paired differences 1.0, 2.5, 1.0
    rows = [
        {
            "variant": lab,
            "key": key,
            "seed": s,
            "run": f"{key}-s{s}",
            "iterations": 10,
            "crf": False,
            "eval_images": 8,
            "git_commit": "x",
            "git_dirty": False,
            "cluster_acc": v + 50,
            "cluster_miou": v,
            "linear_acc": v + 50,
            "linear_miou": v,
        }
        for lab, key, vals in (("STEGO baseline", "stego", base), ("+DFC", "dfc", dfc))
        for s, v in enumerate(vals)
    ]
    records = pd.DataFrame(rows)
    out = ablation.paired_differences(ablation.aggregate(records), records)
    d = out.set_index("key")
    diffs = [1.0, 2.5, 1.0]
    mean, sd = sum(diffs) / 3, pd.Series(diffs).std(ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert d.loc["dfc", "d_cluster_miou"] == pytest.approx(mean)
    assert d.loc["dfc", "d_cluster_miou_lo"] == pytest.approx(mean - half)
    assert d.loc["dfc", "d_cluster_miou_hi"] == pytest.approx(mean + half)
    assert d.loc["stego", "d_cluster_miou"] == 0 and d.loc["dfc", "d_pairs"] == 3
    shown = ablation.display_table(out).set_index("variant")
    assert shown.loc["STEGO baseline", "Δ cluster mIoU [95% CI]"] == "–"
    # the interval [1.5 - 2.15, 1.5 + 2.15] contains 0: no star
    assert shown.loc["+DFC", "Δ cluster mIoU [95% CI]"] == f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"
