"""The main job: run the four notebooks with papermill on the synthetic default (DESIGN.md §8).

``make reproduce`` = ``python -m depthg reproduce``: each notebook runs in order with its stored (synthetic)
parameters, plus any ``-p NAME VALUE`` given; the executed copies go to ``results/notebooks/`` and the tables and
figures they write go to ``results/``. A failing notebook stops the job with papermill's error, naming the cell.
"""

from __future__ import annotations

import time
from pathlib import Path

from depthg.errors import DepthGError
from depthg.paths import repo_root, results_root

NOTEBOOKS = ("01_data_prep", "02_train", "03_ablation", "04_figures")


def store_executed(executed: list[Path]) -> None:
    """Copy executed notebooks over notebooks/ without papermill's volatile metadata (timings), so the stored
    copies that nbval checks hold outputs of the current code (maintainers: ``reproduce --store``)."""
    import nbformat

    for src in executed:
        nb = nbformat.read(src, as_version=4)
        nb.metadata.pop("papermill", None)
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            if "injected-parameters" in cell.metadata.get("tags", []):
                raise DepthGError(f"{src} ran with injected parameters; store only a run with the stored defaults.")
            if "tags" in cell.metadata and not cell.metadata["tags"]:
                cell.metadata.pop("tags")
        nbformat.write(nb, repo_root() / "notebooks" / src.name)


def reproduce(*, results_dir: str | None = None, parameters: dict | None = None,
              notebooks: tuple[str, ...] = NOTEBOOKS, store: bool = False) -> list[Path]:
    import papermill

    out_dir = results_root(results_dir) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    if results_dir:
        params.setdefault("results_dir", str(results_root(results_dir)))
    written = []
    for name in notebooks:
        src = repo_root() / "notebooks" / f"{name}.ipynb"
        if not src.is_file():
            raise DepthGError(f"notebook {src} is missing; restore it from git.")
        dst = out_dir / f"{name}.ipynb"
        t0 = time.time()
        print(f"[reproduce] {name} ...", flush=True)
        papermill.execute_notebook(str(src), str(dst), parameters=params, cwd=str(src.parent), kernel_name="python3",
                                   progress_bar=False)
        print(f"[reproduce] {name} done in {time.time() - t0:.0f} s -> {dst}", flush=True)
        written.append(dst)
    if store:
        store_executed(written)
    return written
