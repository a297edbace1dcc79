"""Label mappings and class names (METHOD.md §1.2)."""

import numpy as np
import pytest

from depthg.data import labels as L
from depthg.errors import DataError

# 0-based COCO-Stuff label-map ids (COCO id - 1) and the coarse class the IIC/STEGO curation gives them.
KNOWN_COCO = {
    0: "person",
    2: "vehicle",
    17: "animal",
    58: "food",
    61: "furniture",
    71: "electronic",
    77: "appliance",
    95: "building",
    100: "floor",
    101: "ceiling",
    105: "sky",
    123: "plant",
    148: "ground",
    154: "water",
    156: "sky",
    170: "wall",
    179: "window",
    181: "solid",
}


def test_coco_table_shape_and_partition():
    t = L.COCO_FINE_TO_COARSE
    assert t.shape == (182,) and t.dtype == np.int64
    assert set(t.tolist()) == set(range(27))
    assert (t[:91] < L.COCO_FIRST_STUFF).all(), "COCO things (fine 0..90) must map to thing classes 0..11"
    assert (t[91:] >= L.COCO_FIRST_STUFF).all(), "COCO stuff (fine 91..181) must map to stuff classes 12..26"
    # class sizes of the curation, thing block by block and the stuff total
    assert np.bincount(t, minlength=27)[:12].tolist() == [6, 6, 10, 10, 8, 8, 8, 10, 6, 1, 10, 8]
    assert np.bincount(t, minlength=27)[12:].sum() == 91


@pytest.mark.parametrize("fine,name", sorted(KNOWN_COCO.items()))
def test_coco_known_ids(fine, name):
    coarse = L.map_cocostuff27(np.array([[fine]]))[0, 0]
    assert L.COCO27_CLASS_NAMES[coarse] == name
    # "food" and "furniture" exist as a thing and a stuff class: the thing ids must land on the thing one
    assert (coarse < 12) == (fine < 91)


def test_coco_ignore_and_bad_values():
    out = L.map_cocostuff27(np.array([[255, 0], [156, 2]], np.uint8))
    assert out.tolist() == [[-1, 9], [23, 11]] and out.dtype == np.int64
    with pytest.raises(DataError, match=r"bad\.png.*200"):
        L.map_cocostuff27(np.array([[0, 200]], np.uint8), "bad.png")


def test_cityscapes_mapping():
    ids = np.array([[0, 6, 7, 8], [26, 33, 34, 255]], np.uint8)
    out = L.map_cityscapes27(ids)
    assert out.tolist() == [[-1, -1, 0, 1], [19, 26, -1, -1]]
    assert L.CITYSCAPES27_CLASS_NAMES[0] == "road" and L.CITYSCAPES27_CLASS_NAMES[19] == "car"
    assert L.CITYSCAPES27_CLASS_NAMES[-1] == "bicycle" and len(L.CITYSCAPES27_CLASS_NAMES) == 27


def test_potsdam_mapping_and_unknown_values():
    out = L.map_potsdam3(np.array([[0, 4, 1, 5], [2, 3, 255, 255]], np.uint8))
    assert out.tolist() == [[0, 0, 1, 1], [2, 2, -1, -1]]
    with pytest.raises(DataError, match=r"gt/7\.mat.*\b6\b"):
        L.map_potsdam3(np.array([[0, 6]], np.uint8), "gt/7.mat")


def test_plain_and_cropped_mappings():
    assert L.map_plain(np.array([[0, 5, 255]]), 6).tolist() == [[0, 5, -1]]
    with pytest.raises(DataError, match="6"):
        L.map_plain(np.array([[0, 6]]), 6, "x.png")
    assert L.map_cropped(np.array([[0, 1, 27]], np.uint8), 27).tolist() == [[-1, 0, 26]]
    with pytest.raises(DataError, match="27"):
        L.map_cropped(np.array([[28]], np.uint8), 27, "crop.png")


def test_non_integer_labels_refused():
    with pytest.raises(DataError, match="non-integer"):
        L.map_plain(np.array([[0.5]]), 6, "f.mat")


def test_dataset_info():
    assert L.dataset_info("cocostuff27").n_classes == 27
    assert L.dataset_info("cityscapes").class_names[0] == "road"
    assert L.dataset_info("potsdam").class_names == ("roads and cars", "buildings and clutter", "trees and vegetation")
    assert L.dataset_info("potsdamraw").n_classes == 3
    syn = L.dataset_info("synthetic")
    assert syn.n_classes == 6 and syn.class_names == ("sky", "ground", "wall", "box", "ball", "pillar")
    assert L.dataset_info("directory:foo", n_classes=4).class_names[3] == "class 3"
    assert L.dataset_info("directory:foo").n_classes == 0  # not fixed by the dataset
    with pytest.raises(DataError, match=r"nope.*cocostuff27.*synthetic"):
        L.dataset_info("nope")
