"""The main job: run the four notebooks with papermill on the synthetic default (DESIGN.md §8).

``make reproduce`` = ``python -m depthg reproduce``: each notebook runs in order with its stored (synthetic)
parameters, plus any ``-p NAME VALUE`` given; the executed copies go to ``results/notebooks/`` and the tables and
figures they write go to ``results/``. A failing notebook stops the job with papermill's error, naming the cell.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from depthg.errors import DepthGError
from depthg.paths import repo_root, results_root

NOTEBOOKS = ("01_data_prep", "02_train", "03_ablation", "04_figures")


class _Echo:
    """The cells' printed lines on the terminal as ``[reproduce] <notebook> | <line>``, and a line after each
    ``quiet_s`` seconds without output, so the job is never silent for minutes (training cells print at the end)."""

    def __init__(self, name: str, quiet_s: float = 60.0):
        self.name, self.quiet_s, self.t0 = name, quiet_s, time.time()
        self.last, self.buffer, self.done = time.time(), "", threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, daemon=True)

    def write(self, text: str) -> None:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in filter(str.strip, lines):
            print(f"[reproduce] {self.name} | {line}", flush=True)
            self.last = time.time()

    def flush(self) -> None:
        pass

    def _heartbeat(self) -> None:
        while not self.done.wait(min(5.0, self.quiet_s)):
            if time.time() - self.last >= self.quiet_s:
                print(f"[reproduce] {self.name} still running ({(time.time() - self.t0) / 60:.0f} min)", flush=True)
                self.last = time.time()

    def __enter__(self) -> "_Echo":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.write("\n")


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
        # the main job regenerates the committed results: the notebooks that train are told to replace them
        mine = {**params, **({"overwrite": True} if "overwrite" in papermill.inspect_notebook(str(src)) else {})}
        t0 = time.time()
        print(f"[reproduce] {name} ...", flush=True)
        with _Echo(name) as echo:
            papermill.execute_notebook(str(src), str(dst), parameters=mine, cwd=str(src.parent),
                                       kernel_name="python3", progress_bar=False, stdout_file=echo)
        print(f"[reproduce] {name} done in {time.time() - t0:.0f} s -> {dst}", flush=True)
        written.append(dst)
    if store:
        store_executed(written)
    return written
