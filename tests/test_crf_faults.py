"""CRF worker faults are bounded (issue 15 item 2): a stopped worker, a killed one (busy or idle), the parent's
death; and an evaluation records which images lost their CRF."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from depthg.evaluation.crf import CRFError, CRFPool, dense_crf

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), rng.normal(size=(2, 3, 8, 8)).astype(np.float32)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def test_stopped_worker_times_out_and_close_is_bounded(batch):
    images, logits = batch
    pool = CRFPool(workers=1, timeout=1.5)
    pool(images[:1], logits[:1])  # workers up
    stopped = pool.pids[0]
    os.kill(stopped, signal.SIGSTOP)
    start = time.monotonic()
    q, lost = pool.run(images, logits)
    assert time.monotonic() - start < 10
    assert lost and "within 1.5 s" in lost[0] and q[0] is None  # the image it held is named as lost
    assert _gone(stopped) and pool.pids[0] != stopped
    os.kill(pool.pids[0], signal.SIGSTOP)  # a stopped idle worker must not hang close()
    pid = pool.pids[0]
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 10 and _gone(pid)


def test_killed_busy_worker_is_a_crf_error_naming_the_item(batch):
    with CRFPool(workers=1, timeout=60) as pool:
        pool(batch[0][:1], batch[1][:1])
        pid, errors = pool.pids[0], []

        def call():
            try:
                pool._map(time.sleep, [(30,)])
            except CRFError as e:
                errors.append(str(e))

        thread = threading.Thread(target=call)
        start = time.monotonic()
        thread.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        thread.join(15)
        assert not thread.is_alive() and time.monotonic() - start < 15
        assert errors and "item 0" in errors[0] and "died" in errors[0]


def test_killed_idle_worker_is_replaced(batch):
    images, logits = batch
    with CRFPool(workers=2, timeout=30) as pool:
        pool(images, logits)
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)
        q = pool(images, logits)  # no BrokenProcessPool: a fresh worker takes the item
        np.testing.assert_array_equal(q[0], dense_crf(images[0], logits[0]))
        assert victim not in pool.pids and any(str(victim) in e for e in pool.events)


@pytest.mark.slow
def test_workers_end_when_the_parent_is_killed():
    script = (
        "import numpy as np, os, signal\nfrom depthg.evaluation.crf import CRFPool\n"
        "from multiprocessing import resource_tracker as rt\n"
        "pool = CRFPool(workers=2, timeout=30)\n"
        "pool(np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 3, 4, 4), np.float32))\n"
        "print(*pool.pids, rt._resource_tracker._pid or 0, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    pids = [int(p) for p in out.stdout.split() if int(p)]
    assert len(pids) >= 2, out
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    assert all(_gone(p) for p in pids), f"left running after the parent's death: {[p for p in pids if not _gone(p)]}"
