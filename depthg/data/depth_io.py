"""Depth files: our 16-bit PNG + JSON sidecar, the release's 8-bit ``_zoedepth.png``, and the training conversion.

Shapes: H, W image height and width. Every depth array here is float32 [H,W], larger = farther.

Our format (DESIGN.md §5, data contract): ``<stem>.png`` is a 16-bit grayscale PNG holding
v = round((d - min) / (max - min) * 65535) and ``<stem>.json`` stores min, max, units and source, so the original
values come back within (max - min) / 65535 (half of that, plus float32 rounding).

The release's format (METHOD.md §1.3): an 8-bit PNG holding floor(norm * 255) of a per-image min-max normalised
metric depth; the absolute scale is lost. ``read_depth`` returns its raw 0..255 values and flags it as 8-bit.

``depth_for_training`` turns a full-resolution depth map into what the training loader feeds the loss
(METHOD.md §1.6, DESIGN.md §3 "Depth loading"): paper = float in [0,1]; reference = the release's 0..255 integers,
with the Potsdam truncation bug (METHOD.md §1.6, §4.6). Apply it before resizing/cropping, because the release
normalised each *full* image when writing its PNG.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from depthg.config import check_fidelity
from depthg.errors import DataError
from depthg.files import atomic_write, write_text

FORMAT_16 = "depthg-depth16"
# What the authors' released 8-bit maps (no sidecar) were made with: ZoeD_M12_N, METHOD.md §1.3; its transformers
# twin is Intel/zoedepth-nyu, so a config asking for that model accepts them (depthg.data.pairs).
RELEASED_MAPS_MODEL = "Intel/zoedepth-nyu"
_MAX16 = 65535
_PREP_HINT = (
    "create it with `python -m depthg prep depth ...` (or `python -m depthg prep synthetic` for the synthetic world)"
)


def sidecar_path(png_path: str | os.PathLike) -> Path:
    """The JSON sidecar that belongs to a 16-bit depth PNG: same folder and stem, suffix .json."""
    return Path(png_path).with_suffix(".json")


def write_depth(
    png_path: str | os.PathLike,
    depth: np.ndarray,
    *,
    source: str,
    units: str,
    extra: dict | None = None,
) -> None:
    """Write depth float [H,W] (larger = farther) as 16-bit PNG ``png_path`` plus its JSON sidecar.

    ``units`` is "metres" (synthetic world, metric estimators) or "relative" (disparity-derived estimators).
    ``extra`` entries are added to the sidecar (e.g. the estimator's normalisation); they cannot override the
    format keys.
    """
    depth = np.asarray(depth)
    assert depth.ndim == 2, f"depth must be [H,W], got shape {depth.shape}"
    assert units in ("metres", "relative"), f"units must be 'metres' or 'relative', got {units!r}"
    png_path = Path(png_path)
    if not np.isfinite(depth).all():
        raise DataError(f"refusing to write depth {png_path}: it holds non-finite values (NaN/inf); fix the producer")
    d = depth.astype(np.float64)  # float64 so the quantisation itself adds no float32 error
    lo, hi = float(d.min()), float(d.max())
    span = hi - lo
    # A constant map stores v = 0 everywhere; read_depth gives back min.
    v = np.zeros(d.shape, np.uint16) if span == 0 else np.round((d - lo) / span * _MAX16).astype(np.uint16)
    meta = dict(extra or {})
    meta.update(
        format=FORMAT_16,
        min=lo,
        max=hi,
        units=units,
        source=source,
        larger_is_farther=True,
        height=int(d.shape[0]),
        width=int(d.shape[1]),
    )
    # Sidecar first, PNG last, each atomically: a PNG without its sidecar never counts as finished, so a killed
    # writer leaves no map that looks done. uint16 -> PIL mode "I;16", a 16-bit grayscale PNG (level 1: fast,
    # still lossless).
    write_text(sidecar_path(png_path), json.dumps(meta, indent=1))
    with atomic_write(png_path) as tmp:
        Image.fromarray(v).save(tmp, format="PNG", compress_level=1)


def depth_model_of(meta: dict) -> str:
    """Which depth model made a map, from ``read_depth``'s metadata: a five-crop carries its source map's model
    (``depth_model``), our maps record theirs (``model``), the release's maps are ZoeD_M12_N; else its source."""
    return str(meta.get("depth_model") or meta.get("model") or meta.get("source") or "unknown")


def _open_png(png_path: Path) -> Image.Image:
    if not png_path.is_file():
        raise DataError(f"depth file {png_path} does not exist; {_PREP_HINT}")
    try:
        img = Image.open(png_path)
        img.load()
    except Exception as e:  # PIL raises several types for truncated/garbage files
        raise DataError(f"depth file {png_path} cannot be read ({e}); delete it and {_PREP_HINT}") from e
    return img


def read_depth(png_path: str | os.PathLike, *, with_meta: bool = False):
    """Read a depth PNG: float32 [H,W], larger = farther (and the metadata dict if ``with_meta``).

    - 16-bit PNG (ours): needs the JSON sidecar; returns depth in its original units; meta = the sidecar + bits=16.
    - 8-bit PNG (the release's ``_zoedepth.png``): returns the raw 0..255 values; meta = {"format": "zoedepth8",
      "bits": 8, "min": 0.0, "max": 255.0, "units": "relative", ...}.
    Missing/unreadable files, a missing or malformed sidecar, or non-finite values raise DataError.
    """
    png_path = Path(png_path)
    img = _open_png(png_path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        meta = _read_sidecar(png_path)
        v = np.asarray(img).astype(np.float64)
        if v.max(initial=0) > _MAX16 or v.min(initial=0) < 0:
            raise DataError(f"depth file {png_path} holds values outside 0..65535; {_PREP_HINT}")
        lo, hi = meta["min"], meta["max"]
        depth = (lo + v / _MAX16 * (hi - lo)).astype(np.float32)
        if (meta.get("height"), meta.get("width")) not in ((None, None), depth.shape):
            raise DataError(
                f"depth file {png_path} is {depth.shape} but its sidecar says "
                f"({meta['height']}, {meta['width']}); {_PREP_HINT}"
            )
        meta["bits"] = 16
    elif img.mode in ("L", "RGB", "RGBA", "P"):
        a = np.asarray(img.convert("L") if img.mode == "P" else img)
        if a.ndim == 3:  # some writers store grey as RGB: accept only if the channels agree
            if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
                raise DataError(f"depth file {png_path} is a colour image, not a depth map; {_PREP_HINT}")
            a = a[..., 0]
        depth = a.astype(np.float32)
        meta = dict(
            format="zoedepth8", bits=8, min=0.0, max=255.0, units="relative", source="zoedepth", larger_is_farther=True
        )
        side = sidecar_path(png_path)
        if side.is_file():  # 8-bit maps of our depth stage (release encoding) say which model made them
            try:
                meta = {**json.loads(side.read_text()), **meta}
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"depth sidecar {side} is not readable JSON ({e}); {_PREP_HINT}") from e
        else:
            meta["model"] = RELEASED_MAPS_MODEL  # the authors' released map: ZoeD_M12_N
    else:
        raise DataError(f"depth file {png_path} has unsupported PNG mode {img.mode!r}; {_PREP_HINT}")
    if not np.isfinite(depth).all():
        raise DataError(f"depth file {png_path} decodes to non-finite values (check its sidecar); {_PREP_HINT}")
    return (depth, meta) if with_meta else depth


def _read_sidecar(png_path: Path) -> dict:
    side = sidecar_path(png_path)
    if not side.is_file():
        raise DataError(f"16-bit depth file {png_path} has no sidecar {side} (it holds min/max); {_PREP_HINT}")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"depth sidecar {side} is not readable JSON ({e}); {_PREP_HINT}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_16:
        raise DataError(f"depth sidecar {side} is not a {FORMAT_16!r} sidecar; {_PREP_HINT}")
    for key in ("min", "max"):
        if not isinstance(meta.get(key), (int, float)) or not np.isfinite(meta[key]):
            raise DataError(f"depth sidecar {side} has no finite {key!r}; {_PREP_HINT}")
    if meta["max"] < meta["min"]:
        raise DataError(f"depth sidecar {side} has max < min; {_PREP_HINT}")
    return meta


def _to_uint8_semantics(depth: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """floor(norm * 255) in float32 as the release's writer (METHOD.md §1.3: min-max, *255, uint8 cast truncates).

    ``value_range`` (min, max) of the full source image, for a five-crop: the release normalised the whole image
    before cropping, so a crop's values are not stretched to its own 0..255 (METHOD.md §1.4)."""
    d = depth.astype(np.float32)
    lo, hi = (d.min(), d.max()) if value_range is None else (np.float32(value_range[0]), np.float32(value_range[1]))
    if hi == lo:  # the release would divide by zero; a flat scene is uniformly "nearest"
        return np.zeros_like(d)
    norm = (d - lo) / (hi - lo)
    return np.floor(norm * np.float32(255)).astype(np.float32)


def depth_for_training(
    depth: np.ndarray, *, fidelity: str, dataset: str, is_8bit: bool = False, value_range: tuple | None = None
) -> np.ndarray:
    """Full-resolution depth float [H,W] -> the float32 [H,W] depth the training loader uses.

    paper:     per-image min-max to [0,1], larger = farther (a constant map gives zeros).
    reference: the release's 8-bit values 0..255 = floor(norm * 255) (METHOD.md §1.3, §1.6); an input that already
               is a release 8-bit file (``is_8bit``, from ``read_depth(..., with_meta=True)[1]["bits"] == 8``) is
               used as is; a five-crop of a full map is normalised with the full map's ``value_range``
               (min, max, bits of the source, from the crop's sidecar), as the release crops its 8-bit files. For
               ``dataset == "potsdam"`` the release's bug: to_tensor gives v/255, the int cast keeps
               only v == 255, so the result is 1 at the per-image maximum and 0 elsewhere (METHOD.md §1.6, §4.6).
    """
    depth = np.asarray(depth)
    assert depth.ndim == 2, f"depth must be [H,W], got shape {depth.shape}"
    check_fidelity(fidelity, "fidelity.depth_loading")
    if not np.isfinite(depth).all():
        raise DataError(f"depth map for dataset {dataset!r} holds non-finite values; regenerate its depth files")
    if fidelity == "paper":
        d = depth.astype(np.float32)
        lo, hi = d.min(), d.max()
        return np.zeros_like(d) if hi == lo else (d - lo) / (hi - lo)
    if is_8bit:
        if depth.min() < 0 or depth.max() > 255:
            raise DataError(f"8-bit depth for dataset {dataset!r} holds values outside 0..255")
        v = np.floor(depth).astype(np.float32)
    elif value_range is not None and value_range[2] == 8:  # crop of a release 8-bit map: its values, unchanged
        v = np.rint(depth).astype(np.float32)  # integers stored in 16 bits come back within half a step
    else:
        v = _to_uint8_semantics(depth, None if value_range is None else value_range[:2])
    if dataset == "potsdam":
        # DG src/data.py:193, :226: to_tensor(8-bit PNG) = v/255 in [0,1], then .long() truncates to 0 except 1.0.
        return (v == 255).astype(np.float32)
    return v
