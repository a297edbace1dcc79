"""`make reproduce`'s kernel: the project's `depthg`, starting this environment's Python, over IPC sockets."""

import json
import sys
from pathlib import Path

import nbformat
import pytest

from depthg import reproduce
from depthg.errors import DepthGError
from depthg.reproduce import KERNEL, check_kernel, execute

ROOT = Path(__file__).resolve().parent.parent


def test_the_registered_kernel_is_this_environments():
    check_kernel()  # `make venv` registered it with this environment's python


def test_a_kernel_of_another_environment_is_refused(tmp_path, monkeypatch):
    spec = tmp_path / "kernels" / KERNEL / "kernel.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(
        json.dumps(
            {
                "argv": ["/elsewhere/.venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "depthg (other)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # searched before the user's and the environment's kernels
    with pytest.raises(DepthGError, match=r"starts /elsewhere/\.venv/bin/python, not this environment's"):
        check_kernel()


def test_a_missing_kernel_names_the_fix(monkeypatch):
    monkeypatch.setattr(reproduce, "KERNEL", "depthg-not-registered-anywhere")
    with pytest.raises(DepthGError, match=r"not registered: run `make venv`, or `python -m ipykernel install"):
        check_kernel()


@pytest.mark.slow  # a kernel start: about 5 s
def test_notebooks_run_in_the_project_kernel_without_a_transport_warning(tmp_path, monkeypatch, capfd):
    # a `depthg` kernel that marks its environment, found first (JUPYTER_PATH): the output says which kernel ran
    spec = tmp_path / "jupyter" / "kernels" / KERNEL / "kernel.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "depthg (test)",
                "language": "python",
                "env": {"DEPTHG_TEST_KERNEL": "depthg"},
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    code = "import os; print(os.environ.get('DEPTHG_TEST_KERNEL', 'another kernel'))"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    execute(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0].text.strip() == "depthg"  # chosen explicitly, whatever the notebook stores
    assert "over TCP" not in capfd.readouterr().err  # ipykernel's per-kernel warning about unencrypted TCP


def test_cell_lines_are_echoed_and_quiet_stretches_get_a_heartbeat(capsys):
    """`make reproduce` is never silent for minutes: what the cells print reaches the terminal as they print it,
    and a quiet stretch gets a "still running" line."""
    import time

    from depthg.reproduce import _Echo

    with _Echo("03_ablation", quiet_s=0.2) as echo:
        echo.write("STEGO baseline seed 0: trained ablation-synthetic-stego-s0\n+DFC")
        echo.write(" seed 0: trained ablation-synthetic-dfc-s0\n")
        time.sleep(0.6)
        echo.write("last line without newline")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  03_ablation | STEGO baseline seed 0: trained ablation-synthetic-stego-s0"
    assert out[1] == "  03_ablation | +DFC seed 0: trained ablation-synthetic-dfc-s0"
    assert any(line.startswith("  03_ablation still running") for line in out)
    assert out[-1] == "  03_ablation | last line without newline"  # flushed at the end


def test_every_notebook_that_trains_lets_the_main_job_replace_committed_runs():
    """`make reproduce` replaces the committed run folders through each training notebook's `overwrite`; a notebook
    without it stops the main job on a clean clone (seen: 05_paper_tables on its committed paper-synthetic runs)."""
    import papermill

    from depthg.reproduce import NOTEBOOKS

    for name in NOTEBOOKS:
        params = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
        if "iterations" in params:
            assert "overwrite" in params, f"{name} trains but has no overwrite parameter"
            assert params["overwrite"]["default"] == "False", f"{name}: a user's run must not replace by default"
