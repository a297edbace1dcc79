"""Notebook parameters: validation messages, `prepare`, and 03_ablation run by papermill on a tiny fake Potsdam."""

from pathlib import Path

import fake_data
import nbformat
import pandas as pd
import pytest

from depthg.errors import ConfigError, DataError
from depthg.notebook import as_list, prepare, resolve_config
from depthg.reproduce import KERNEL, KERNEL_DISPLAY_NAME, execute

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
# A Potsdam run small enough for a test: random ViT-S/8 weights, 32 px (a 4 x 4 patch grid), 3 x 3 samples.
TINY = (
    "data.res=32 data.knn_res=32 eval.res=32 data.batch_size=2 data.num_workers=0 eval.batch_size=2 "
    "loss.feature_samples=3 loss.lhp_k=4"
)


def _papermill(name, tmp_path, **parameters):
    execute(ROOT / "notebooks" / name, tmp_path / f"out_{name}", parameters)  # as `make reproduce`: kernel depthg


def test_notebooks_are_thin_and_parameterised():
    assert [p.name for p in NOTEBOOKS] == [
        "01_data_prep.ipynb",
        "02_train.ipynb",
        "03_ablation.ipynb",
        "04_figures.ipynb",
        "05_paper_tables.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        # the project's kernel, not "python3": a user's own JupyterLab would start a Python without torch
        assert nb.metadata["kernelspec"] == {
            "name": KERNEL,
            "display_name": KERNEL_DISPLAY_NAME,
            "language": "python",
        }, path.name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: one cell tagged 'parameters'"
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        for name in ("dataset", "data_dir", "device", "results_dir", "overrides", "weights"):
            assert f"\n{name} = " in "\n" + tagged[0].source, f"{path.name}: parameter {name}"
        for forbidden in ("nn.Module", "class ", "def ", "/work/", "/tmp/", "import torch.nn"):
            assert forbidden not in source, f"{path.name} holds {forbidden!r}: method code or a path"
        assert any("NBVAL_CHECK_OUTPUT" in c.source for c in nb.cells), f"{path.name}: nothing checked by nbval"
        size = path.stat().st_size
        assert size < 1_500_000, f"{path.name} is {size} bytes: keep stored outputs small"


def test_papermill_reads_every_parameter():
    """papermill parses the parameters cell itself (for -p type handling and `papermill --help-notebook`); a line
    it cannot parse is reported as an unknown parameter when passed."""
    import papermill

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = [ln.split("=")[0].strip() for ln in cell.source.splitlines() if ln and not ln.startswith("#")]
        assert list(papermill.inspect_notebook(str(path))) == names, path.name


def test_as_list_reads_papermill_strings():
    assert as_list("0,1,2", int) == [0, 1, 2] == as_list("[0, 1, 2]", int) == as_list([0, 1, 2], int)
    assert as_list(3, int) == [3] and as_list(None) == [] and as_list("") == []
    assert as_list("a=1 b=2") == ["a=1", "b=2"] and as_list(["a=1"]) == ["a=1"]
    with pytest.raises(ConfigError, match="list of int"):
        as_list("x", int)


def test_resolve_config_applies_parameters_then_overrides():
    cfg = resolve_config(
        "potsdam",
        weights="random",
        iterations=5,
        seed=2,
        max_images=3,
        crf=False,
        overrides="data.res=32 train.iterations=7",
    )
    assert cfg.name == "potsdam_vits8" and cfg.model.weights == "random" and cfg.train.seed == 2
    assert cfg.train.iterations == 7 and cfg.data.res == 32 and cfg.eval.max_images == 3 and not cfg.eval.crf
    assert resolve_config("potsdamraw").data.dataset == "potsdamraw"
    with pytest.raises(DataError, match="unknown dataset 'mnist'; valid datasets"):
        resolve_config("mnist")
    with pytest.raises(ConfigError, match="no default preset"):
        resolve_config("directory:mine")
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config("synthetic", overrides=["loss.nope=1"])


def test_prepare_names_the_missing_prep_commands(data_dir):
    fake_data.make_potsdam(data_dir)
    cfg = resolve_config("potsdam", data_dir=str(data_dir), weights="random", overrides=TINY)
    with pytest.raises(DataError) as err:
        prepare("potsdam", str(data_dir), cfg=cfg)
    msg = str(err.value)
    assert "not prepared" in msg and "python -m depthg prep knn --dataset potsdam" in msg
    assert "--backbone vit_small_patch8 --weights random --res 32 --crop none" in msg
    assert f"prep check --dataset potsdam --data-dir {data_dir}" in msg and f"-p data_dir {data_dir}" in msg
    assert "five-crop" not in msg and "<model." not in msg  # Potsdam is never cropped; no placeholders
    fake_data.make_knn(data_dir, "potsdam", "train", 3, res=32, crop="none")
    done = prepare("potsdam", str(data_dir), cfg=cfg)
    assert (done.n_train, done.n_val) == (3, 2) and done.knn_file.is_file()

    fake_data.make_cocostuff(data_dir, depth=())  # no depth, no crops, no kNN: three commands, in order
    with pytest.raises(DataError) as err:
        prepare("cocostuff27", str(data_dir), cfg=resolve_config("cocostuff27", data_dir=str(data_dir)))
    lines = [ln for ln in str(err.value).splitlines() if ln.strip()[:2] in ("1.", "2.", "3.", "4.")]
    assert [ln.split("prep ")[1].split()[0] for ln in lines] == ["depth", "fivecrop", "knn"]
    with pytest.raises(DataError, match="cityscapes"):
        prepare("cityscapes", str(data_dir))


def test_prepare_synthetic_keeps_an_existing_world(data_dir):
    cfg = resolve_config("synthetic", data_dir=str(data_dir))
    first = prepare("synthetic", str(data_dir), cfg=cfg, n_train=12, n_val=4)
    assert (first.n_train, first.n_val) == (12, 4) and first.knn_file.is_file() and first.actions
    again = prepare("synthetic", str(data_dir), cfg=cfg)  # no sizes: the world 01 made is kept
    assert (again.n_train, again.n_val) == (12, 4) and again.actions == []
    other = prepare("synthetic", str(data_dir), cfg=cfg, seed=1)  # another world asked for: regenerated
    assert (other.n_train, other.n_val) == (12, 4) and other.actions


def test_prepare_recomputes_the_knn_file_when_the_weights_change(data_dir, tmp_path):
    """Re-made weights under the same file name (the bundled file after `prep pretrain`): new neighbours."""
    import torch

    from depthg.data.readiness import missing_steps
    from depthg.model.backbone import DinoBackbone

    weights = tmp_path / "backbone.pth"
    torch.save(DinoBackbone("vit_tiny_patch8", "random").vit.state_dict(), weights)
    cfg = resolve_config("synthetic", data_dir=str(data_dir), weights=str(weights))
    assert prepare("synthetic", str(data_dir), cfg=cfg, n_train=12, n_val=4).actions
    assert prepare("synthetic", str(data_dir), cfg=cfg).actions == [] and missing_steps(cfg, str(data_dir)) == []
    torch.save({k: v * 0.5 for k, v in torch.load(weights).items()}, weights)
    (step,) = missing_steps(cfg, str(data_dir))
    assert step.stage == "knn" and "made with other weights (sha256:" in step.what and "--overwrite" in step.command
    assert prepare("synthetic", str(data_dir), cfg=cfg).actions == ["computed the kNN file"]
    assert missing_steps(cfg, str(data_dir)) == []


@pytest.mark.slow
def test_unknown_dataset_stops_the_notebook_with_the_valid_names(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as err:
        _papermill("03_ablation.ipynb", tmp_path, dataset="mnist", results_dir=str(tmp_path / "results"))
    assert "unknown dataset 'mnist'; valid datasets: cocostuff27, cityscapes, potsdam" in str(err.value)


@pytest.mark.slow
def test_ablation_notebook_on_a_tiny_fake_potsdam(data_dir, tmp_path):
    """`papermill notebooks/03_ablation.ipynb out.ipynb -p dataset potsdam` once Potsdam is prepared."""
    import papermill

    fake_data.make_potsdam(data_dir)
    results = tmp_path / "results"
    tiny = dict(
        dataset="potsdam",
        data_dir=str(data_dir),
        weights="random",
        iterations=2,
        seeds="0,1",
        fidelity_seeds="0",
        max_images=2,
        device="cpu",
        overrides=TINY,
        results_dir=str(results),
    )
    with pytest.raises(papermill.PapermillExecutionError) as err:  # not prepared yet: no kNN file
        _papermill("03_ablation.ipynb", tmp_path, **tiny)
    assert "python -m depthg prep knn --dataset potsdam" in str(err.value)

    fake_data.make_knn(data_dir, "potsdam", "train", 3, res=32, crop="none")
    _papermill("03_ablation.ipynb", tmp_path, **tiny)
    comp = pd.read_csv(results / "ablation_potsdam.csv")
    assert list(comp["key"]) == ["stego", "dfc", "fps", "dfc_fps", "lhp", "all"]
    assert (comp["seeds"] == "0;1").all() and (comp["iterations"] == 2).all() and comp["git_commit"].notna().all()
    assert comp["cluster_acc_mean"].between(0, 100).all() and comp["linear_miou_std"].notna().all()
    pub = comp.set_index("key")["published_cluster"]
    assert pub["stego"] == "STEGO: 77.0 / 62.6" and pub["dfc_fps"] == "DepthG: not retrieved (X)"
    fid = pd.read_csv(results / "fidelity_potsdam.csv")
    # all paper, the 10 aspects a training run shows (knn_features and crop_format act in prep stages), all reference
    assert list(fid["key"])[0] == "fid_paper" and list(fid["key"])[-1] == "fid_reference" and len(fid) == 12
    runs = pd.read_csv(results / "ablation_potsdam_runs.csv")
    assert len(runs) == 12 and all((results / "runs" / r / "provenance.json").is_file() for r in runs["run"])
    md = (results / "ablation_potsdam.md").read_text()
    assert "without DenseCRF" in md and "not retrieved (X)" in md
    assert (results / "figures" / "03_ablation_potsdam.png").is_file()
