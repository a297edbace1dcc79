"""The multi-crop views of DINO pretraining (Caron et al., ICCV 2021, §3.1) and iBOT's patch masks, drawn
deterministically: every draw of iteration ``it`` comes from a generator seeded with (seed, it).

Shapes: B batch, H = W = rendered size, px crop size, p patch size, N = (px / p)^2 patches of a crop.
``cfg`` is a :class:`depthg.training.pretrain.PretrainConfig`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from depthg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PretrainConfig = Any  # depthg.training.pretrain.PretrainConfig (that module imports this one)


def generator(seed: int, it: int) -> torch.Generator:
    """The generator of draw stream ``it`` (iterations >= 0; epochs' permutations and patch masks negative)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + it)


def batch_indices(cfg: PretrainConfig, it: int) -> torch.Tensor:
    """Image indices [B] of iteration ``it``: consecutive slices of one random permutation per epoch."""
    pos = it * cfg.batch_size + torch.arange(cfg.batch_size)
    epochs, offs = pos // cfg.n_images, pos % cfg.n_images
    perms = {int(e): torch.randperm(cfg.n_images, generator=generator(cfg.seed, -1 - int(e))) for e in epochs.unique()}
    return torch.stack([perms[int(e)][o] for e, o in zip(epochs, offs)])


def _crops(x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Random resized crops with horizontal flips of x [B,3,H,W] -> [B,3,size,size] (one affine grid per image)."""
    B = x.shape[0]
    area = torch.empty(B).uniform_(*scale, generator=g)
    log_r = torch.empty(B).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)  # crop width / image width
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(B, generator=g) * 2 - 1) * (1 - w)  # centres in [-1, 1] keeping the crop inside
    cy = (torch.rand(B, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(B, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta, [B, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Colour jitter (p 0.8: brightness and contrast x[0.6, 1.4], saturation x[0.8, 1.2]) and grayscale (p 0.1) of
    x [B,3,h,w] in [0,1]. Hue stays: it is class evidence in this world, as in DINO's ImageNet recipe it is jittered
    only by 0.1."""
    B = x.shape[0]
    on = (torch.rand(B, generator=g) < 0.8).float().view(B, 1, 1, 1)
    bright, contrast = (torch.empty(2, B, 1, 1, 1).uniform_(0.6, 1.4, generator=g) - 1) * on + 1
    sat = (torch.empty(B, 1, 1, 1).uniform_(0.8, 1.2, generator=g) - 1) * on + 1
    x = x * bright
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - grey.mean((2, 3), keepdim=True)) * contrast + grey.mean((2, 3), keepdim=True)
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = grey + (x - grey) * sat
    to_grey = (torch.rand(B, generator=g) < 0.1).view(B, 1, 1, 1)
    x = torch.where(to_grey, grey.expand_as(x), x)
    return x.clamp(0, 1)


def views(images: torch.Tensor, cfg: PretrainConfig, it: int) -> list[torch.Tensor]:
    """The 2 global then n_local local normalised views [B,3,px,px] of iteration ``it``'s batch."""
    g = generator(cfg.seed, it)
    x = images[batch_indices(cfg, it)].permute(0, 3, 1, 2).float() / 255  # [B,3,H,W]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = [_jitter(_crops(x, cfg.global_px, cfg.global_scale, g), g) for _ in range(2)]
    out += [_jitter(_crops(x, cfg.local_px, cfg.local_scale, g), g) for _ in range(cfg.n_local)]
    return [(v - mean) / std for v in out]


def patch_mask(cfg: PretrainConfig, n_images: int, grid: int, g: torch.Generator) -> torch.Tensor:
    """[n_images, grid*grid] bool: for a share ``mask_prob`` of the crops, a random ``mask_ratio`` of the patches."""
    ratio = torch.empty(n_images, 1).uniform_(*cfg.mask_ratio, generator=g)
    ratio = ratio * (torch.rand(n_images, 1, generator=g) < cfg.mask_prob)
    return torch.rand(n_images, grid * grid, generator=g) < ratio


def mask_patches(x: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """x [B,3,H,W] with the masked patches set to 0 (the dataset mean after normalisation): their embedding becomes
    the patch embedding's bias, a learnt mask token."""
    B, _, H, W = x.shape
    keep = (~mask).float().view(B, 1, H // patch, W // patch)
    return x * keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
