"""UnsupervisedMetrics: golden parity with the release (fixture e), brute-force Hungarian checks, over-clustering."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from depthg.errors import ConfigError
from depthg.evaluation.metrics import UnsupervisedMetrics

GOLDEN = Path(__file__).parent / "golden" / "e_metrics.npz"


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def check_scores(result, g, prefix):
    # Tolerances from tests/golden/README.md: the reference computes the scores in float32.
    assert result["mIoU"] == pytest.approx(float(g[prefix + "mIoU"]), abs=1e-4)
    assert result["accuracy"] == pytest.approx(float(g[prefix + "Accuracy"]), abs=1e-4)


def test_golden_hungarian_two_updates(golden):
    g = golden
    m = UnsupervisedMetrics(27)
    m.update(g["h_preds1"], g["h_labels1"])  # numpy batch
    m.update(torch.from_numpy(g["h_preds2"]), torch.from_numpy(g["h_labels2"]))  # torch batch
    r = m.compute()
    np.testing.assert_array_equal(r["stats"], g["h_stats"])
    np.testing.assert_array_equal(r["histogram"], g["h_histogram"])
    np.testing.assert_array_equal(r["assignment"], g["h_col_ind"])
    np.testing.assert_allclose(r["iou"], g["h_iou"], rtol=1e-6)
    np.testing.assert_array_equal(m.map_clusters(np.arange(27)), g["h_map_clusters_arange"])
    check_scores(r, g, "h_")


def test_golden_nan_classes_excluded(golden):
    g = golden
    m = UnsupervisedMetrics(27)
    m.update(g["nan_preds"], g["nan_labels"])
    r = m.compute()
    np.testing.assert_array_equal(r["stats"], g["nan_stats"])
    np.testing.assert_array_equal(r["histogram"], g["nan_histogram"])
    np.testing.assert_array_equal(r["assignment"], g["nan_col_ind"])
    assert np.isnan(r["iou"][25:]).all() and not np.isnan(r["iou"][:25]).any()
    np.testing.assert_allclose(r["iou"], g["nan_iou"], rtol=1e-6)
    check_scores(r, g, "nan_")


def test_golden_linear_probe(golden):
    g = golden
    m = UnsupervisedMetrics(27, hungarian=False)
    m.update(g["lin_preds"], g["lin_labels"])
    r = m.compute()
    np.testing.assert_array_equal(r["stats"], g["lin_stats"])
    np.testing.assert_array_equal(r["assignment"], np.arange(27))
    check_scores(r, g, "lin_")


def test_golden_release_extra_clusters(golden):
    g = golden
    m = UnsupervisedMetrics(27, extra_clusters=3, extra_rule="release")
    m.update(g["extra_preds"], g["extra_labels"])
    r = m.compute()
    np.testing.assert_array_equal(r["stats"], g["extra_stats"])
    np.testing.assert_array_equal(r["histogram"], g["extra_histogram"])
    np.testing.assert_array_equal(m.map_clusters(np.arange(30)), g["extra_map_clusters_arange"])
    check_scores(r, g, "extra_")


def test_extra_clusters_are_counted_unlike_the_release(golden):
    g = golden
    preds, labels = g["extra_preds"], g["extra_labels"]
    valid = (labels >= 0) & (labels < 27)
    assert (preds[valid] >= 27).any(), "fixture must hold predictions in the extra clusters"
    ours = UnsupervisedMetrics(27, extra_clusters=3)
    ours.update(preds, labels)
    r = ours.compute()
    assert r["stats"].sum() == valid.sum()  # every labelled pixel counts; the release drops preds >= 27
    assert r["stats"][27:].sum() > 0
    assert (r["assignment"] >= 0).sum() == 27 and (r["assignment"] == -1).sum() == 3


def random_stats(rng, n_clusters, n_classes):
    """Labels/preds whose confusion matrix is a random (slightly diagonal-heavy) count matrix."""
    counts = rng.integers(0, 40, size=(n_clusters, n_classes))
    counts[rng.permutation(n_clusters)[:n_classes], np.arange(n_classes)] += rng.integers(0, 60, n_classes)
    preds = np.repeat(np.arange(n_clusters), counts.sum(1))
    labels = np.concatenate([np.repeat(np.arange(n_classes), row) for row in counts])
    return counts, preds, labels


def brute_force(counts, n_classes):
    """Best injective class -> cluster map by exhaustive search: (max matched pixels, mIoUs of all maxima)."""
    total, best, mious = counts.sum(), -1, []
    for clusters in itertools.permutations(range(len(counts)), n_classes):
        tp = counts[list(clusters), np.arange(n_classes)]
        predicted = counts[list(clusters)].sum(1)
        union = predicted + counts.sum(0) - tp  # unmatched clusters' pixels are errors of their label
        with np.errstate(invalid="ignore"):
            miou = np.nanmean(tp / union) * 100
        if tp.sum() > best:
            best, mious = tp.sum(), [miou]
        elif tp.sum() == best:
            mious.append(miou)
    return best / total * 100, mious


@pytest.mark.parametrize("n_classes,extra", [(2, 0), (3, 0), (4, 0), (5, 0), (3, 2), (4, 1)])
def test_hungarian_equals_brute_force(n_classes, extra):
    rng = np.random.default_rng(100 * n_classes + extra)
    for _ in range(5):
        counts, preds, labels = random_stats(rng, n_classes + extra, n_classes)
        m = UnsupervisedMetrics(n_classes, extra_clusters=extra)
        order = rng.permutation(len(preds))  # pixel order must not matter
        m.update(preds[order], labels[order])
        np.testing.assert_array_equal(m.stats, counts)
        r = m.compute()
        accuracy, mious = brute_force(counts, n_classes)
        assert r["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert any(r["mIoU"] == pytest.approx(v, abs=1e-9) for v in mious)


def test_extra_cluster_rules_on_a_hand_case():
    # n=2, one extra cluster: cluster0 = class0 (10 px), cluster1 = class1 (10 px), cluster2 = class1 (5 px).
    preds = np.array([0] * 10 + [1] * 10 + [2] * 5)
    labels = np.array([0] * 10 + [1] * 15)
    one = UnsupervisedMetrics(2, extra_clusters=1)
    one.update(preds, labels)
    r = one.compute()
    np.testing.assert_array_equal(r["assignment"], [0, 1, -1])
    np.testing.assert_array_equal(r["unmatched"], [0, 5])
    assert r["accuracy"] == pytest.approx(80.0)
    assert r["mIoU"] == pytest.approx((1 + 10 / 15) / 2 * 100)
    majority = UnsupervisedMetrics(2, extra_clusters=1, extra_rule="majority")
    majority.update(preds, labels)
    r = majority.compute()
    np.testing.assert_array_equal(r["assignment"], [0, 1, 1])
    assert r["accuracy"] == pytest.approx(100.0) and r["mIoU"] == pytest.approx(100.0)
    np.testing.assert_array_equal(majority.map_clusters(torch.tensor([[2, 0]])), torch.tensor([[1, 0]]))


def test_class_found_only_by_an_extra_cluster_is_matched():
    # Class 1 is predicted only by cluster 2 (>= n): the release would drop it and score class 1 as IoU 0.
    preds, labels = np.array([0] * 8 + [2] * 8), np.array([0] * 8 + [1] * 8)
    m = UnsupervisedMetrics(2, extra_clusters=1)
    m.update(preds, labels)
    r = m.compute()
    assert r["accuracy"] == pytest.approx(100.0) and r["mIoU"] == pytest.approx(100.0)
    np.testing.assert_array_equal(r["assignment"][[0, 2]], [0, 1])


def test_ignored_labels_and_bad_predictions():
    m = UnsupervisedMetrics(3)
    m.update(torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 1, -1, 255, 3]))
    assert m.stats.sum() == 2
    with pytest.raises(ConfigError, match="extra_clusters"):
        m.update(np.array([0, 3]), np.array([0, 1]))  # cluster 3 does not exist with n=3, extra=0
    with pytest.raises(ConfigError):
        UnsupervisedMetrics(3, extra_clusters=2, hungarian=False)
    with pytest.raises(ConfigError):
        UnsupervisedMetrics(3, extra_rule="best")


def test_linear_metrics_do_not_match():
    labels = np.repeat(np.arange(3), 10)
    lin, hung = UnsupervisedMetrics(3, hungarian=False), UnsupervisedMetrics(3)
    for m in (lin, hung):
        m.update((labels + 1) % 3, labels)  # a perfect but permuted prediction
    assert lin.compute()["accuracy"] == 0.0 and hung.compute()["accuracy"] == pytest.approx(100.0)


def test_merge_state_dict_and_sync(tmp_path):
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 5, (2, 8, 8)), rng.integers(-1, 5, (2, 8, 8))) for _ in range(3)]
    whole, a, b = UnsupervisedMetrics(5), UnsupervisedMetrics(5), UnsupervisedMetrics(5)
    for i, (p, t) in enumerate(batches):
        whole.update(p, t)
        (a if i % 2 else b).update(p, t)
    restored = UnsupervisedMetrics(5)
    restored.load_state_dict(a.state_dict())
    restored.merge(b)
    np.testing.assert_array_equal(restored.stats, whole.stats)
    assert restored.compute()["mIoU"] == whole.compute()["mIoU"]
    # all-reduce over a one-rank gloo group keeps the sums (the DDP code path; more ranks just add).
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        restored.sync()
    finally:
        torch.distributed.destroy_process_group()
    np.testing.assert_array_equal(restored.stats, whole.stats)
