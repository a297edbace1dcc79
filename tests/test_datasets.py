"""Datasets, transforms and the kNN file on tiny fake trees in the real layouts (tests/fake_data.py)."""

import fake_data
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from depthg.data import labels as L
from depthg.data.datasets import five_crop_dataset, source_dataset, train_source
from depthg.data.knn_file import knn_path, load_knn, save_knn
from depthg.data.pairs import EvalSet, TrainPairs, build_eval_set, build_train_set
from depthg.data.transforms import depth_tensor, image_tensor, label_tensor, resize_crop, unnormalize
from depthg.errors import ConfigError, DataError
from depthg.presets import load_preset


def _cfg(data_dir, dataset, **over):
    base = {
        "data.dataset": dataset,
        "data.data_dir": str(data_dir),
        "data.res": 16,
        "data.knn_res": 16,
        "data.crop_type": "none",
        "eval.res": 16,
        "model.n_classes": L.dataset_info(dataset).n_classes or 4,
    }
    return load_preset("synthetic", {**base, **over})


# ---- source datasets per layout ------------------------------------------------------------------------------


def test_cocostuff_source(coco_tree, data_dir):
    ds = source_dataset("cocostuff27", data_dir, "train")
    assert ds.keys() == coco_tree.keys["train"] and len(source_dataset("cocostuff27", data_dir, "val")) == 2
    item, raw = ds[1], coco_tree.raw["train"][ds.keys()[1]]
    assert item["image"].size == (32, 24) and item["image"].mode == "RGB"
    fine = raw["label"].astype(np.int64)
    assert np.array_equal(item["label"], np.where(fine == 255, -1, L.COCO_FINE_TO_COARSE[np.minimum(fine, 181)]))
    assert item["depth_bits"] == 8 and item["depth"].max() == 255 and item["depth"].min() == 0


def test_our_depth_is_preferred(data_dir):
    tree = fake_data.make_cocostuff(data_dir, depth=("zoe", "ours"))
    item = source_dataset("cocostuff27", data_dir, "train")[0]
    assert item["depth_bits"] == 16
    np.testing.assert_allclose(item["depth"], tree.raw["train"][item["key"]]["depth"], atol=1e-3)


def test_cityscapes_source(cityscapes_tree, data_dir):
    ds = source_dataset("cityscapes", data_dir, "train")
    assert ds.keys() == sorted(cityscapes_tree.keys["train"]) and ds.keys()[0].startswith("aachen/aachen_")
    item = ds[0]
    raw = cityscapes_tree.raw["train"][item["key"]]["label"].astype(np.int64) - 7
    assert np.array_equal(item["label"], np.where(raw < 0, -1, raw))
    assert np.array_equal(np.asarray(item["image"]), cityscapes_tree.raw["train"][item["key"]]["image"])
    assert item["depth"].shape == (16, 32)


@pytest.mark.parametrize("img_kind", ["uint8", "float01", "float255"])
def test_potsdam_source(data_dir, img_kind):
    tree = fake_data.make_potsdam(data_dir, img_kind=img_kind)
    ds = source_dataset("potsdam", data_dir, "val")
    item = ds[0]
    raw = tree.raw["val"][item["key"]]
    got = np.asarray(item["image"]).astype(int)
    # float [0,1] is truncated after a float32 multiply by 255, as the release's to_pil_image: off by at most 1
    assert np.abs(got - raw["image"]).max() <= (1 if img_kind == "float01" else 0)
    assert np.array_equal(item["label"], L.map_potsdam3(raw["label"]))
    assert item["depth_bits"] == 8


def test_potsdamraw_source(potsdamraw_tree, data_dir):
    ds = source_dataset("potsdamraw", data_dir, "val", with_depth=False)
    assert ds.keys() == ["0_0_0", "0_0_1", "0_1_0", "0_1_1", "1_0_0", "1_0_1", "1_1_0", "1_1_1"]
    assert ds[3]["label"].shape == (16, 16) and ds[3]["depth"] is None
    with pytest.raises(DataError, match="prep depth --dataset potsdamraw"):
        source_dataset("potsdamraw", data_dir, "train")[0]


def test_directory_source(directory_tree, data_dir):
    ds = source_dataset("directory:mydir", data_dir, "train", with_depth=False, n_classes=4)
    assert ds.keys() == ["img_000", "img_001", "img_002"]
    item = ds[1]  # a PNG: exact pixels
    assert np.array_equal(np.asarray(item["image"]), directory_tree.raw["train"]["img_001"]["image"])
    assert set(np.unique(item["label"])) <= {-1, 0, 1, 2, 3}
    unlabelled = fake_data.make_directory(data_dir, "nolabels", labels=False)
    ev = EvalSet(source_dataset("directory:nolabels", data_dir, "val", with_depth=False), res=8)
    assert len(unlabelled.keys["val"]) == 2 and (ev[0]["label"] == -1).all()


def test_synthetic_source(synthetic_tree, data_dir):
    ds = source_dataset("synthetic", data_dir, "train")
    assert ds.keys() == ["00000", "00001", "00002", "00003"]
    item, raw = ds[2], synthetic_tree.raw["train"]["00002"]
    assert np.array_equal(item["label"], np.where(raw["label"] == 255, -1, raw["label"].astype(np.int64)))
    np.testing.assert_allclose(item["depth"], raw["depth"], atol=1e-3)


@pytest.mark.parametrize("legacy", [False, True])
def test_five_crop_sets(data_dir, legacy):
    tree = fake_data.make_five_crop(data_dir, "cityscapes", n=(11, 5), legacy=legacy)
    ds = five_crop_dataset("cityscapes", data_dir, "train")
    assert ds.keys() == [str(i) for i in range(11)]  # numeric order: 10 after 9
    item = ds[10]
    assert np.array_equal(item["label"], tree.raw["train"]["10"]["label"].astype(np.int64) - 1)
    assert item["depth_bits"] == (8 if legacy else 16)
    # potsdam is never cropped: its training items are the source images
    fake_data.make_potsdam(data_dir)
    assert train_source("potsdam", data_dir, crop="five").keys() == ["train_0", "train_1", "train_2"]


# ---- transforms --------------------------------------------------------------------------------------------------


def test_resize_and_centre_crop_geometry():
    cols = np.tile(np.arange(8), (4, 1))  # [4,8], value = column
    out = label_tensor(cols, 4)  # short side already 4: only the centre crop (columns 2..5)
    assert out.dtype == torch.int64 and out[0].tolist() == [2, 3, 4, 5]
    assert resize_crop(Image.new("RGB", (32, 24)), 16).size == (16, 16)
    lab = np.random.default_rng(0).integers(-1, 5, (24, 32))
    assert set(label_tensor(lab, 10).unique().tolist()) <= set(range(-1, 5))  # NEAREST never blends ids


def test_image_interpolation_and_unnormalize():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    paper, ref = image_tensor(img, 12), image_tensor(img, 12, interpolation="reference")
    assert paper.shape == ref.shape == (3, 12, 12) and paper.dtype == torch.float32
    assert not torch.allclose(paper, ref)
    # reference = NEAREST: every output pixel is one of the source pixels
    src = {tuple(p) for p in np.asarray(img).reshape(-1, 3)}
    std, mean = torch.tensor([0.229, 0.224, 0.225])[:, None, None], torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    rgb = ((ref * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0)
    assert all(tuple(p) in src for p in rgb.reshape(-1, 3).tolist())
    same = image_tensor(img, 24, interpolation="reference")  # no resize, crop columns 4..27
    back = unnormalize(same[None])[0].numpy().astype(int)
    assert back.shape == (24, 24, 3) and np.abs(back - np.asarray(img)[:, 4:28]).max() <= 1


def test_depth_semantics_per_fidelity(potsdam_tree, data_dir):
    item = source_dataset("potsdam", data_dir, "train")[0]
    paper = depth_tensor(item["depth"], 16, fidelity="paper", dataset="potsdam", is_8bit=True)
    ref = depth_tensor(item["depth"], 16, fidelity="reference", dataset="potsdam", is_8bit=True)
    assert paper.shape == ref.shape == (1, 16, 16)
    assert 0 <= paper.min() and paper.max() <= 1 and paper.var() > 0.01  # METHOD.md §9 #4: non-trivial variance
    assert set(ref.unique().tolist()) <= {0.0, 1.0} and ref.mean() < 0.05  # the release's truncation bug
    coco = depth_tensor(item["depth"], 16, fidelity="reference", dataset="cocostuff27", is_8bit=True)
    assert torch.equal(coco, torch.floor(coco)) and coco.max() <= 255 and coco.max() > 100
    # NEAREST after the conversion = the release's resize of the raw 8-bit values
    raw8 = Image.fromarray(item["depth"].astype(np.uint8))
    assert np.array_equal(coco[0].numpy(), np.asarray(resize_crop(raw8, 16), np.float32))


# ---- training pairs and evaluation set ---------------------------------------------------------------------------


def _pairs(data_dir, seed=0):
    fake_data.make_synthetic(data_dir, n=(12, 2))
    path = fake_data.make_knn(data_dir, "synthetic", "train", 12, res=16, crop="none")
    nns, _ = load_knn(path)
    return TrainPairs(source_dataset("synthetic", data_dir, "train"), nns, res=16, seed=seed)


def test_partner_ranks_are_1_to_7(data_dir):
    pairs = _pairs(data_dir)
    ranks = []
    for epoch in range(4):
        pairs.set_epoch(epoch)
        ranks += [pairs.partner(i)[0] for i in range(len(pairs))]
    assert set(ranks) == set(range(1, 8)), "every rank 1..7 is drawn and rank 0 (self) never"
    r, j = pairs.partner(5)
    assert j == pairs.nns[5, r] and pairs.partner(5) == (r, j)
    item = pairs[5]
    assert item["index"] == 5 and item["index_pos"] == j and item["index_pos"] != 5
    for k, shape, dtype in (
        ("img", (3, 16, 16), torch.float32),
        ("label", (16, 16), torch.int64),
        ("depth", (1, 16, 16), torch.float32),
    ):
        assert item[k].shape == item[k + "_pos"].shape == shape and item[k].dtype == dtype


def test_pairs_deterministic_under_dataloader(data_dir):
    pairs = _pairs(data_dir)

    def run(workers):
        loader = DataLoader(
            pairs, batch_size=4, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(3)
        )
        return [(b["index"].tolist(), b["index_pos"].tolist()) for b in loader]

    assert run(0) == run(0) == run(2)
    before = [pairs.partner(i) for i in range(12)]
    pairs.set_epoch(1)
    assert [pairs.partner(i) for i in range(12)] != before


def test_eval_set(coco_tree, data_dir):
    ev = EvalSet(source_dataset("cocostuff27", data_dir, "val", with_depth=False), res=20)
    item = ev[1]
    assert set(item) == {"img", "label", "index"} and item["img"].shape == (3, 20, 20)
    assert item["label"].shape == (20, 20) and item["label"].dtype == torch.int64 and item["index"] == 1


def test_build_sets_from_config(data_dir):
    fake_data.make_synthetic(data_dir, n=(9, 3))
    fake_data.make_knn(data_dir, "synthetic", "train", 9, backbone="vit_tiny_patch8", res=16, crop="none")
    cfg = _cfg(data_dir, "synthetic")
    train = build_train_set(cfg)
    assert len(train) == 9 and train[0]["img"].shape == (3, 16, 16)
    assert 0 <= train[0]["depth"].min() and train[0]["depth"].max() <= 1  # paper fidelity
    ev = build_eval_set(cfg)
    assert len(ev) == 3 and ev[0]["img"].shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="n_classes"):
        build_eval_set(cfg.with_overrides({"model.n_classes": 27}))


def test_build_train_five_crop_and_legacy_knn(data_dir):
    with pytest.raises(DataError, match="cocostuff does not exist"):  # no dataset: that, not its crops, is named
        build_train_set(_cfg(data_dir, "cocostuff27", **{"data.crop_type": "five"}))
    fake_data.make_cocostuff(data_dir)
    with pytest.raises(DataError, match="prep fivecrop --dataset cocostuff27"):  # the source, but no crops yet
        build_train_set(_cfg(data_dir, "cocostuff27", **{"data.crop_type": "five"}))
    fake_data.make_five_crop(data_dir, "cocostuff27", n=(10, 5), legacy=True, order=True)
    cfg = _cfg(
        data_dir,
        "cocostuff27",
        **{"data.crop_type": "five", "model.backbone": "vit_small_patch8", "fidelity": "reference"},
    )
    with pytest.raises(DataError, match="prep knn --dataset cocostuff27"):
        build_train_set(cfg)
    # the release's kNN file is accepted only with the item order it was built on (issue 8 item 5)
    path = fake_data.make_knn(data_dir, "cocostuff27", "train", 10, res=16, crop="five", legacy=True)
    with pytest.raises(DataError, match=r"without the item order.*order\.txt.*os\.listdir"):
        build_train_set(cfg)
    order_file = path.with_suffix(".order.txt")
    order_file.write_text("src0001\nsrc0000\n")  # built on another order of the same two source images
    with pytest.raises(DataError, match="another item order"):
        build_train_set(cfg)
    order_file.write_text("src0000\nsrc0001\n")
    item = build_train_set(cfg)[0]
    assert item["depth"].max() > 1 and torch.equal(item["depth"], item["depth"].floor())  # reference: 0..255


def test_shuffled_knn_file_is_refused_naming_both_files_and_the_rebuild(data_dir):
    """A kNN file of the right length built on another order of the same crops pairs images with wrong partners."""
    from depthg.data.item_order import five_crop_ids, order_identity

    fake_data.make_five_crop(data_dir, "cocostuff27", n=(10, 5))
    cfg = _cfg(data_dir, "cocostuff27", **{"data.crop_type": "five", "model.backbone": "vit_small_patch8"})
    path = fake_data.make_knn(data_dir, "cocostuff27", "train", 10, res=16, crop="five")
    assert len(build_train_set(cfg)) == 10  # the file of these crops is accepted
    nns, meta = load_knn(path)
    shuffled = order_identity(five_crop_ids(["src0001", "src0000"]))
    save_knn(
        path,
        nns,
        dataset="cocostuff27",
        split="train",
        backbone="vit_small_patch8",
        weights="random",
        res=16,
        crop="five",
        knn_features="paper",
        order=shuffled,
        order_source="/elsewhere/order_train.txt",
    )
    with pytest.raises(DataError) as err:
        build_train_set(cfg)
    message = str(err.value)
    assert "another item order" in message and str(path) in message and "/elsewhere/order_train.txt" in message
    assert "order_train.txt" in message.replace("/elsewhere/order_train.txt", "")  # the crops' own order file
    assert "prep knn --dataset cocostuff27" in message and "--overwrite" in message
    save_knn(
        path,
        nns,
        dataset="cocostuff27",
        split="train",
        backbone="vit_small_patch8",
        weights="random",
        res=16,
        crop="five",
        knn_features="paper",
    )
    with pytest.raises(DataError, match="records no item order"):
        build_train_set(cfg)


def test_build_potsdam_is_never_cropped(potsdam_tree, data_dir):
    fake_data.make_knn(data_dir, "potsdam", "train", 3, backbone="vit_tiny_patch8", res=16, crop="none")
    pairs = build_train_set(_cfg(data_dir, "potsdam", **{"data.crop_type": "five"}))
    assert len(pairs) == 3 and pairs.source.keys() == potsdam_tree.keys["train"]


def test_potsdam_training_depth_variance_per_fidelity(potsdam_tree, data_dir):
    """METHOD.md §9 #4: paper-fidelity Potsdam depth varies; the release's (reference) is ~all zeros."""
    fake_data.make_knn(data_dir, "potsdam", "train", 3, backbone="vit_tiny_patch8", res=16, crop="none")
    paper = build_train_set(_cfg(data_dir, "potsdam"))[0]["depth"]
    ref = build_train_set(_cfg(data_dir, "potsdam", **{"fidelity.depth_loading": "reference"}))[0]["depth"]
    assert paper.var() > 0.01 and ref.var() < 0.01 and (ref == 0).float().mean() > 0.9


def test_build_refuses_knn_of_other_resolution_and_warns_on_features(data_dir):
    fake_data.make_synthetic(data_dir, n=(9, 3))
    path = fake_data.make_knn(data_dir, "synthetic", "train", 9, backbone="vit_tiny_patch8", res=392, crop="none")
    path.rename(knn_path("synthetic", "train", "vit_tiny_patch8", "none", 16, data_dir))  # METHOD.md §9 #8
    with pytest.raises(DataError, match="res=392.*res=16"):
        build_train_set(_cfg(data_dir, "synthetic"))
    fake_data.make_knn(
        data_dir, "synthetic", "train", 9, backbone="vit_tiny_patch8", res=16, crop="none", knn_features="reference"
    )
    with pytest.warns(UserWarning, match="knn_features='reference'"):
        build_train_set(_cfg(data_dir, "synthetic"))
    fake_data.make_knn(data_dir, "synthetic", "train", 9, backbone="vit_tiny_patch8", res=16, crop="none", k=5)
    with pytest.raises(DataError, match="num_neighbors=7"):
        build_train_set(_cfg(data_dir, "synthetic"))


# ---- the kNN file ------------------------------------------------------------------------------------------------


def test_knn_roundtrip_and_checks(data_dir):
    nns = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    path = knn_path("potsdam", "train", "vit_small_patch8", "none", 224, data_dir)
    save_knn(
        path,
        nns,
        dataset="potsdam",
        split="train",
        backbone="vit_small_patch8",
        weights="hub",
        res=224,
        crop="none",
        knn_features="paper",
    )
    got, meta = load_knn(path, expect=dict(dataset="potsdam", split="train", res=224, crop="none", n_items=3))
    assert np.array_equal(got, nns) and got.dtype == np.int64 and meta["weights"] == "hub"
    for key, bad in (("dataset", "cocostuff27"), ("split", "val"), ("res", 392), ("crop", "five")):
        with pytest.raises(DataError, match=rf"{key}=.*{bad}"):
            load_knn(path, expect={key: bad})
    with pytest.raises(DataError, match="3 rows.*5 items"):
        load_knn(path, expect=dict(n_items=5))
    with pytest.raises(DataError, match="0..2"):
        save_knn(
            path,
            nns + 1,
            dataset="potsdam",
            split="train",
            backbone="b",
            weights="w",
            res=1,
            crop="none",
            knn_features="paper",
        )


def test_knn_legacy_name_and_bad_files(data_dir):
    path = fake_data.make_knn(data_dir, "cocostuff27", "val", 4, res=224, crop="none", k=3, legacy=True)
    assert path.name == "nns_vit_small_cocostuff27_val_None_224.npz"
    nns, meta = load_knn(
        path, expect=dict(dataset="cocostuff27", split="val", crop="none", backbone="vit_small_patch16", n_items=4)
    )
    assert nns.shape == (4, 3) and meta["res"] == 224
    with pytest.raises(DataError, match="res=224.*res=320"):
        load_knn(path, expect=dict(res=320))
    bad_name = path.with_name("neighbours.npz")
    np.savez_compressed(bad_name, nns=np.zeros((2, 2), np.int64))
    with pytest.raises(DataError, match="no metadata"):
        load_knn(bad_name)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot be read"):
        load_knn(path)
    out_of_range = path.with_name("nns_vit_small_potsdam_train_five_224.npz")
    np.savez_compressed(out_of_range, nns=np.array([[0, 7], [1, 0]]))
    with pytest.raises(DataError, match="outside 0..1"):
        load_knn(out_of_range)


# ---- bad input gets one clear DataError --------------------------------------------------------------------------


def test_missing_root_and_unknown_name(data_dir):
    with pytest.raises(DataError, match=r"cocostuff.*does not exist.*data_dir"):
        source_dataset("cocostuff27", data_dir, "train")
    with pytest.raises(DataError, match="unknown dataset 'kitti'"):
        source_dataset("kitti", data_dir)
    fake_data.make_cocostuff(data_dir)
    with pytest.raises(DataError, match="no split 'test'"):
        source_dataset("cocostuff27", data_dir, "test")
    (data_dir / "cocostuff" / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("")
    with pytest.raises(DataError, match=r"split 'val' has no items in .*Coarse_7\.txt"):
        source_dataset("cocostuff27", data_dir, "val")


def test_missing_or_unreadable_files(coco_tree, data_dir):
    root = data_dir / "cocostuff"
    k0, k1, k2 = coco_tree.keys["train"]
    (root / "images" / "train2017" / f"{k0}.jpg").unlink()
    (root / "images" / "train2017" / f"{k1}.jpg").write_bytes(b"not a jpeg")
    (root / "annotations" / "train2017" / f"{k2}.png").unlink()
    ds = source_dataset("cocostuff27", data_dir, "train")
    with pytest.raises(DataError, match=rf"image file .*{k0}\.jpg does not exist"):
        ds[0]
    with pytest.raises(DataError, match=rf"image file .*{k1}\.jpg cannot be read"):
        ds[1]
    with pytest.raises(DataError, match=rf"label file .*{k2}\.png does not exist"):
        ds[2]


def test_depth_missing_or_wrong_size(coco_tree, data_dir):
    depth_dir = data_dir / "cocostuff" / "depth" / "train2017"
    k0, k1, _ = coco_tree.keys["train"]
    (depth_dir / f"{k0}_zoedepth.png").unlink()
    fake_data.write_png(depth_dir / f"{k1}_zoedepth.png", np.zeros((5, 5), np.uint8))
    ds = source_dataset("cocostuff27", data_dir, "train")
    with pytest.raises(DataError, match=rf"no depth map .*{k0}_zoedepth\.png.*prep depth --dataset cocostuff27"):
        ds[0]
    with pytest.raises(DataError, match=rf"{k1}_zoedepth\.png is \(5, 5\) but its image is \(24, 32\)"):
        ds[1]
    assert source_dataset("cocostuff27", data_dir, "train", with_depth=False)[0]["depth"] is None


def test_labels_out_of_range(coco_tree, data_dir, potsdam_tree):
    key = coco_tree.keys["val"][0]
    fake_data.write_png(
        data_dir / "cocostuff" / "annotations" / "val2017" / f"{key}.png", np.full((24, 32), 200, np.uint8)
    )
    with pytest.raises(DataError, match=rf"{key}\.png holds value\(s\) 200"):
        source_dataset("cocostuff27", data_dir, "val")[0]
    fake_data.write_mat(data_dir / "potsdam" / "gt" / "val_0.mat", gt=np.full((20, 20), 9, np.uint8))
    with pytest.raises(DataError, match=r"val_0\.mat holds value\(s\) 9"):
        source_dataset("potsdam", data_dir, "val")[0]
    fake_data.write_mat(data_dir / "potsdam" / "gt" / "val_1.mat", gt=np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match=r"gt/val_1\.mat is \(3, 3\) but its image .*imgs/val_1\.mat is \(20, 20\)"):
        source_dataset("potsdam", data_dir, "val")[1]
