"""The synthetic RGB-D world (depthg.data.synthetic; DESIGN.md §5): determinism, exact depth, the ambiguities."""

import json

import numpy as np
import pytest
from PIL import Image

from depthg.data.depth_io import read_depth
from depthg.data.synthetic import (
    BOX,
    CLASS_NAMES,
    CLIP,
    FAR,
    GROUND,
    PILLAR,
    SKY,
    VAL_OFFSET,
    WALL,
    render_scene,
    write_synthetic,
)

RES = 96
N_SCENES = 24


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(7, i, RES, debug=True) for i in range(N_SCENES)]


def _objects(scene):
    return {o["id"]: o for o in scene["objects"]}


def test_outputs_and_determinism():
    a, b = render_scene(3, 5, 64), render_scene(3, 5, 64)
    assert a["image"].dtype == np.uint8 and a["image"].shape == (64, 64, 3)
    assert a["depth"].dtype == np.float32 and a["label"].dtype == np.int64 and a["label"].shape == (64, 64)
    for k in ("image", "depth", "label"):
        assert a[k].tobytes() == b[k].tobytes(), k
    assert not np.array_equal(a["image"], render_scene(3, 6, 64)["image"])
    assert not np.array_equal(a["image"], render_scene(4, 5, 64)["image"])


def test_labels_and_depth_consistent(scenes):
    for s in scenes:
        d, lab = s["depth"], s["label"]
        assert np.isfinite(d).all() and d.min() > 0
        assert lab.min() >= 0 and lab.max() < len(CLASS_NAMES)
        sky = lab == SKY
        assert np.all(d[sky] == FAR) and d[~sky].max() <= CLIP < FAR  # sky is the farthest class
    assert sum((s["label"] == SKY).any() for s in scenes) >= 0.9 * len(scenes), "walls may hide the sky, rarely"


def test_ground_depth_is_exact_and_grows_toward_horizon(scenes):
    for s in scenes:
        cam, lab, d = s["camera"], s["label"], s["depth"]
        f = (RES / 2) / np.tan(np.radians(cam["hfov_deg"]) / 2)
        p = np.radians(cam["pitch_deg"])
        yc = -(np.arange(RES) + 0.5 - RES / 2) / f  # camera-frame ray height per row, camera z = 1
        expected = cam["height"] / (np.sin(p) - yc * np.cos(p))  # camera z where the row's rays meet y = 0
        rows, cols = np.nonzero(lab == GROUND)
        np.testing.assert_allclose(d[rows, cols], expected[rows], rtol=1e-4)
        for c in np.unique(cols)[::7]:
            col = d[:, c][lab[:, c] == GROUND]  # top to bottom
            assert np.all(np.diff(col) < 0), "moving up the image, ground depth must increase"


def test_every_class_appears(scenes):
    seen = set().union(*(np.unique(s["label"]).tolist() for s in scenes))
    assert seen == set(range(len(CLASS_NAMES)))


def test_shadows_and_lighting_gradient(scenes):
    ok = 0
    for s in scenes:
        ground = (s["label"] == GROUND) & (s["material"] == 0)  # one surface, one material
        shadowed, lit = ground & s["shadow"], ground & ~s["shadow"]
        if shadowed.sum() < 20 or lit.sum() < 20:
            continue
        grey = s["image"].astype(float).mean(2)
        shade = s["shading"]
        ok += (
            grey[shadowed].mean() < 0.9 * grey[lit].mean()  # haze lifts far shadows a little
            and shade[shadowed].mean() < 0.7 * shade[lit].mean()
            and np.ptp(shade[lit]) > 0.05
        )  # the lamp's fall-off: a gradient across the lit ground
    assert ok >= 0.85 * len(scenes), ok


def test_texture_shared_by_wall_and_box(scenes):
    ok = 0
    for s in scenes:
        box_id = s["info"]["shared_wall_box"]
        if box_id is None:
            continue
        mat = _objects(s)[box_id]["material"]
        on_box = s["instance"] == box_id
        on_wall = (s["label"] == WALL) & (s["material"] == mat)
        assert np.all(s["label"][on_box] == BOX)
        if on_box.sum() >= 20 and on_wall.sum() >= 20:
            box_c, wall_c = s["albedo"][on_box], s["albedo"][on_wall]
            both = np.concatenate([box_c, wall_c])
            sv = np.linalg.svd(both - both.mean(0), compute_uv=False)
            # textured on both, and all colours mixes of the same two colours (one line in RGB)
            ok += box_c.std(0).max() > 0.02 and wall_c.std(0).max() > 0.02 and sv[1] < 1e-3 * sv[0]
    assert ok >= 0.7 * len(scenes), ok


def test_same_colour_objects_at_different_depths(scenes):
    ok = 0
    for s in scenes:
        t1, t2 = s["info"]["twins"]
        if t2 is None:
            continue
        m1, m2 = (s["instance"] == t1), (s["instance"] == t2)
        if m1.sum() < 10 or m2.sum() < 10:
            continue
        assert _objects(s)[t1]["material"] == _objects(s)[t2]["material"]
        c1, c2 = np.unique(s["albedo"][m1], axis=0), np.unique(s["albedo"][m2], axis=0)
        assert len(c1) == 1 and np.array_equal(c1, c2), "twins share one plain colour"
        ok += np.median(s["depth"][m2]) > 1.5 * np.median(s["depth"][m1])
    assert ok >= 0.8 * len(scenes), ok


def test_occlusion(scenes):
    forced = 0
    for s in scenes:
        objs = _objects(s)
        assert any(0 < o["visible"] < o["solo"] for o in objs.values()), "some object is partly hidden"
        a, b = s["info"]["occlusion"]
        if b is not None and 0 < objs[b]["visible"] < objs[b]["solo"]:
            hidden = np.median(s["depth"][s["instance"] == a]) < objs[b]["z"]
            forced += hidden
    assert forced >= 0.7 * len(scenes), forced


def test_thin_and_small_far_structures(scenes):
    """A thin pole and a small object far away, each visible and narrower than one 8 px patch at 112 px."""
    ok = 0
    for s in scenes:
        for key in ("far_thin", "far_small"):
            j = s["info"][key]
            if j is None:
                continue
            m = s["instance"] == j
            if m.sum() == 0:
                continue
            width = np.ptp(np.nonzero(m)[1]) + 1  # columns spanned, at RES px
            far = np.median(s["depth"][m]) >= 10
            ok += far and width * 112 / RES < 8 and (key != "far_thin" or s["label"][m][0] == PILLAR)
    assert ok >= 0.7 * 2 * len(scenes), ok


def test_writer_layout_and_idempotence(tmp_path):
    root = tmp_path / "synthetic"
    write_synthetic(root, n_train=3, n_val=2, res=32, seed=1, progress=False)
    man = json.loads((root / "manifest.json").read_text())
    assert (man["n_train"], man["n_val"], man["res"], man["seed"]) == (3, 2, 32, 1)
    assert man["classes"] == list(CLASS_NAMES)
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            for kind in ("img", "label", "depth"):
                assert (root / kind / split / f"{i:05d}.png").is_file()
            assert (root / "depth" / split / f"{i:05d}.json").is_file()
    ref = render_scene(1, 1, 32)
    assert np.array_equal(np.asarray(Image.open(root / "img/train/00001.png")), ref["image"])
    lab = np.asarray(Image.open(root / "label/train/00001.png"))
    assert lab.dtype == np.uint8 and np.array_equal(lab, ref["label"])
    d = read_depth(root / "depth/train/00001.png")
    assert np.abs(d - ref["depth"]).max() <= (ref["depth"].max() - ref["depth"].min()) / 65535 + 1e-4
    val0 = render_scene(1, VAL_OFFSET, 32)
    assert np.array_equal(np.asarray(Image.open(root / "img/val/00000.png")), val0["image"])

    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    write_synthetic(root, n_train=3, n_val=2, res=32, seed=1, progress=False)  # complete: nothing rewritten
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files if p.name != "manifest.json")
    gone = root / "img/train/00002.png"
    gone.unlink()
    write_synthetic(root, n_train=3, n_val=2, res=32, seed=1, progress=False)  # only the missing item
    assert gone.is_file() and (root / "img/train/00000.png").stat().st_mtime_ns == stamps[root / "img/train/00000.png"]
    write_synthetic(root, n_train=2, n_val=2, res=32, seed=1, progress=False)  # new parameters: no stale scenes
    assert not (root / "img/train/00002.png").exists() and not (root / "depth/train/00002.json").exists()
    assert json.loads((root / "manifest.json").read_text())["n_train"] == 2


def test_regenerating_with_other_parameters_drops_stale_derived_data(tmp_path):
    root = tmp_path / "synthetic"
    write_synthetic(root, n_train=2, n_val=1, res=32, seed=0, progress=False)
    stale = root / "derived" / "knn" / "nns_x_train_none_32.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write_synthetic(root, n_train=2, n_val=1, res=32, seed=0, progress=False)  # same world: kept
    assert stale.is_file()
    write_synthetic(root, n_train=3, n_val=1, res=32, seed=0, progress=False)  # another world: dropped
    assert not stale.exists() and (root / "img" / "train" / "00002.png").is_file()


def test_a_killed_world_keeps_its_finished_scenes(tmp_path, monkeypatch):
    """A kill after two scenes: the rerun with the same parameters renders only the rest (issue 15 item 4)."""
    import depthg.data.synthetic.world as world

    real, calls = world.render_scene, []

    def dies_after_two(seed, index, res):
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for the kill
        calls.append(index)
        return real(seed, index, res)

    monkeypatch.setattr(world, "render_scene", dies_after_two)
    root = tmp_path / "synthetic"
    with pytest.raises(KeyboardInterrupt):
        world.write_synthetic(root, n_train=3, n_val=2, res=32, seed=1, progress=False)
    assert not (root / "manifest.json").exists() and (root / ".pending.json").is_file()
    assert not [p for p in root.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]  # no temp leftovers
    monkeypatch.setattr(world, "render_scene", lambda s, i, r: (calls.append(i), real(s, i, r))[1])
    world.write_synthetic(root, n_train=3, n_val=2, res=32, seed=1, progress=False)
    assert calls == [0, 1, 2, world.VAL_OFFSET, world.VAL_OFFSET + 1]  # scenes 0 and 1 were not rendered again
    assert (root / "manifest.json").is_file() and not (root / ".pending.json").exists()


def test_each_situation_of_the_paper_is_found_and_marked():
    """04_figures shows one validation scene per situation; each mask holds the pixels the situation names."""
    from depthg.data.synthetic.situations import SITUATIONS, find_situations

    found = find_situations(seed=0, res=RES)
    assert [f["key"] for f in found] == list(SITUATIONS)
    for f in found:
        s = render_scene(0, VAL_OFFSET + f["index"], RES, debug=True)
        assert np.array_equal(f["image"], s["image"]), "the scene shown is the validation image of the world"
        m, labels = f["mask"], set(np.unique(s["label"][f["mask"]]).tolist())
        assert m.any() and not m.all()
        if f["key"] == "shadow":
            assert s["shadow"][m].all() and len(np.unique(s["instance"][m])) == 1, "shadow on one surface"
        if f["key"] == "shared_texture":
            assert labels == {BOX, WALL} and len(np.unique(s["material"][m])) == 1
        if f["key"] == "twins":
            near, far = (np.median(s["depth"][s["instance"] == j]) for j in s["info"]["twins"])
            assert far > 1.5 * near and len(np.unique(s["albedo"][m], axis=0)) == 1
        if f["key"] == "far_structures":
            assert PILLAR in labels and np.median(s["depth"][m]) >= 10
    with pytest.raises(LookupError, match="not found in the first 0"):
        find_situations(seed=0, res=RES, max_scenes=0)


def test_world_situations_come_from_the_worlds_validation_split(tmp_path):
    from depthg.data.synthetic.situations import world_situations
    from depthg.errors import DataError

    root = tmp_path / "synthetic"
    with pytest.raises(DataError, match="manifest.json.*prep synthetic"):
        world_situations(root)
    write_synthetic(root, n_train=1, n_val=4, res=RES, seed=0, progress=False)
    for f in world_situations(root):
        assert f["index"] < 4
        stored = np.asarray(Image.open(root / "img" / "val" / f"{f['index']:05d}.png"))
        assert np.array_equal(stored, f["image"])
