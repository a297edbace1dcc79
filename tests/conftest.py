"""Shared pytest fixtures: tiny fake dataset trees in the real layouts, built in tmp folders.

The builders live in tests/fake_data.py (import them directly for other sizes or options); the fixtures here give
each test a fresh tree with the default options. Each returns a fake_data.FakeTree (``data_dir``, ``keys``, ``raw``).
"""

from __future__ import annotations

import fake_data
import pytest


@pytest.fixture
def data_dir(tmp_path):
    """An empty data root."""
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def coco_tree(data_dir):
    """cocostuff/ with 3 train + 2 val images, curated lists and 8-bit _zoedepth depth."""
    return fake_data.make_cocostuff(data_dir)


@pytest.fixture
def cityscapes_tree(data_dir):
    """cityscapes/ with 2 train cities x 2 images, 1 val city x 2 images, labelIds and 8-bit depth."""
    return fake_data.make_cityscapes(data_dir)


@pytest.fixture
def potsdam_tree(data_dir):
    """potsdam/ with 3 train + 2 val .mat images (uint8 RGB-IR), gt .mat, split lists and 8-bit zoe_depth."""
    return fake_data.make_potsdam(data_dir)


@pytest.fixture
def potsdamraw_tree(data_dir):
    """potsdamraw/processed/ with 2 images x 2 x 2 tiles (.mat), no depth."""
    return fake_data.make_potsdamraw(data_dir)


@pytest.fixture
def directory_tree(data_dir):
    """mydir/ (dataset 'directory:mydir') with 3 train + 2 val images (jpg and png), labels with 4 classes."""
    return fake_data.make_directory(data_dir)


@pytest.fixture
def synthetic_tree(data_dir):
    """synthetic/ with 4 train + 2 val images, labels 0..5/255 and 16-bit depth + sidecars."""
    return fake_data.make_synthetic(data_dir)


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory):
    """A real (rendered) synthetic world at 112 px with its kNN file for the synthetic preset's backbone: what the
    training, evaluation and notebook tests run on. Returns the data root."""
    from depthg.data.knn import run_knn
    from depthg.data.synthetic import write_synthetic
    from depthg.presets import load_preset

    cfg = load_preset("synthetic")
    data_dir = tmp_path_factory.mktemp("world") / "data"
    write_synthetic(data_dir / "synthetic", n_train=64, n_val=24, res=cfg.data.res, seed=0, progress=False)
    run_knn(
        "synthetic",
        data_dir,
        "train",
        backbone=cfg.model.backbone,
        weights=cfg.model.weights,
        res=cfg.data.knn_res,
        crop="none",
        k=30,
        device="cpu",
        progress=False,
    )
    return data_dir


def pytest_collection_modifyitems(config, items):
    """The tiers, as markers a user can select (``make test-golden``, ``test-fast``, ``test-integration``):
    ``golden`` for parity with numbers the released code computed (tests/golden/), ``integration`` for the
    tests marked ``slow`` (training runs, torchrun, notebooks), ``fast`` for everything else."""
    for item in items:
        if item.get_closest_marker("slow") is not None or item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.fast)
        if item.path.name == "test_golden.py" or "golden" in item.name:
            item.add_marker(pytest.mark.golden)
