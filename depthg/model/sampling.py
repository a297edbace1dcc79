"""Where the loss looks: sample coordinates, depth lifting, batched farthest point sampling, and ``sample``.

DepthG computes every correlation term on an S x S set of feature locations per image (METHOD.md §3.1). They are
either uniform random (STEGO) or chosen by farthest point sampling (FPS) over the depth map lifted to 3-D
(METHOD.md §4). Two fidelities (DESIGN.md §3):

* ``"reference"`` reproduces the released code bit for bit (golden fixture c): fov=90 fed to ``tan`` in radians,
  Z = -5 d on the raw depth, start at index 0, and coordinates (row/h, col/w)*2-1 in raster order, which
  ``grid_sample`` reads as (x, y), i.e. transposed and off the patch grid (METHOD.md §4.3, §9 #2-#3).
* ``"paper"`` does what the paper describes: a pinhole lift of max-normalised depth with the field of view in
  degrees (defaults below), and the chosen patches' centres as (x, y) = (2c/(w-1)-1, 2r/(h-1)-1) in selection
  order.

FPS runs batched in torch on the tensor's device: one loop over the n picks, none over the batch, no host
round-trip. Squared distances are sums of squared coordinate differences in float32, the release's arithmetic, so
exact ties (flat depth) break the same way (lowest index), DESIGN.md §4.

Shapes: B batch, C channels, H/W full-resolution depth, h/w feature grid, N = h*w points, S sample-grid side,
n = S*S picks.
"""

import math

import torch
import torch.nn.functional as F

from depthg.config import check_fidelity
from depthg.errors import ConfigError

# Paper lifting defaults (our choice; the paper's values could not be read, METHOD.md §0.1): a 60 degree horizontal
# field of view, typical of the consumer photos in COCO/Cityscapes, and Z = depth (z_scale 1), which is the
# geometrically consistent pinhole back-projection rather than the release's depth-stretched frustum (Z = -5 d).
PAPER_FOV_DEG = 60.0
PAPER_Z_SCALE = 1.0
# The release: depth2points(fov=90) passes 90 to tan as radians and uses far = 5 (DG src/modules.py:988-996).
REFERENCE_FOV = 90.0
REFERENCE_Z_SCALE = -5.0


def random_coords(B, S, *, generator=None, device=None):
    """STEGO's random locations: U(-1, 1)^2 per sample, [B,S,S,2] (METHOD.md §3.1, DG src/modules.py:1319-1321)."""
    if generator is not None and device is not None and torch.device(device) != generator.device:
        # A generator lives on one device; draw there and move, so a CPU generator can seed CUDA training.
        return (torch.rand(B, S, S, 2, generator=generator, device=generator.device) * 2 - 1).to(device)
    return torch.rand(B, S, S, 2, generator=generator, device=device) * 2 - 1


def sample(t, coords):
    """Bilinear read of ``t`` [B,C,H,W] at ``coords`` [B,S,S,2] ((x, y) in [-1, 1], x along the width).

    Returns [B,C,S,S] with ``out[:, :, i, j]`` taken at ``coords[:, i, j]``; align_corners=True (x=-1 is column 0,
    x=+1 column W-1) and border padding, as the release. The release's ``sample`` permutes the coordinates first,
    so its output is the transpose of ours (DG src/modules.py:822-825); every loss term sums over all pairs of
    samples, so the arrangement does not change a loss value.
    """
    assert coords.dim() == 4 and coords.shape[-1] == 2, f"coords must be [B,S,S,2], got {tuple(coords.shape)}"
    assert t.shape[0] == coords.shape[0], f"batch of t {t.shape[0]} != batch of coords {coords.shape[0]}"
    return F.grid_sample(t, coords.to(t.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def pool_depth(depth, grid_hw):
    """Average depth [B,1,H,W] over each patch of the feature grid -> [B,1,h,w] (METHOD.md §4.1, DG :1003)."""
    return F.adaptive_avg_pool2d(depth, tuple(grid_hw))


def normalize_depth(depth, eps=1e-8):
    """Per-image min-max normalisation of [B,1,H,W] depth to [0, 1]; a flat map becomes zeros."""
    lo = depth.amin(dim=(1, 2, 3), keepdim=True)
    hi = depth.amax(dim=(1, 2, 3), keepdim=True)
    return (depth - lo) / (hi - lo).clamp_min(eps)


def depth_to_points(depth, *, fidelity="paper", fov_deg=PAPER_FOV_DEG, z_scale=PAPER_Z_SCALE):
    """Lift patch depth [B,1,h,w] to one 3-D point per patch, [B,h*w,3] in raster order (index r*w + c).

    reference: X = F*d*(c - w/2)/w, Y = F*d*(r - h/2)/h, Z = -5*d with F = 2*tan(45) (radians, F = 3.2396) on the
    raw depth, in exactly this float32 operation order (golden c ``d2p_*``, ``cK_point_cloud``); ``fov_deg`` and
    ``z_scale`` are ignored.
    paper: pinhole back-projection of patch centres: d' = d / max(d) per image (scale-free, so 0..255 PNGs and
    metric maps give the same cloud), X = F*d'*(c + 1/2 - w/2)/w, likewise Y, Z = z_scale*d', F = 2*tan(fov/2) with
    the field of view in degrees.
    """
    check_fidelity(fidelity)
    assert depth.dim() == 4 and depth.shape[1] == 1, f"depth must be [B,1,h,w], got {tuple(depth.shape)}"
    B, _, h, w = depth.shape
    d = depth[:, 0].float()  # [B,h,w]
    r = torch.arange(h, device=d.device, dtype=torch.float32).view(1, h, 1)
    c = torch.arange(w, device=d.device, dtype=torch.float32).view(1, 1, w)
    if fidelity == "reference":
        # A Python float, as in the release: rounding tan in float32 first changes the last bit (golden d2p_fov30).
        f = 2 * math.tan(REFERENCE_FOV / 2)
        x = f * d * (c - w / 2) / w
        y = f * d * (r - h / 2) / h
        z = REFERENCE_Z_SCALE * d
    else:
        f = 2 * math.tan(math.radians(fov_deg) / 2)
        d = d / d.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
        x = f * d * ((c + 0.5 - w / 2) / w)
        y = f * d * ((r + 0.5 - h / 2) / h)
        z = z_scale * d
    return torch.stack([x, y, z], dim=-1).reshape(B, h * w, 3)  # [B,h,w,3] -> [B,N,3]


def _start_indices(start, B, N, device, generator):
    if isinstance(start, str):
        if start != "random":
            raise ConfigError(f"FPS start={start!r}: use an index, a LongTensor[B] or 'random'.")
        gen_device = generator.device if generator is not None else device
        return torch.randint(N, (B,), generator=generator, device=gen_device).to(device)
    if isinstance(start, torch.Tensor):
        assert start.shape == (B,), f"start must be a LongTensor[{B}], got shape {tuple(start.shape)}"
        return start.to(device=device, dtype=torch.long)
    if not 0 <= int(start) < N:
        raise ConfigError(f"FPS start={start} is outside the {N} points.")
    return torch.full((B,), int(start), device=device, dtype=torch.long)


def farthest_point_sample(points, n, *, start=0, generator=None):
    """Greedy farthest point sampling of ``n`` of the ``N`` points [B,N,3] -> indices [B,n] in selection order.

    Each pick is the point whose squared distance to the nearest chosen point is largest; ties go to the lowest
    index, and a chosen point is never picked again (even when all remaining distances are 0, as on flat depth).
    ``start``: an index for every image, a LongTensor[B], or "random" (drawn with ``generator``).
    """
    assert points.dim() == 3 and points.shape[-1] == 3, f"points must be [B,N,3], got {tuple(points.shape)}"
    B, N, _ = points.shape
    if not 1 <= n <= N:
        raise ConfigError(f"FPS asked for {n} samples from {N} points; use 1 <= n <= {N} (feature_samples**2).")
    # Coordinates as one [3,B,N] tensor: a pick costs one gather, one subtract and one square for all three axes;
    # the loop is bound by per-op overhead (~3 us each), not arithmetic, so fewer ops is what makes it fast.
    P = points.float().permute(2, 0, 1).contiguous()  # [B,N,3] -> [3,B,N]
    cur = _start_indices(start, B, N, points.device, generator)
    picks = [cur]
    # min squared distance to the chosen set; chosen points hold -1 so they lose every argmax (distances are >= 0).
    best = torch.full((B, N), float("inf"), device=points.device)
    diff, dist = torch.empty_like(P), torch.empty_like(best)
    dx, dy, dz = diff.unbind(0)  # views made once: slicing inside the loop costs as much as arithmetic
    for _ in range(n - 1):
        best.scatter_(1, cur[:, None], -1.0)
        torch.sub(P, P.gather(2, cur.view(1, B, 1).expand(3, B, 1)), out=diff)  # [3,B,N] - [3,B,1]
        diff.mul_(diff)
        # (dx^2 + dy^2) + dz^2 in float32, the release's order (not cdist, not |a|^2 - 2ab + |b|^2).
        torch.add(dx, dy, out=dist).add_(dz)
        torch.minimum(best, dist, out=best)
        cur = best.argmax(dim=1)  # first maximum = lowest index on ties
        picks.append(cur)
    return torch.stack(picks, dim=1)


def indices_to_coords(idx, grid_hw, side, *, fidelity="paper"):
    """FPS indices [B,n] on an h x w grid -> sample coordinates [B,side,side,2] for :func:`sample`.

    paper: (x, y) = (2c/(w-1)-1, 2r/(h-1)-1), exactly on the chosen patch, in selection order.
    reference: the release marks the picks in a mask and reads them back with nonzero(), so they come in raster
    order, as (row/h, col/w)*2-1: transposed and off-grid (golden c ``cK_grid_coords``, METHOD.md §4.3).
    """
    check_fidelity(fidelity)
    h, w = grid_hw
    B, n = idx.shape
    assert n == side * side, f"{n} indices cannot fill a {side}x{side} grid"
    if fidelity == "reference":
        idx = idx.sort(dim=1).values
        first = (idx // w).float() / h  # row/h
        second = (idx % w).float() / w  # col/w
    else:
        # max(., 1) keeps a one-patch-wide grid at -1 instead of dividing by zero.
        first = 2 * (idx % w).float() / max(w - 1, 1) - 1  # x from the column
        second = 2 * (idx // w).float() / max(h - 1, 1) - 1  # y from the row
    coords = torch.stack([first, second], dim=-1).view(B, side, side, 2)  # [B,n,2] -> [B,S,S,2]
    return coords * 2 - 1 if fidelity == "reference" else coords


def fps_coords(depth, grid_hw, side, *, fidelity="paper", lifting=None, start=0, generator=None,
               fov_deg=PAPER_FOV_DEG, z_scale=PAPER_Z_SCALE):
    """FPS locations for one batch: depth [B,1,H,W] -> coordinates [B,side,side,2] on the h x w feature grid.

    ``fidelity`` sets the coordinate convention (config aspect ``fps_coords``), ``lifting`` the depth lifting
    (aspect ``depth_lifting``; defaults to ``fidelity``), ``start`` the first pick (aspect ``fps_start``: the
    release uses 0; "random" with ``generator`` is the seedable paper choice).
    """
    check_fidelity(fidelity)
    lifting = fidelity if lifting is None else lifting
    points = depth_to_points(pool_depth(depth, grid_hw), fidelity=lifting, fov_deg=fov_deg, z_scale=z_scale)
    idx = farthest_point_sample(points, side * side, start=start, generator=generator)
    return indices_to_coords(idx, grid_hw, side, fidelity=fidelity)


def choose_coords(mode, B, grid_hw, side, *, depth=None, device=None, fidelity="paper", lifting=None, start=0,
                  generator=None):
    """The sample coordinates of one training batch of ``B`` images -> [B,side,side,2].

    ``mode`` is the config's ``depth_sampling``: "fps" (needs ``depth`` [B,1,H,W]) or "random" (STEGO; also the
    release's Cityscapes ``none``, METHOD.md §3.1), which ignores depth. The keywords are those of :func:`fps_coords`.
    """
    if mode == "random":
        device = depth.device if depth is not None else device
        return random_coords(B, side, generator=generator, device=device)
    if mode == "fps":
        if depth is None:
            raise ConfigError("depth_sampling='fps' needs depth maps; prepare depth or use depth_sampling='random'.")
        assert depth.shape[0] == B, f"depth batch {depth.shape[0]} != B={B}"
        return fps_coords(depth, grid_hw, side, fidelity=fidelity, lifting=lifting, start=start,
                          generator=generator)
    raise ConfigError(f"depth_sampling={mode!r} is not 'fps' or 'random'.")
