"""One writer per run folder and per synthetic world (issue 15 item 3); eval prints before it writes (item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from depthg.cli.main import main
from depthg.errors import BusyError
from depthg.files import file_lock

ROOT = Path(__file__).resolve().parent.parent
_HOLD = (
    "import sys, time; from depthg.files import file_lock\n"
    "with file_lock(sys.argv[1], wait=False):\n    print('held', flush=True); time.sleep(120)"
)


@pytest.fixture
def holder():
    """Start a process that holds a lock file (as a running train/eval/prep would); yields a starter."""
    procs = []

    def start(lock: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(lock)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_lock_names_the_holder_and_frees_itself_when_the_holder_dies(holder, tmp_path):
    lock = tmp_path / "run" / ".lock"
    proc = holder(lock)
    with pytest.raises(BusyError, match=rf"in use by pid {proc.pid} \('-c .*', since 20"):
        with file_lock(lock, wait=False):
            pass
    proc.kill()
    proc.wait(timeout=10)
    with file_lock(lock, wait=False):  # the kernel dropped the dead holder's lock
        with file_lock(lock, wait=False):  # re-entrant in one process
            pass


def test_train_refuses_a_folder_held_by_another_process(holder, tmp_path, capsys):
    proc = holder(tmp_path / "runs" / "busy" / ".lock")
    rc = main(
        [
            "train",
            "--preset",
            "synthetic",
            "--run-name",
            "busy",
            "--results-dir",
            str(tmp_path),
            "--no-eval",
            "--resume",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"run folder {tmp_path / 'runs' / 'busy'} is in use by pid {proc.pid}" in err, err
    assert sorted(p.name for p in (tmp_path / "runs" / "busy").iterdir()) == [".lock"]  # nothing written


def test_prep_synthetic_refuses_a_second_generator(holder, tmp_path, capsys):
    proc = holder(tmp_path / ".synthetic.lock")
    rc = main(["prep", "synthetic", "--data-dir", str(tmp_path), "--n-train", "1", "--n-val", "1", "--res", "16"])
    err = capsys.readouterr().err
    assert rc == 2 and f"synthetic world {tmp_path / 'synthetic'} is in use by pid {proc.pid}" in err, err
    assert not (tmp_path / "synthetic").exists()


@pytest.fixture(scope="module")
def trained(synthetic_world, tmp_path_factory):
    """A one-iteration training checkpoint on the synthetic world."""
    results = tmp_path_factory.mktemp("results")
    assert (
        main(
            [
                "train",
                "--preset",
                "synthetic",
                f"data.data_dir={synthetic_world}",
                "train.iterations=1",
                "train.threads=1",
                "data.batch_size=4",
                "--run-name",
                "t",
                "--results-dir",
                str(results),
                "--no-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    return results / "runs" / "t" / "checkpoints" / "last.pt"


def test_eval_refuses_a_held_folder_before_evaluating(trained, holder, tmp_path, capsys):
    proc = holder(tmp_path / "runs" / "e" / ".lock")
    rc = main(["eval", str(trained), "--run-name", "e", "--results-dir", str(tmp_path), "eval.crf=false"])
    captured = capsys.readouterr()
    assert rc == 2 and f"is in use by pid {proc.pid}" in captured.err and "acc" not in captured.out


def test_eval_prints_its_results_before_a_failed_write(trained, tmp_path, capsys, monkeypatch):
    import depthg.runs

    def full_disk(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(depthg.runs, "write_json", full_disk)
    rc = main(
        [
            "eval",
            str(trained),
            "--run-name",
            "full",
            "--results-dir",
            str(tmp_path),
            "eval.crf=false",
            "eval.max_images=2",
            "eval.batch_size=2",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2
    assert "cluster" in captured.out and "mIoU" in captured.out, captured.out  # the results survive on screen
    err = [line for line in captured.err.strip().splitlines() if not line.startswith("eval:")]  # progress bar
    assert len(err) == 1 and "cannot write the results" in err[0] and "No space left" in err[0], err
