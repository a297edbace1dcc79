"""Depth file formats and the training conversion (depthg.data.depth_io; METHOD.md §1.3, §1.6, §4.6)."""

import json

import numpy as np
import pytest
from PIL import Image

from depthg.data.depth_io import depth_for_training, read_depth, sidecar_path, write_depth
from depthg.errors import ConfigError, DataError


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_16bit_round_trip_precision(tmp_path, rng):
    for lo, span in ((0.5, 49.5), (-3.0, 0.01), (100.0, 1e4)):
        d = (lo + span * rng.random((37, 53))).astype(np.float32)
        d[0, 0], d[-1, -1] = lo, lo + span  # pin the extremes
        p = tmp_path / f"d{lo}.png"
        write_depth(p, d, source="test", units="metres")
        back = read_depth(p)
        assert back.dtype == np.float32 and back.shape == d.shape
        step = (d.max() - d.min()) / 65535
        err = np.abs(back.astype(np.float64) - d).max()
        assert err <= step / 2 + 4 * np.spacing(np.float32(np.abs(d).max())), (lo, span, err, step)
        assert Image.open(p).mode == "I;16"  # really 16-bit, not 8


def test_constant_depth_round_trips(tmp_path):
    p = tmp_path / "c.png"
    write_depth(p, np.full((4, 5), 7.25, np.float32), source="t", units="relative")
    assert np.array_equal(read_depth(p), np.full((4, 5), 7.25, np.float32))


def test_sidecar_contents(tmp_path):
    p = tmp_path / "sub" / "x.png"
    d = np.array([[1.0, 2.0], [3.0, 4.5]], np.float32)
    write_depth(p, d, source="depth-anything-v2-small", units="relative", extra={"note": "hi", "min": -1})
    meta = json.loads(sidecar_path(p).read_text())
    assert sidecar_path(p) == tmp_path / "sub" / "x.json"
    assert meta["format"] == "depthg-depth16" and meta["larger_is_farther"] is True
    assert meta["min"] == 1.0 and meta["max"] == 4.5  # extra cannot override the format keys
    assert meta["units"] == "relative" and meta["source"] == "depth-anything-v2-small" and meta["note"] == "hi"
    back, m = read_depth(p, with_meta=True)
    assert m["bits"] == 16 and m["source"] == "depth-anything-v2-small"


def test_reads_release_8bit(tmp_path, rng):
    v = rng.integers(0, 256, (20, 30)).astype(np.uint8)
    p = tmp_path / "000123_zoedepth.png"
    Image.fromarray(v, mode="L").save(p)
    d, meta = read_depth(p, with_meta=True)
    assert d.dtype == np.float32 and np.array_equal(d, v.astype(np.float32))
    assert meta["bits"] == 8 and meta["format"] == "zoedepth8"
    # reference fidelity keeps the stored 0..255 values exactly
    assert np.array_equal(depth_for_training(d, fidelity="reference", dataset="cocostuff27", is_8bit=True), d)


def test_paper_fidelity_is_minmax_float():
    d = np.array([[2.0, 4.0], [6.0, 10.0]], np.float32)
    out = depth_for_training(d, fidelity="paper", dataset="potsdam")  # no Potsdam bug in paper fidelity
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.25], [0.5, 1.0]])
    assert np.array_equal(depth_for_training(np.ones((2, 2)), fidelity="paper", dataset="x"), np.zeros((2, 2)))


def test_reference_fidelity_truncates_like_uint8_cast():
    d = np.array([[0.0, 0.5], [1.0, 2.0]], np.float32)  # norm 0, .25, .5, 1 -> *255 = 0, 63.75, 127.5, 255
    out = depth_for_training(d, fidelity="reference", dataset="cocostuff27")
    assert np.array_equal(out, np.array([[0, 63], [127, 255]], np.float32))  # floor, not round


def test_reference_potsdam_truncation_bug():
    d = np.array([[0.0, 5.0, 9.99], [10.0, 3.0, 10.0]], np.float32)
    out = depth_for_training(d, fidelity="reference", dataset="potsdam")
    # to_tensor -> v/255 in [0,1], int cast -> only the per-image maximum survives as 1 (METHOD.md §1.6, §4.6)
    assert np.array_equal(out, np.array([[0, 0, 0], [1, 0, 1]], np.float32))
    v8 = np.array([[0, 254], [255, 128]], np.float32)
    assert np.array_equal(
        depth_for_training(v8, fidelity="reference", dataset="potsdam", is_8bit=True),
        np.array([[0, 0], [1, 0]], np.float32),
    )
    # other datasets keep the full 0..255 range
    assert depth_for_training(d, fidelity="reference", dataset="cityscapes").max() == 255


def test_missing_and_broken_files_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist.*prep depth"):
        read_depth(tmp_path / "nope.png")
    p = tmp_path / "a.png"
    write_depth(p, np.arange(6, dtype=np.float32).reshape(2, 3), source="t", units="metres")
    sidecar_path(p).unlink()
    with pytest.raises(DataError, match="no sidecar"):
        read_depth(p)
    sidecar_path(p).write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        read_depth(p)
    sidecar_path(p).write_text(json.dumps({"format": "depthg-depth16", "min": float("nan"), "max": 1.0}))
    with pytest.raises(DataError, match="finite 'min'"):
        read_depth(p)
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="cannot be read"):
        read_depth(tmp_path / "garbage.png")


def test_non_finite_depth_rejected(tmp_path):
    bad = np.array([[1.0, np.nan]], np.float32)
    with pytest.raises(DataError, match="non-finite"):
        write_depth(tmp_path / "n.png", bad, source="t", units="metres")
    assert not (tmp_path / "n.png").exists()
    with pytest.raises(DataError, match="non-finite"):
        depth_for_training(np.array([[1.0, np.inf]]), fidelity="paper", dataset="cocostuff27")
    with pytest.raises(ConfigError):
        depth_for_training(np.ones((2, 2)), fidelity="papr", dataset="cocostuff27")
