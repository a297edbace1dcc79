"""The main job: run the notebooks with papermill on the synthetic default (DESIGN.md §8).

``make reproduce`` = ``python -m depthg reproduce``: each notebook runs in order with the compendium's parameters
(:data:`MAIN_JOB`, e.g. five seeds for the component table), plus any ``-p NAME VALUE`` given; the executed copies
go to ``results/notebooks/`` and the tables and figures they write go to ``results/``. A failing notebook stops the
job with papermill's error, naming the cell.

The notebooks as stored keep small, fast defaults, so that nbval re-runs them within the test suite's budget, and
store only the outputs nbval compares (cells marked ``# NBVAL_CHECK_OUTPUT``): figures and tables live in
``results/`` and the executed main-job copies in ``results/notebooks/``. ``reproduce --store`` (maintainers, after
changing the code) runs them with their stored defaults and writes those outputs back.

The notebooks run in the project's Jupyter kernel ``depthg`` (``make venv`` registers it; the notebooks store it as
their kernelspec), never in whatever ``python3`` kernel comes first, so they import this environment's packages.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from depthg.errors import DepthGError
from depthg.paths import repo_root, results_root

NOTEBOOKS = ("01_data_prep", "02_train", "03_ablation", "04_figures", "05_paper_tables")
# The compendium's settings, on top of each notebook's stored (fast) defaults. 02: the preset's 300 iterations on
# the whole validation split; 03: five seeds, so the component table's paired intervals mean something (issue 10).
MAIN_JOB: dict[str, dict] = {
    "02_train": {"iterations": None, "max_images": None},
    "03_ablation": {"iterations": 30, "seeds": [0, 1, 2, 3, 4], "fidelity_seeds": [0], "max_images": 24},
    "04_figures": {"max_images": 24},
}
CHECKED = "# NBVAL_CHECK_OUTPUT"  # nbval --nbval-lax compares the outputs of these cells only
KERNEL, KERNEL_DISPLAY_NAME = "depthg", "depthg (.venv)"
REGISTER_KERNEL = f'python -m ipykernel install --sys-prefix --name {KERNEL} --display-name "{KERNEL_DISPLAY_NAME}"'


def check_kernel() -> None:
    """The ``depthg`` kernel must exist and start this environment's Python (a kernel registered from another
    checkout's venv would run the notebooks against other code and packages)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        raise DepthGError(
            f"the Jupyter kernel {KERNEL!r} is not registered: run `make venv`, or "
            f"`{REGISTER_KERNEL}` with this environment's python."
        ) from None
    # compare the bin folders: a venv's python is a symlink to the base interpreter, shared by every venv
    kernel_bin, our_bin = Path(spec.argv[0]).parent, Path(sys.executable).parent
    if Path(spec.argv[0]).is_absolute() and kernel_bin.resolve() != our_bin.resolve():
        raise DepthGError(
            f"the Jupyter kernel {KERNEL!r} ({spec.resource_dir}) starts {spec.argv[0]}, not this "
            f"environment's {sys.executable}: re-register it with `{sys.executable} "
            f"{REGISTER_KERNEL.removeprefix('python ')}`."
        )


def execute(src: Path, dst: Path, parameters: dict | None = None, cwd: Path | None = None, stdout=None) -> None:
    """Run one notebook with papermill in the project's kernel. The kernel talks over IPC sockets: over TCP,
    ipykernel warns once per notebook that the (local) traffic is unencrypted. ``stdout``: a file object that
    receives what the cells print, as they print it."""
    import papermill
    from traitlets.config import Config

    papermill.execute_notebook(
        str(src),
        str(dst),
        parameters=parameters or {},
        cwd=str(cwd or src.parent),
        kernel_name=KERNEL,
        progress_bar=False,
        stdout_file=stdout,
        config=Config({"KernelManager": {"transport": "ipc"}}),
    )


class _Echo:
    """The cells' printed lines on the terminal as ``  <notebook> | <line>``, and a line after each
    ``quiet_s`` seconds without output, so the job is never silent for minutes (training cells print at the end)."""

    def __init__(self, name: str, quiet_s: float = 60.0):
        self.name, self.quiet_s, self.t0 = name, quiet_s, time.time()
        self.last, self.buffer, self.done = time.time(), "", threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, daemon=True)

    def write(self, text: str) -> None:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in filter(str.strip, lines):
            print(f"  {self.name} | {line}", flush=True)
            self.last = time.time()

    def flush(self) -> None:
        pass

    def _heartbeat(self) -> None:
        while not self.done.wait(min(5.0, self.quiet_s)):
            if time.time() - self.last >= self.quiet_s:
                print(f"  {self.name} still running ({(time.time() - self.t0) / 60:.0f} min)", flush=True)
                self.last = time.time()

    def __enter__(self) -> _Echo:
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
            if cell.cell_type == "code" and not cell.source.lstrip().startswith(CHECKED):
                cell.outputs = []  # figures live in results/figures/, not three times in the notebook
                cell.execution_count = None
            if "injected-parameters" in cell.metadata.get("tags", []):
                raise DepthGError(f"{src} ran with injected parameters; store only a run with the stored defaults.")
            if "tags" in cell.metadata and not cell.metadata["tags"]:
                cell.metadata.pop("tags")
        nbformat.write(nb, repo_root() / "notebooks" / src.name)


def reproduce(
    *,
    results_dir: str | None = None,
    parameters: dict | None = None,
    notebooks: tuple[str, ...] = NOTEBOOKS,
    store: bool = False,
) -> list[Path]:
    """Run ``notebooks`` in order; ``store``: with their stored defaults only (no :data:`MAIN_JOB`, no
    ``parameters``), writing the outputs nbval checks back into notebooks/."""
    check_kernel()
    if store and parameters:
        raise DepthGError("reproduce --store runs the notebooks with their stored defaults; drop the -p parameters.")
    out_dir = results_root(results_dir) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if store and results_dir:  # the kernels inherit it: a results_dir parameter would be an injected cell
        os.environ["DEPTHG_RESULTS_DIR"] = str(results_root(results_dir))
    for name in notebooks:
        params = {} if store else {**MAIN_JOB.get(name, {}), **(parameters or {})}
        if results_dir and not store:
            params.setdefault("results_dir", str(results_root(results_dir)))
        src = repo_root() / "notebooks" / f"{name}.ipynb"
        if not src.is_file():
            raise DepthGError(f"notebook {src} is missing; restore it from git.")
        dst = out_dir / f"{name}.ipynb"
        # the main job regenerates the committed results: the notebooks that train are told to replace them
        import papermill  # only when notebooks run

        replace = not store and "overwrite" in papermill.inspect_notebook(str(src))  # --store: a fresh folder
        mine = {**params, **({"overwrite": True} if replace else {})}
        t0 = time.time()
        with _Echo(name) as echo:  # the cells' lines (one per ablation run) and a heartbeat while they are quiet
            execute(src, dst, mine, stdout=echo)
        shown = dst.relative_to(repo_root()) if dst.is_relative_to(repo_root()) else dst
        print(f"{name:<14}{time.time() - t0:6.0f} s  {shown}", flush=True)  # one line per notebook, with its time
        written.append(dst)
    if store:
        store_executed(written)
    return written
