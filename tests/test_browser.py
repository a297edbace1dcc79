"""JupyterLab in a real browser: a stored notebook run through the UI of headless Chromium.

What a user does: start JupyterLab, open ``01_data_prep.ipynb`` (the fastest notebook at its stored defaults, about
50 s here; 04_figures takes about 90 s), Run > Run All Cells. The notebook stores the project's kernelspec, so
JupyterLab starts ``depthg (.venv)`` even though a ``python3`` kernel is there too (a user's own JupyterLab would
otherwise start a Python without torch). Debian's ``chromium`` and ``chromium-driver`` (apt) are driven by
selenium; nothing is downloaded. A screenshot of the run goes to ``<results>/figures/jupyterlab_01_data_prep.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from depthg.paths import figures_dir
from depthg.reproduce import KERNEL, KERNEL_DISPLAY_NAME

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "01_data_prep.ipynb"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
RUN_TIMEOUT_S = 900  # the notebook: 55 s on the shared 2-core machine, 340 s when 12 jobs share it
# JupyterLab user settings: no news or update checks (no network, no toast over the screenshot); no autosave, so
# the notebook file changes only when the test saves it
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, method: str = "GET"):
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab on 127.0.0.1 (free port, token) serving a copy of the notebook, with the project's kernel
    registered as `make venv` does; stopped, kernels first, at teardown. Yields (base URL, token, root dir)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: .ci/run installs them with apt-get")
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} not installed (apt-get install chromium chromium-driver)")
    root, jupyter = tmp_path / "lab", tmp_path / "jupyter"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)  # autosave must not touch the stored notebook
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ipykernel",
            "install",
            "--prefix",
            str(jupyter / "prefix"),
            "--name",
            KERNEL,
            "--display-name",
            KERNEL_DISPLAY_NAME,
        ],
        check=True,
        capture_output=True,
    )
    for name, value in SETTINGS.items():
        (jupyter / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (jupyter / "settings" / name).write_text(json.dumps(value))
    env = dict(
        os.environ,
        JUPYTER_PATH=str(jupyter / "prefix" / "share" / "jupyter"),
        JUPYTER_CONFIG_DIR=str(jupyter / "config"),
        JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(jupyter / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"),
        # the notebook writes its world and figures here, not into the checkout
        DEPTHG_DATA_DIR=str(tmp_path / "data"),
        DEPTHG_RESULTS_DIR=str(tmp_path / "results"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    port, token = _free_port(), os.urandom(16).hex()
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],  # CI containers run as root
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}"
            try:
                _api(f"{base}/api/status?token={token}")
                break
            except OSError:
                assert time.time() < deadline, "JupyterLab did not answer within 300 s"
                time.sleep(0.5)
        yield base, token, root
    finally:
        try:  # kernels run in their own sessions: shut them down through the server before stopping it
            for kernel in _api(f"{base}/api/kernels?token={token}") or []:
                _api(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
        except OSError:
            pass
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _menu(driver, menu: str, command: str) -> None:
    """Click a menu bar entry, then the item bound to ``command`` (what a user clicks, e.g. Run > Run All Cells)."""
    from selenium.webdriver.common.by import By

    bar = next(
        e for e in driver.find_elements(By.CSS_SELECTOR, "#jp-menu-panel .lm-MenuBar-item") if e.text.strip() == menu
    )
    bar.click()
    items = driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-item[data-command]")
    item = next((e for e in items if e.get_attribute("data-command") == command), None)
    assert item, f"no {command} in the {menu} menu: {[e.get_attribute('data-command') for e in items]}"
    item.click()


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _prompts(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent)"
    )


@pytest.mark.slow
def test_stored_notebook_runs_in_jupyterlab_with_the_project_kernel(jupyterlab, chromium):
    from selenium.webdriver.common.by import By

    base, token, root = jupyterlab
    t0 = time.time()
    chromium.get(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    kernel_name = lambda: " ".join(e.text for e in chromium.find_elements(By.CSS_SELECTOR, ".jp-KernelName"))
    status = lambda: chromium.execute_script(
        "const e = document.querySelector('.jp-Notebook-ExecutionIndicator'); return e && e.dataset.status"
    )
    _wait(lambda: KERNEL_DISPLAY_NAME in kernel_name() and status() == "idle", 300, "the kernel to start")
    n_code = len(_prompts(chromium))
    assert n_code >= 5, f"{NOTEBOOK}: {n_code} code cells shown"

    _menu(chromium, "Edit", "editmenu:clear-all")  # Clear Outputs of All Cells
    _wait(lambda: not chromium.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"), 30, "cleared outputs")
    _menu(chromium, "Run", "runmenu:run-all")  # Run All Cells
    # done: every code cell numbered, or a cell failed (Run All then leaves the rest unrun)
    errors = lambda: [
        e.text
        for e in chromium.find_elements(
            By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        if "Error" in e.text
    ]
    done = lambda: errors() or (status() == "idle" and all(re.fullmatch(r"\[\d+\]:", p) for p in _prompts(chromium)))
    _wait(done, RUN_TIMEOUT_S, "Run All Cells to finish")
    assert not errors(), f"a cell failed:\n{errors()[0]}"
    run_s = time.time() - t0

    sessions = _api(f"{base}/api/sessions?token={token}")
    assert [s["kernel"]["name"] for s in sessions] == [KERNEL], sessions
    assert kernel_name() == KERNEL_DISPLAY_NAME
    images = chromium.execute_script(
        "return [...document.querySelectorAll('.jp-OutputArea-output img')].map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert images and all(w > 100 for w in images), f"no rendered figure in the outputs (widths {images})"

    chromium.execute_script("document.querySelector('.jp-OutputArea-output img').scrollIntoView({block: 'end'})")
    shot = figures_dir() / f"jupyterlab_{Path(NOTEBOOK).stem}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    stored_at = (root / NOTEBOOK).stat().st_mtime_ns
    _menu(chromium, "File", "docmanager:save")  # what the UI ran, as a file: no error output in any cell
    _wait(lambda: (root / NOTEBOOK).stat().st_mtime_ns != stored_at, 30, "File > Save")
    saved = nbformat.read(root / NOTEBOOK, as_version=4)
    assert all(c.execution_count for c in saved.cells if c.cell_type == "code")
    outputs = [o for c in saved.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert saved.metadata.kernelspec.name == KERNEL
    print(f"{NOTEBOOK} ran in JupyterLab in {run_s:.0f} s; screenshot {shot}")
