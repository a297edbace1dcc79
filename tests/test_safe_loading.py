"""No checkpoint can run code: crafted pickles on every loading path (issue 15 item 1).

Each payload would create a marker file if any of its callables ran. They are written as the data.pkl of a torch
zip file (what ``torch.save`` writes), so they reach the unpickler as a real checkpoint would, and are tried on the
four ways a weight file enters: ``eval``, ``train --resume``, ``model.weights=...`` and ``prep knn --weights``.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from depthg.cli.main import main
from depthg.errors import WeightsError
from depthg.model.weights import read_checkpoint
from depthg.training import checkpoints

# torch notes the protocol-4 header of some payloads; what matters is that it refuses them
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")


def _u(text: str) -> bytes:
    """BINUNICODE: a str on the pickle stack."""
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def _g(module: str, name: str) -> bytes:
    """GLOBAL: find_class(module, name) on the stack (protocol 4 walks dotted names)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def _payloads(marker: Path) -> dict[str, bytes]:
    """Protocol-4 pickles that each create ``marker`` when a permissive loader unpickles them (checked below)."""
    code = _u(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    shell = _u(f"touch {marker}")
    eval_ = _call(_g("numpy.dtypes", "__builtins__.get"), _u("eval"))
    path = _call(_g("pathlib", "Path"), _u(str(marker)))
    bodies = {
        # the bypass: an allowed module plus a dotted name walks to the builtins dict, then to eval
        "numpy.dtypes + __builtins__.get -> eval": _call(eval_, code),
        "numpy.dtypes + __builtins__.__getitem__ -> exec": _call(
            _call(_g("numpy.dtypes", "__builtins__.__getitem__"), _u("exec")), code
        ),
        "dotted name on an allowed placeholder name": _call(
            _call(_g("omegaconf.dictconfig", "DictConfig.__init__.__builtins__.get"), _u("eval")), code
        ),
        "dotted name on a torch rebuild function": _call(
            _call(_g("torch._utils", "_rebuild_tensor.__builtins__.get"), _u("eval")), code
        ),
        "os.system": _call(_g("os", "system"), shell),
        "posix.system": _call(_g("posix", "system"), shell),
        "subprocess.call": _call(_g("subprocess", "getoutput"), shell),
        "builtins.eval": _call(_g("builtins", "eval"), code),
        "builtins.exec": _call(_g("builtins", "exec"), code),
        "getattr chain Path(marker).touch()": _call(_call(_g("builtins", "getattr"), path, _u("touch"))),
        "builtins.__import__ + getattr": _call(
            _call(_g("builtins", "getattr"), _call(_g("builtins", "__import__"), _u("os")), _u("system")), shell
        ),
        "dotted method pathlib.Path.touch": _call(_g("pathlib", "Path.touch"), path),
    }
    return {name: b"\x80\x04" + body + b"." for name, body in bodies.items()}


def _torch_file(path: Path, pickle_bytes: bytes) -> Path:
    """A torch zip checkpoint whose data.pkl is ``pickle_bytes``."""
    buf = io.BytesIO()
    torch.save({}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = pickle_bytes if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data)
    return path


@pytest.fixture
def payload_files(tmp_path):
    marker = tmp_path / "pwned"
    files = {
        name: _torch_file(tmp_path / f"evil{i}.pt", data) for i, (name, data) in enumerate(_payloads(marker).items())
    }
    return marker, files


def test_crafted_files_are_live_payloads_in_a_valid_format(tmp_path):
    """The wrapper is a real checkpoint format (a harmless pickle in it loads), and every payload does create the
    marker under a permissive unpickler (plain pickle), so blocking them below is not an accident of syntax."""
    assert read_checkpoint(_torch_file(tmp_path / "ok.pt", pickle.dumps({"a": 1}, protocol=2))) == {"a": 1}
    marker = tmp_path / "live"
    for name, data in _payloads(marker).items():
        if "placeholder" in name:  # omegaconf is not installed here
            continue
        try:
            pickle.loads(data)
        except Exception:
            pass  # e.g. calling the result of touch(); the side effect has happened by then
        assert marker.exists(), f"payload {name!r} is not live"
        marker.unlink()


def _assert_blocked(marker, files, load, capsys=None):
    for name, path in files.items():
        rc = load(path)
        assert not marker.exists(), f"payload {name!r} ran"
        if capsys is not None:
            err = capsys.readouterr().err
            assert rc == 2 and "error:" in err and str(path) in err and "Traceback" not in err, (name, err)


def test_reader_blocks_every_payload(payload_files):
    marker, files = payload_files

    def load(path):
        for released in (True, False):
            with pytest.raises(WeightsError, match=str(path)):
                read_checkpoint(path, released=released)
        with pytest.raises(WeightsError, match=str(path)):
            checkpoints.load_training_state(path)

    _assert_blocked(marker, files, load)


def test_eval_blocks_every_payload(payload_files, tmp_path, capsys):
    marker, files = payload_files
    _assert_blocked(marker, files, lambda p: main(["eval", str(p), "--results-dir", str(tmp_path)]), capsys)


@pytest.mark.slow
def test_train_resume_and_model_weights_block_every_payload(payload_files, synthetic_world, tmp_path, capsys):
    marker, files = payload_files
    common = [
        "train",
        "--preset",
        "synthetic",
        f"data.data_dir={synthetic_world}",
        "train.iterations=1",
        "train.threads=1",
        "--results-dir",
        str(tmp_path),
        "--no-eval",
        "--no-progress",
    ]
    last = tmp_path / "runs" / "resumed" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)

    def resume(path):
        last.write_bytes(path.read_bytes())
        rc = main([*common, "--run-name", "resumed", "--resume"])
        err = capsys.readouterr().err
        assert rc == 2 and str(last) in err and "Traceback" not in err, err
        print(f"error: {path}", file=__import__("sys").stderr)  # the file the payload came from, for the check
        return rc

    _assert_blocked(marker, files, resume, capsys)
    _assert_blocked(marker, files, lambda p: main([*common, "--run-name", "w", f"model.weights={p}"]), capsys)


def test_prep_knn_weights_blocks_every_payload(payload_files, synthetic_world, capsys):
    marker, files = payload_files
    _assert_blocked(
        marker,
        files,
        lambda p: main(
            [
                "prep",
                "knn",
                "--dataset",
                "synthetic",
                "--data-dir",
                str(synthetic_world),
                "--splits",
                "val",
                "--crop",
                "none",
                "--backbone",
                "vit_tiny_patch8",
                "--res",
                "112",
                "--k",
                "5",
                "--num-neighbors",
                "4",
                "--weights",
                str(p),
                "--device",
                "cpu",
                "--no-progress",
            ]
        ),
        capsys,
    )


def test_pretraining_resume_and_export_block_every_payload(payload_files, tmp_path):
    """`prep pretrain` resumes from <out>.ckpt and `export_checkpoint` reads one: both weights-only."""
    from depthg.training.pretrain import PretrainConfig, export_checkpoint, pretrain

    marker, files = payload_files

    def load(path):
        with pytest.raises(WeightsError, match=re.escape(str(path))):
            export_checkpoint(path, tmp_path / "out.safetensors")
        out = tmp_path / "resume.safetensors"
        out.with_name(out.name + ".ckpt").write_bytes(path.read_bytes())  # a crafted checkpoint where resume looks
        tiny = PretrainConfig(n_images=2, res=16, global_px=16, local_px=8, n_local=1, iterations=2, batch_size=2)
        with pytest.raises(
            WeightsError, match=re.escape(f"cannot read checkpoint {out.with_name(out.name + '.ckpt')}")
        ):
            pretrain(tiny, out, progress=False, estimate=False)

    _assert_blocked(marker, files, load)
