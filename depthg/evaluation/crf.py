"""DenseCRF post-processing of segmentation logits, in-process or in worker processes that cannot hang the caller.

The CRF is STEGO's, with the released parameters (METHOD.md §6.2, `DG src/crf.py`, identical to STEGO's):
logits bilinearly resized to the image size (align_corners=False), softmax, unary = -log p (`unary_from_softmax`,
clipped at 1e-5), `DenseCRF2D(W, H, C)` with a Gaussian pairwise term (sxy=1, compat=3) and a bilateral term
(sxy=67, srgb=3, compat=4) on the image in **BGR** order, 10 mean-field iterations. The channel order matters:
pydensecrf's permutohedral lattice is not symmetric in the order of the colour features (METHOD.md §6.2).

Parallelism: STEGO's `multiprocessing.Pool` hung evaluation (ANCHORS.md §4.3, STEGO#16) because it forked a
process whose torch/OpenMP thread pools were already running. `CRFPool` instead starts its workers with the
"spawn" method (fresh interpreters), sends only numpy arrays, bounds every call with a timeout, and turns a
worker that raises, dies or stalls into a `CRFError` in the caller. The pool is reused across batches, so the
process start-up is paid once per evaluation. Workers only import numpy and pydensecrf (torch is imported lazily
in this module, for the parent-side resize), so they start in a fraction of a second.

Shapes: B batch, C classes, h/w logit grid, H/W image. All outputs are numpy float32 probabilities [.., C, H, W].
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

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
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, \
        f"image must be uint8 [H,W,3] RGB, got {image.dtype} {image.shape}"
    assert probs.ndim == 3 and probs.shape[1:] == image.shape[:2], \
        f"probabilities {probs.shape} must be [C,H,W] at the image size {image.shape[:2]}"
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

    workers=0 runs in the calling process. `timeout` is in seconds per image; one call may take
    timeout * ceil(B / workers) in all before its workers are killed and `CRFError` is raised. After an error the
    pool starts fresh workers on its next call.
    """

    def __init__(self, workers: int = 2, *, timeout: float = 120.0, context: str = "spawn"):
        assert workers >= 0, f"workers must be >= 0, got {workers}"
        self.workers, self.timeout, self.context = workers, timeout, context
        self._executor: cf.ProcessPoolExecutor | None = None

    def __call__(self, images: Any, logits: Any) -> np.ndarray:
        """images uint8 [B,H,W,3] RGB, logits [B,C,h,w] -> Q numpy float32 [B,C,H,W]."""
        images = _numpy(images)
        assert images.ndim == 4 and len(images) == len(logits), \
            f"images {images.shape} must be [B,H,W,3] with one image per logit map ({len(logits)})"
        probs = upsampled_softmax(logits, images.shape[1:3])  # batched resize in the parent, on logits' device
        return np.stack(self._map(crf_from_probabilities, list(zip(images, probs))))

    def _map(self, fn: Callable, args: Sequence[tuple]) -> list:
        """fn(*a) for every a in args, in the workers, with the timeout and failure handling described above."""
        if self.workers == 0:
            return [fn(*a) for a in args]
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context(self.context))
        futures = [self._executor.submit(fn, *a) for a in args]
        limit = self.timeout * math.ceil(len(args) / self.workers)
        done, pending = cf.wait(futures, timeout=limit, return_when=cf.FIRST_EXCEPTION)
        for i, future in enumerate(futures):
            error = future.exception() if future in done else None
            if isinstance(error, BrokenProcessPool):
                self._kill()
                raise CRFError(f"a CRF worker process died (out of memory?) on item {i}; retry with fewer "
                               f"workers or workers=0 (in-process)") from error
            if error is not None:
                self._kill()
                raise CRFError(f"CRF failed on item {i}: {type(error).__name__}: {error}") from error
        if pending:
            self._kill()
            raise CRFError(f"CRF did not finish {len(pending)} of {len(args)} items within {limit:.0f} s "
                           f"(timeout={self.timeout} s per image); raise the timeout or use workers=0")
        return [f.result() for f in futures]

    def _kill(self) -> None:
        """Stop the workers now, even a stuck one (shutdown() alone would wait for it forever)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if hasattr(executor, "kill_workers"):  # Python >= 3.14
            executor.kill_workers()
        else:  # no public API before 3.14; `_processes` is the pid -> Process map the executor keeps
            for process in list((executor._processes or {}).values()):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def batched_crf(images: Any, logits: Any, *, workers: int = 2, timeout: float = 120.0,
                pool: CRFPool | None = None) -> np.ndarray:
    """images uint8 [B,H,W,3] RGB, logits [B,C,h,w] -> Q numpy float32 [B,C,H,W].

    Pass a long-lived `pool` to reuse its workers across batches; otherwise a pool lives for this call only.
    """
    if pool is not None:
        return pool(images, logits)
    with CRFPool(workers, timeout=timeout) as own:
        return own(images, logits)
