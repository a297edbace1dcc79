"""Depth stage: monocular depth maps from a Hugging Face ``transformers`` depth-estimation model.

Shapes: B batch, H, W input image (each image keeps its own size), h, w model resolution.

The release ran ZoeDepth ZoeD_M12_N through its own repository code and stored 8-bit per-image min-max PNGs next
to the source images, overwriting Cityscapes RGB files (METHOD.md §1.3, §9 #7). Here (DESIGN.md §5):
- any ``AutoModelForDepthEstimation`` checkpoint: Depth Anything V2 Small by default (Apache-2.0), or the paper's
  and the release's ZoeD_M12_N, whose transformers twin is ``Intel/zoedepth-nyu`` (NYU-finetuned; not
  ``Intel/zoedepth-nyu-kitti``, which is ZoeD_NK), for reference presets; a local model directory works the same way;
- the output is upsampled (bicubic, the processor's own post-processing) to the input image size;
- metric models (ZoeDepth, Depth Anything metric variants) give depth in metres, larger = farther, stored as is;
  ZoeDepth runs with horizontal-flip averaging as the release's ``zoe.infer`` did;
- relative models (Depth Anything, DPT/MiDaS) give affine-invariant *disparity*, larger = nearer. It becomes depth by
  per-image min-max normalisation to n in [0,1], then depth = 1 / (n + eps). eps bounds the far end where the
  disparity is ~0 (sky): the farthest pixel is (1 + eps) / eps times the nearest (11x for eps = 0.1), instead of
  infinitely far. The release's MiDaS branch inverted linearly (1 - n, ``DG generate_depth.py:192-197``); the
  reciprocal keeps the perspective compression of true depth, which the 3D lifting of FPS works on (METHOD.md §4.1);
- stored as our 16-bit PNG + JSON sidecar (``write_depth``) at ``derived/depth/<split>/<key>.png``, with the model,
  its output kind, the normalisation and the conversion in the sidecar; or, with ``encoding="release8"`` (reference
  presets), as the release stored its maps (DG generate_depth.py:232-240): per-image min-max, x255, truncated to
  uint8, an 8-bit PNG, with the same sidecar beside it. Nothing is written into the source tree. The manifest and
  every sidecar name the model, and training refuses maps of another model than ``data.depth_model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from depthg.data.datasets import source_dataset
from depthg.data.depth_io import RELEASED_MAPS_MODEL, sidecar_path, write_depth
from depthg.data.stage import StageResult, run_stage
from depthg.device import resolve_device
from depthg.errors import ConfigError, DataError, WeightsError
from depthg.files import atomic_write, write_text
from depthg.model.hub import hub_session
from depthg.paths import derived_dir

DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
# ZoeD_M12_N (NYU), the model of the paper and the release (METHOD.md §1.3): its transformers twin
PAPER_MODEL = RELEASED_MAPS_MODEL
ENCODINGS = ("float16", "release8")  # our 16-bit PNG + sidecar; the release's 8-bit min-max PNG
_METRIC_MODEL_TYPES = ("zoedepth", "glpn", "depth_pro")


def depth_dir(dataset: str, data_dir=None) -> Path:
    """``<data>/<dataset>/derived/depth``: holds ``<split>/<key>.png`` + ``.json`` (``directory:<folder>``: the
    folder's name), where ``depthg.data.datasets`` looks for depth first."""
    return derived_dir(dataset, data_dir) / "depth"


def disparity_to_depth(disparity: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Relative disparity [..., H, W] (larger = nearer) -> depth (larger = farther), per map.

    n = (disp - min) / (max - min) in [0, 1]; depth = 1 / (n + eps), in [1 / (1 + eps), 1 / eps]. A constant map
    gives n = 0 (depth 1 / eps everywhere).
    """
    assert eps > 0, f"eps must be > 0, got {eps}"
    d = disparity.to(torch.float32)
    lo = d.amin(dim=(-2, -1), keepdim=True)
    span = d.amax(dim=(-2, -1), keepdim=True) - lo
    n = torch.where(span > 0, (d - lo) / span.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(d))
    return 1.0 / (n + eps)


def release_8bit(depth: np.ndarray) -> np.ndarray:
    """Depth float [H,W] -> the release's stored uint8 [H,W]: per-image min-max, x255, truncated (DG
    generate_depth.py:232-240), in float32 as its writer; a flat map gives zeros."""
    d = depth.astype(np.float32)
    lo, hi = d.min(), d.max()
    norm = np.zeros_like(d) if hi == lo else (d - lo) / (hi - lo)
    return np.floor(norm * np.float32(255)).astype(np.uint8)


def write_release_8bit(png_path: Path, depth: np.ndarray, meta: dict) -> None:
    """The release's 8-bit map plus our sidecar (which model made it); sidecar first, PNG last, as write_depth."""
    if not np.isfinite(depth).all():
        raise DataError(f"refusing to write depth {png_path}: it holds non-finite values (NaN/inf)")
    write_text(
        sidecar_path(png_path),
        json.dumps(
            {**meta, "encoding": "release8", "height": int(depth.shape[0]), "width": int(depth.shape[1])}, indent=1
        ),
    )
    with atomic_write(png_path) as tmp:
        Image.fromarray(release_8bit(depth), mode="L").save(tmp, format="PNG")


def load_depth_model(model: str, device: torch.device):
    """(processor, model in eval mode on ``device``) from a HF id or a local directory; clear error if missing."""
    try:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    except ImportError as e:
        raise WeightsError("depth estimation needs the `transformers` package: pip install 'depthg[depth]'.") from e
    local = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) and not local.is_dir():
        raise WeightsError(
            f"depth model directory {local} does not exist; pass a folder made by save_pretrained "
            f"(config.json, weights, preprocessor_config.json) or a Hugging Face model id."
        )
    source = str(local) if local.is_dir() else model
    try:
        with hub_session() as online:  # no network: the cache or an immediate error, not minutes of retries
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=not online)
            net = AutoModelForDepthEstimation.from_pretrained(source, local_files_only=not online)
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"cannot load depth model {model!r} ({str(e).splitlines()[0]}). On a machine with network run "
            f"`hf download {model} --local-dir <dir>`, copy <dir> here and pass it: `python -m depthg prep depth "
            f"--model <dir>`, or `papermill notebooks/01_data_prep.ipynb ... -p depth_model <dir>`; or copy a "
            f"filled Hugging Face cache ($HF_HOME, default ~/.cache/huggingface). Set HF_HUB_OFFLINE=1 to skip the "
            f"network check."
        ) from e
    return processor, net.eval().to(device)


class DepthEstimator:
    """A transformers depth model that maps RGB images to depth maps (larger = farther) at the input size."""

    def __init__(
        self, model: str = DEFAULT_MODEL, *, device: str = "auto", output_kind: str = "auto", eps: float = 0.1
    ):
        if output_kind not in ("auto", "disparity", "metric"):
            raise ConfigError(f"output kind must be auto, disparity or metric, got {output_kind!r}.")
        if eps <= 0:
            raise ConfigError(f"--eps must be > 0, got {eps}.")
        self.model_id, self.eps, self.device = model, eps, resolve_device(device)
        self.processor, self.net = load_depth_model(model, self.device)
        cfg = self.net.config
        if output_kind == "auto":
            metric = cfg.model_type in _METRIC_MODEL_TYPES or getattr(cfg, "depth_estimation_type", "") == "metric"
            output_kind = "metric" if metric else "disparity"
        self.kind = output_kind
        self.flip_tta = cfg.model_type == "zoedepth"  # as ZoeDepth's own infer() (METHOD.md §1.3)

    def sidecar(self) -> dict:
        """What the sidecar of every map records about how it was made."""
        meta = {
            "model": self.model_id,
            "model_type": self.net.config.model_type,
            "output_kind": self.kind,
            "upsampling": "bicubic to the input image size (processor post-processing)",
            "flip_tta": self.flip_tta,
        }
        if self.kind == "disparity":
            meta.update(
                normalisation="per-image min-max of the disparity to n in [0,1]",
                conversion="depth = 1 / (n + eps)",
                eps=self.eps,
            )
        else:
            meta.update(normalisation="none", conversion="none (metric depth, clamped at 0)")
        return meta

    @property
    def units(self) -> str:
        return "metres" if self.kind == "metric" else "relative"

    @torch.no_grad()
    def _predict_group(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """pixels [B,3,h,w] of images with one processed size -> raw model output per image, [H,W] each."""
        out = self.net(pixel_values=pixels)
        if self.flip_tta:
            flipped = self.net(pixel_values=pixels.flip(-1))
            post = self.processor.post_process_depth_estimation(
                out, source_sizes=sizes, target_sizes=sizes, outputs_flipped=flipped
            )
        else:
            post = self.processor.post_process_depth_estimation(out, target_sizes=sizes)
        return [p["predicted_depth"].reshape(size).float() for p, size in zip(post, sizes)]

    def predict(self, images: list) -> list[np.ndarray]:
        """PIL RGB images (any sizes) -> float32 depth [H,W] per image, larger = farther."""
        sizes = [(im.height, im.width) for im in images]
        pixels = [self.processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"] for im in images]
        groups: dict[tuple, list[int]] = {}  # images whose processed size agrees are batched together
        for j, p in enumerate(pixels):
            groups.setdefault(tuple(p.shape), []).append(j)
        raw: list[torch.Tensor | None] = [None] * len(images)
        for idx in groups.values():
            batch = torch.cat([pixels[j] for j in idx]).to(self.device)  # [B,3,h,w]
            for j, r in zip(idx, self._predict_group(batch, [sizes[j] for j in idx])):
                raw[j] = r
        if self.kind == "disparity":
            depth = [disparity_to_depth(r, self.eps) for r in raw]
        else:
            depth = [r.clamp_min(0) for r in raw]  # bicubic upsampling can overshoot below 0 at edges
        return [d.cpu().numpy().astype(np.float32) for d in depth]


def run_depth(
    dataset: str,
    data_dir,
    splits,
    *,
    model: str = DEFAULT_MODEL,
    output_kind: str = "auto",
    eps: float = 0.1,
    batch_size: int = 4,
    device: str = "auto",
    encoding: str = "float16",
    rank: int = 0,
    world: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> list[tuple[str, StageResult]]:
    """The depth stage over ``splits``: depth for every source image of this rank (i % world == rank).

    ``encoding``: "float16" (our 16-bit PNG + sidecar) or "release8" (the release's 8-bit maps, reference presets).
    The model is loaded only when some item still needs it, so a finished stage reruns without weights.
    """
    if encoding not in ENCODINGS:
        raise ConfigError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}.")

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}.")
    root = depth_dir(dataset, data_dir)
    params = {"model": model, "output_kind": output_kind, "eps": eps}
    if encoding != "float16":  # recorded when not the default, so earlier manifests stay valid
        params["encoding"] = encoding
    estimator: list[DepthEstimator] = []  # created on first use
    results = []
    for split in splits:
        src = source_dataset(dataset, data_dir, split, with_depth=False)
        keys = list(src.keys())
        paths = [root / split / f"{key}.png" for key in keys]

        def load() -> None:  # before any output is removed or parameters recorded (a bad --model costs nothing)
            if not estimator:
                estimator.append(DepthEstimator(model, device=device, output_kind=output_kind, eps=eps))

        def process(batch: list[int], src=src, paths=paths, split=split) -> None:
            load()
            est = estimator[0]
            items = [src[i] for i in batch]
            for i, item, depth in zip(batch, items, est.predict([it["image"] for it in items])):
                extra = {**est.sidecar(), "dataset": dataset, "split": split, "key": item["key"]}
                if encoding == "release8":
                    write_release_8bit(paths[i], depth, {**extra, "source": est.model_id, "units": "relative"})
                else:
                    write_depth(paths[i], depth, source=est.model_id, units=est.units, extra=extra)

        results.append(
            (
                split,
                run_stage(
                    root,
                    "depth",
                    split,
                    params,
                    len(keys),
                    done=lambda i, paths=paths: paths[i].is_file() and sidecar_path(paths[i]).is_file(),
                    remove=lambda i, paths=paths: [
                        p.unlink(missing_ok=True) for p in (paths[i], sidecar_path(paths[i]))
                    ],
                    process=process,
                    check=load,
                    overwrite=overwrite,
                    rank=rank,
                    world=world,
                    batch_size=batch_size,
                    desc=f"depth {dataset}/{split}",
                    progress=progress,
                ),
            )
        )
    return results
