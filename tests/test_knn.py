"""kNN stage: chunked top-k vs brute force, pooling, reference dropout, the stage with a tiny random backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depthg.cli.prep import main
from depthg.data import knn as knn_mod
from depthg.data.knn import benchmark_knn, channel_dropout, default_chunk, pool_features, run_knn, topk_cosine
from depthg.data.knn_file import knn_path, load_knn
from depthg.errors import ConfigError, DataError
from depthg.files import file_sha256

TINY = dict(backbone="vit_tiny_patch8", weights="random", res=16, device="cpu", progress=False)


def _unit(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, c, generator=g), dim=1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 37, 100, None])
def test_chunked_topk_equals_brute_force(chunk):
    feats, k = _unit(37, 8), 5
    brute = torch.argsort(feats @ feats.T, dim=1, descending=True)[:, :k]
    np.testing.assert_array_equal(topk_cosine(feats, k, chunk).numpy(), brute.numpy())


def test_topk_self_first_and_k_checked():
    nns = topk_cosine(_unit(20, 16), 20, 6)
    assert (nns[:, 0] == torch.arange(20)).all() and nns.dtype == torch.int64
    assert all(sorted(row.tolist()) == list(range(20)) for row in nns)  # k = N: a permutation per row
    with pytest.raises(ConfigError, match="lower --k"):
        topk_cosine(_unit(4, 3), 5)


def test_default_chunk_bounds_the_similarity_block():
    c = default_chunk(50_000)
    assert c * 50_000 * 4 <= knn_mod.CHUNK_BUDGET_BYTES and c >= 1
    assert default_chunk(10) == 10 and default_chunk(10**9) == 1


def test_pool_features_mean_then_unit_norm():
    feats = torch.randn(3, 6, 4, 5)
    pooled = pool_features(feats)
    assert torch.allclose(pooled.norm(dim=1), torch.ones(3))
    assert torch.allclose(pooled, feats.mean((2, 3)) / feats.mean((2, 3)).norm(dim=1, keepdim=True), atol=1e-6)


def test_channel_dropout_is_dropout2d_and_per_item():
    feats = torch.ones(2, 1000, 2, 2)
    out = channel_dropout(feats, [5, 6])
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.9))  # survivors scaled by 1/(1-p)
    assert (out == out[:, :, :1, :1]).all()  # whole channels
    assert 0.05 < (out[:, :, 0, 0] == 0).float().mean().item() < 0.15
    single = channel_dropout(feats[1:], [6])  # same seed -> same mask whatever the batch
    assert torch.equal(single, out[1:])


# ---- the stage ----------------------------------------------------------------------------------------------------


def test_knn_stage_five_crop_metadata_and_skip(synthetic_tree, monkeypatch, capsys):
    data = str(synthetic_tree.data_dir)
    assert main(["fivecrop", "--dataset", "synthetic", "--data-dir", data, "--no-progress"]) == 0
    assert (
        main(
            [
                "knn",
                "--dataset",
                "synthetic",
                "--data-dir",
                data,
                "--backbone",
                "vit_tiny_patch8",
                "--weights",
                "random",
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
        )
        == 0
    )
    out = capsys.readouterr().out
    path = knn_path("synthetic", "train", "vit_tiny_patch8", "five", 16, data)
    assert str(path) in out and path.name == "nns_vit_tiny_patch8_train_five_16.npz"
    nns, meta = load_knn(path, expect=dict(dataset="synthetic", split="train", res=16, crop="five", n_items=20))
    assert nns.shape == (20, 6) and (nns[:, 0] == np.arange(20)).mean() > 0.9
    assert (
        meta["backbone"] == "vit_tiny_patch8"
        and meta["weights"].startswith("random")
        and meta["knn_features"] == "paper"
    )
    assert not (path.parent / "shards").exists()  # merged shards are removed
    # the file records which items, in which order, its rows index: the crops of the sorted source keys
    from depthg.data.item_order import five_crop_ids, order_identity

    order_file = path.parents[1] / "five_crop_0.5" / "order_train.txt"
    assert order_file.read_text().split() == synthetic_tree.keys["train"]
    assert meta["order"] == order_identity(five_crop_ids(synthetic_tree.keys["train"]))
    assert meta["order_source"] == str(order_file)

    def no_backbone(*a, **k):
        raise AssertionError("a finished kNN file must not be recomputed")

    with monkeypatch.context() as m:
        m.setattr(knn_mod, "DinoBackbone", no_backbone)
        assert run_knn("synthetic", data, "train", crop="five", k=6, **TINY) == path
    with pytest.raises(DataError, match="k: 6 -> 5.*--overwrite"):
        run_knn("synthetic", data, "train", crop="five", k=5, **TINY)


def test_knn_files_are_keyed_on_the_weights_content(synthetic_tree, tmp_path):
    """Weights re-made under the same name (the bundled file after `prep pretrain`) do not reuse old neighbours."""
    from depthg.model.backbone import DinoBackbone

    data, weights = str(synthetic_tree.data_dir), tmp_path / "w.pth"
    args = dict(crop="none", k=4, **{**TINY, "weights": str(weights)})
    torch.save(DinoBackbone("vit_tiny_patch8", "random").vit.state_dict(), weights)
    path = run_knn("synthetic", data, "train", **args)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        other = DinoBackbone("vit_tiny_patch8", "random").vit.state_dict()
    torch.save({k: v + torch.randn_like(v) * 0.5 for k, v in other.items()}, weights)  # same name, new content
    with pytest.raises(DataError, match=r"weights_id: 'sha256:[0-9a-f]{64}' -> 'sha256:[0-9a-f]{64}'.*--overwrite"):
        run_knn("synthetic", data, "train", **args)
    assert run_knn("synthetic", data, "train", overwrite=True, **args) == path
    assert load_knn(path)[1]["weights"].endswith(file_sha256(weights)[:12])


def test_knn_sharded_equals_single_process(coco_tree):
    data = coco_tree.data_dir
    single = run_knn("cocostuff27", data, "train", crop="none", k=3, **TINY)
    ref, _ = load_knn(single)
    single.unlink()
    assert run_knn("cocostuff27", data, "train", crop="none", k=3, rank=1, world=2, overwrite=True, **TINY) is None
    assert (single.parent / "shards" / f"{single.stem}.rank1of2.npz").is_file()
    with pytest.raises(DataError, match="no complete set of feature shards"):
        run_knn("cocostuff27", data, "train", crop="none", k=3, merge_only=True, **TINY)
    assert run_knn("cocostuff27", data, "train", crop="none", k=3, rank=0, world=2, **TINY) == single
    np.testing.assert_array_equal(load_knn(single)[0], ref)


def test_knn_reference_fidelity_and_potsdam_is_uncropped(potsdam_tree):
    data = potsdam_tree.data_dir
    path = run_knn("potsdam", data, "val", crop="five", k=2, fidelity="reference", **TINY)
    assert path.name == "nns_vit_tiny_patch8_val_none_16.npz"  # Potsdam is never cropped (METHOD.md §1.1)
    _, meta = load_knn(path)
    assert meta["knn_features"] == "reference" and meta["crop"] == "none" and meta["n_items"] == 2


def test_knn_directory_dataset_and_missing_crops(directory_tree, capsys):
    data = str(directory_tree.data_dir)
    assert (
        main(
            [
                "knn",
                "--dataset",
                "directory:mydir",
                "--data-dir",
                data,
                "--crop",
                "five",
                "--backbone",
                "vit_tiny_patch8",
                "--weights",
                "random",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no five-crop set" in err and "prep fivecrop" in err and "Traceback" not in err
    path = run_knn("directory:mydir", data, "val", crop="none", k=2, **TINY)
    assert path.parent == directory_tree.data_dir / "mydir" / "derived" / "knn"
    assert load_knn(path)[1]["dataset"] == "directory:mydir"


@pytest.mark.slow  # a benchmark: about 7 s on 2 cores
def test_benchmark_knn_small():
    res = benchmark_knn(n=3000, dim=32, k=10, chunk=256, verbose=False)
    assert res["n"] == 3000 and res["chunk"] == 256 and res["seconds"] > 0
    assert res["self_first"] == 1.0
    assert 0 <= res["peak_extra_rss_mb"] < 200  # one 3 MB similarity block plus allocator slack
