"""DenseCRF post-processing of segmentation logits, in-process or in worker processes that cannot hang the caller.

The CRF is STEGO's, with the released parameters (METHOD.md §6.2, `DG src/crf.py`, identical to STEGO's):
logits bilinearly resized to the image size (align_corners=False), softmax, unary = -log p (`unary_from_softmax`,
clipped at 1e-5), `DenseCRF2D(W, H, C)` with a Gaussian pairwise term (sxy=1, compat=3) and a bilateral term
(sxy=67, srgb=3, compat=4) on the image in **BGR** order, 10 mean-field iterations. The channel order matters:
pydensecrf's permutohedral lattice is not symmetric in the order of the colour features (METHOD.md §6.2).

Parallelism: STEGO's `multiprocessing.Pool` hung evaluation (ANCHORS.md §4.3, STEGO#16) because it forked a
process whose torch/OpenMP thread pools were already running. `CRFPool` instead starts its workers with the
"spawn" method (fresh interpreters), bounds every wait (a per-image timeout, `eval.crf_timeout`), reports an item
whose worker raises, dies or stalls as lost with the reason, and ends its workers on every exit path, the parent's
death included. The pool is reused across batches, so the
process start-up is paid once per evaluation. Workers only import numpy and pydensecrf (torch is imported lazily
in this module, for the parent-side resize), so they start in a fraction of a second.

Shapes: B batch, C classes, h/w logit grid, H/W image. All outputs are numpy float32 probabilities [.., C, H, W].
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection as mp_connection
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from depthg.errors import DepthGError

# Released CRF parameters (`DG src/crf.py`; METHOD.md §6.2).
ITERATIONS = 10
GAUSSIAN_SXY, GAUSSIAN_COMPAT = 1, 3
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 67, 3, 4


class CRFError(DepthGError, RuntimeError):
    """A CRF worker raised, died or ran past its timeout."""


def _numpy(x: Any) -> np.ndarray:
    """torch tensor (any device) or array-like -> numpy array, without importing torch."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def crf_from_probabilities(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """DenseCRF of full-resolution probabilities: image uint8 [H,W,3] RGB, probs [C,H,W] -> Q [C,H,W] float32.

    Numpy and pydensecrf only, so that it runs in a worker process without torch.
    """
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (
        f"image must be uint8 [H,W,3] RGB, got {image.dtype} {image.shape}"
    )
    assert probs.ndim == 3 and probs.shape[1:] == image.shape[:2], (
        f"probabilities {probs.shape} must be [C,H,W] at the image size {image.shape[:2]}"
    )
    n_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))  # [C, H*W] = -log p
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    bgr = np.ascontiguousarray(image[:, :, ::-1])  # the release feeds BGR (PIL RGB flipped, `DG src/crf.py`)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=bgr, compat=BILATERAL_COMPAT)
    q = np.array(crf.inference(ITERATIONS), dtype=np.float32)  # [C, H*W]
    return q.reshape(n_classes, height, width)


def upsampled_softmax(logits: Any, size: tuple[int, int]) -> np.ndarray:
    """logits [B,C,h,w] (torch on any device, or numpy) -> softmax of the bilinear resize to size, [B,C,H,W]."""
    import torch  # lazily: worker processes import this module and must not pay for torch
    import torch.nn.functional as F

    logits = torch.as_tensor(logits)
    assert logits.ndim == 4, f"logits must be [B,C,h,w], got {tuple(logits.shape)}"
    up = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)  # [B,C,H,W]
    return up.softmax(dim=1).cpu().numpy()


def image_to_uint8(images: Any) -> np.ndarray:
    """Un-normalised float images [B,3,H,W] in [0,1] -> uint8 [B,H,W,3] as the release makes them.

    The release goes through `torchvision.transforms.functional.to_pil_image`, i.e. `mul(255).byte()`: the
    fractional part is truncated, not rounded. Values are clamped to [0,1] first (float error around unnorm).
    """
    x = _numpy(images).astype(np.float32)
    assert x.ndim == 4 and x.shape[1] == 3, f"images must be [B,3,H,W], got {x.shape}"
    return (np.clip(x, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def dense_crf(image: Any, logits: Any) -> np.ndarray:
    """image uint8 [H,W,3] RGB, logits [C,h,w] (torch or numpy) -> CRF probabilities Q, numpy float32 [C,H,W]."""
    image = _numpy(image)
    probs = upsampled_softmax(_numpy(logits)[None], image.shape[:2])[0]  # [C,H,W]
    return crf_from_probabilities(image, probs)


class CRFPool:
    """Reusable DenseCRF runner: `with CRFPool(workers=4) as crf: q = crf(images, logits)` per batch.

    workers=0 runs in the calling process. `timeout` is in seconds per image: a worker that has not answered by then
    (stuck, stopped) is killed and its image counts as lost. Every wait is bounded, `close()` included.

    Worker protocol: inputs and results travel as pickle files in a private temporary folder; the pipe to each
    worker carries only short control messages (under the pipe buffer), so neither side can block on a half-sent
    message of a stopped peer. Workers end on a stop message, on the pipe's end of file (the parent died), or when
    their parent pid changes (re-parented: the parent was killed), so no worker outlives its evaluation.

    `run` returns the results and the lost items with the reason; `__call__` raises CRFError naming them. A worker
    found dead between calls (killed while idle) is replaced, and the replacement noted in `events`.
    """

    def __init__(self, workers: int = 2, *, timeout: float = 120.0, context: str = "spawn"):
        assert workers >= 0, f"workers must be >= 0, got {workers}"
        assert timeout > 0, f"timeout must be > 0 s, got {timeout}"
        self.workers, self.timeout, self.context = workers, timeout, context
        self._procs: list[_Worker] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.events: list[str] = []

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._procs]

    def __call__(self, images: Any, logits: Any) -> np.ndarray:
        """images uint8 [B,H,W,3] RGB, logits [B,C,h,w] -> Q numpy float32 [B,C,H,W]; CRFError if any item fails."""
        q, lost = self.run(images, logits)
        _raise_lost(lost, len(q))
        return np.stack(q)

    def run(self, images: Any, logits: Any) -> tuple[list[np.ndarray | None], dict[int, str]]:
        """(Q [C,H,W] per item or None where lost, {item: reason} of the lost ones)."""
        images = _numpy(images)
        assert images.ndim == 4 and len(images) == len(logits), (
            f"images {images.shape} must be [B,H,W,3] with one image per logit map ({len(logits)})"
        )
        probs = upsampled_softmax(logits, images.shape[1:3])  # batched resize in the parent, on logits' device
        return self._run(crf_from_probabilities, list(zip(images, probs)))

    def _map(self, fn: Callable, args: Sequence[tuple]) -> list:
        """fn(*a) for every a in args, in the workers; CRFError naming the items that failed."""
        results, lost = self._run(fn, args)
        _raise_lost(lost, len(results))
        return results

    def _run(self, fn: Callable, args: Sequence[tuple]) -> tuple[list, dict[int, str]]:
        if self.workers == 0:
            return _in_process(fn, args)
        self._start()
        folder = Path(self._tmp.name)
        todo, results, lost = list(range(len(args))), [None] * len(args), {}
        for i in todo:
            with open(folder / f"in{i}.pkl", "wb") as fh:
                pickle.dump((fn, args[i]), fh, protocol=pickle.HIGHEST_PROTOCOL)
        busy: dict[_Worker, tuple[int, float]] = {}
        while todo or busy:
            for w in [w for w in self._procs if w not in busy]:
                if not todo:
                    break
                if not w.send(("run", str(folder), todo[0])):  # died while idle: replace it, keep the item
                    self._replace(
                        w,
                        f"CRF worker pid {w.process.pid} had died (exit code "
                        f"{w.process.exitcode}) while idle; started a new one",
                    )
                    continue
                busy[w] = (todo.pop(0), time.monotonic())
            if not busy:  # every worker was replaced just now: dispatch again
                continue
            deadline = min(t for _, t in busy.values()) + self.timeout
            ready = mp_connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy],
                timeout=max(0.0, deadline - time.monotonic()),
            )
            for w in list(busy):
                i, started = busy[w]
                if w.conn in ready or w.process.sentinel in ready:
                    message = w.receive()
                    if message is None:  # no answer, pipe closed: the process died on this item
                        w.process.join(_JOIN_S)
                        lost[i] = f"the worker process died (exit code {w.process.exitcode}; out of memory?)"
                        self._replace(w)
                    elif message[0] == "done":
                        results[i] = _load(folder / f"out{i}.pkl")
                    else:
                        lost[i] = message[2]
                    del busy[w]
                elif time.monotonic() - started > self.timeout:
                    lost[i] = f"no result within {self.timeout:g} s (eval.crf_timeout; stuck or stopped worker)"
                    self._replace(w)
                    del busy[w]
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        return results, lost

    def _start(self) -> None:
        if self._tmp is None:
            shm = Path("/dev/shm")
            self._tmp = tempfile.TemporaryDirectory(prefix="depthg-crf-", dir=shm if shm.is_dir() else None)
        while len(self._procs) < self.workers:
            self._procs.append(_Worker(multiprocessing.get_context(self.context)))

    def _replace(self, w: _Worker, event: str | None = None) -> None:
        w.kill()
        self._procs[self._procs.index(w)] = _Worker(multiprocessing.get_context(self.context))
        if event:
            self.events.append(event)

    def close(self) -> None:
        """Stop the workers: a stop message, at most a few seconds' wait, then a kill (a stopped one included)."""
        procs, self._procs = self._procs, []
        for w in procs:
            w.send(("stop",))
        for w in procs:
            w.process.join(_JOIN_S)
            w.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        for w in self._procs:
            w.kill()


_JOIN_S = 2.0  # seconds a worker gets to exit on its own before it is killed
_POLL_S = 1.0  # how often an idle worker checks that its parent is alive


def _raise_lost(lost: dict[int, str], n: int) -> None:
    if lost:
        i = min(lost)
        others = f" (and {len(lost) - 1} more of {n} items)" if len(lost) > 1 else ""
        raise CRFError(
            f"CRF failed on item {i}: {lost[i]}{others}; raise eval.crf_timeout, use fewer "
            f"eval.crf_workers, or eval.crf_workers=0 (in-process)"
        )


def _in_process(fn: Callable, args: Sequence[tuple]) -> tuple[list, dict[int, str]]:
    results, lost = [], {}
    for i, a in enumerate(args):
        try:
            results.append(fn(*a))
        except Exception as error:  # the same report as a worker's
            results.append(None)
            lost[i] = f"{type(error).__name__}: {error}"
    return results, lost


def _load(path: Path) -> Any:
    with open(path, "rb") as fh:
        return pickle.load(fh)  # written by our own worker in our private folder


class _Worker:
    """One spawned CRF process and the parent's end of its control pipe."""

    def __init__(self, ctx) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, os.getpid()), daemon=True, name="depthg-crf")
        self.process.start()
        child.close()  # only the worker holds its end: its death is the parent's end of file

    def send(self, message: tuple) -> bool:
        try:
            self.conn.send(message)  # a few bytes: fits the pipe buffer, never blocks
            return True
        except (OSError, ValueError):
            return False

    def receive(self) -> tuple | None:
        try:
            return self.conn.recv() if self.conn.poll() else None
        except (EOFError, OSError):
            return None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
        self.process.join(_JOIN_S)
        self.conn.close()


def _serve(conn, parent: int) -> None:
    """Worker loop: run the task files named on the pipe until told to stop or orphaned."""
    while True:
        if os.getppid() != parent:  # re-parented: the evaluation was killed
            return
        try:
            if not conn.poll(_POLL_S):
                continue
            message = conn.recv()
        except (EOFError, OSError):  # the parent closed or lost its end
            return
        if message[0] != "run":
            return
        _, folder, i = message
        try:
            fn, args = _load(Path(folder) / f"in{i}.pkl")
            out = Path(folder) / f"out{i}.pkl"
            with open(out.with_suffix(".tmp"), "wb") as fh:
                pickle.dump(fn(*args), fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(out.with_suffix(".tmp"), out)  # complete before "done" is sent
            reply = ("done", i)
        except Exception as error:  # reported to the parent, which names the item
            reply = ("error", i, f"{type(error).__name__}: {error}")
        try:
            conn.send(reply)
        except OSError:
            return


def batched_crf(
    images: Any, logits: Any, *, workers: int = 2, timeout: float = 120.0, pool: CRFPool | None = None
) -> np.ndarray:
    """images uint8 [B,H,W,3] RGB, logits [B,C,h,w] -> Q numpy float32 [B,C,H,W].

    Pass a long-lived `pool` to reuse its workers across batches; otherwise a pool lives for this call only.
    """
    if pool is not None:
        return pool(images, logits)
    with CRFPool(workers, timeout=timeout) as own:
        return own(images, logits)
