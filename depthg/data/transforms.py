"""Resize, centre-crop and normalise image, label and depth the way the release's ``get_transform`` does.

Shapes: B batch, H, W source size, R output side (square). Image [3,R,R] float32, label [R,R] int64, depth
[1,R,R] float32.

The release (METHOD.md §1.6, `DG src/utils.py:164-182`) resizes the short side to R and centre-crops R x R, with
NEAREST for *everything*, RGB images included (a STEGO quirk, METHOD.md §9 #13). Here:
- images: NEAREST with ``interpolation="reference"``, antialiased BILINEAR (PIL) with ``"paper"``;
- labels: always NEAREST (class ids cannot be interpolated);
- depth: always NEAREST, in both fidelities. The release passes depth through the *label* transform, and NEAREST
  keeps the property that lets the depth conversion run before the resize: a pointwise map (min-max with the full
  image's range, 8-bit truncation, the Potsdam int cast) commutes with NEAREST resizing and cropping, so
  ``depth_for_training(full image)`` followed by NEAREST equals the release's order exactly.
Output sizes follow torchvision's ``Resize(R)`` (long side = int(R * long / short)) and ``CenterCrop(R)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from depthg.data.depth_io import depth_for_training

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NEAREST = TF.InterpolationMode.NEAREST
_INTERPOLATION = {"reference": _NEAREST, "paper": TF.InterpolationMode.BILINEAR}


def resize_crop(img: Image.Image, res: int, mode: TF.InterpolationMode = _NEAREST) -> Image.Image:
    """Short side to ``res`` then the centre ``res`` x ``res`` (torchvision Resize(res) + CenterCrop(res))."""
    assert res > 0, f"resolution must be positive, got {res}"
    return TF.center_crop(TF.resize(img, res, interpolation=mode), res)


def image_tensor(img: Image.Image, res: int, *, interpolation: str = "paper") -> torch.Tensor:
    """RGB PIL image -> float32 [3,R,R], ImageNet-normalised. interpolation: "paper" bilinear, "reference" nearest."""
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"image_interpolation must be 'paper' or 'reference', got {interpolation!r}")
    out = TF.to_tensor(resize_crop(img.convert("RGB"), res, _INTERPOLATION[interpolation]))
    return TF.normalize(out, IMAGENET_MEAN, IMAGENET_STD)


def label_tensor(label: np.ndarray, res: int) -> torch.Tensor:
    """int64 [H,W] (-1 = ignore) -> int64 [R,R], NEAREST (PIL int32 image, so -1 survives the resize)."""
    assert label.ndim == 2, f"label must be [H,W], got {label.shape}"
    img = Image.fromarray(label.astype(np.int32))  # mode "I"
    return torch.from_numpy(np.asarray(resize_crop(img, res), dtype=np.int64).copy())


def depth_tensor(
    depth: np.ndarray, res: int, *, fidelity: str, dataset: str, is_8bit: bool, value_range: tuple | None = None
) -> torch.Tensor:
    """Full-resolution depth float32 [H,W] -> float32 [1,R,R] with the training semantics of ``fidelity``.

    paper: per-image min-max to [0,1]; reference: 0..255 (Potsdam: the release's truncation to ~0). The conversion
    runs on the full image first (its min/max are the full image's, as in the release's files), then NEAREST.
    """
    d = depth_for_training(depth, fidelity=fidelity, dataset=dataset, is_8bit=is_8bit, value_range=value_range)
    img = Image.fromarray(np.ascontiguousarray(d, dtype=np.float32))  # mode "F"
    return torch.from_numpy(np.asarray(resize_crop(img, res), dtype=np.float32).copy())[None]  # [1,R,R]


def unnormalize(img: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised float [3,H,W] or [B,3,H,W] -> uint8 [H,W,3] or [B,H,W,3] RGB (e.g. for dense_crf).

    Values are clamped to [0,1] and truncated by the uint8 cast, as the release's ``to_pil_image(unnorm(x))``
    does before its CRF (METHOD.md §6.2).
    """
    assert img.dim() in (3, 4) and img.shape[-3] == 3, f"expected [3,H,W] or [B,3,H,W], got {tuple(img.shape)}"
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(3, 1, 1)
    rgb = (img * std + mean).clamp(0, 1) * 255
    return rgb.to(torch.uint8).movedim(-3, -1)  # [...,3,H,W] -> [...,H,W,3]
