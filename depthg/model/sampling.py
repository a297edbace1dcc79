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

FPS runs on the tensor's device: on a GPU batched in torch (one loop over the n picks, none over the batch, no host
round-trip), on the CPU as a compiled loop (:mod:`depthg.model.fps_cpu`) with the same arithmetic and indices.
Squared distances are sums of squared coordinate differences in float32, the release's arithmetic, so exact ties
(flat depth) break the same way (lowest index), DESIGN.md §4.

Shapes: B batch, C channels, H/W full-resolution depth, h/w feature grid, N = h*w points, S sample-grid side,
n = S*S picks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

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


def random_coords(
    B: int, S: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """STEGO's random locations: U(-1, 1)^2 per sample, [B,S,S,2] (METHOD.md §3.1, DG src/modules.py:1319-1321)."""
    if generator is not None and device is not None and torch.device(device) != generator.device:
        # A generator lives on one device; draw there and move, so a CPU generator can seed CUDA training.
        return (torch.rand(B, S, S, 2, generator=generator, device=generator.device) * 2 - 1).to(device)
    return torch.rand(B, S, S, 2, generator=generator, device=device) * 2 - 1


def sample(t: Tensor, coords: Tensor) -> Tensor:
    """Bilinear read of ``t`` [B,C,H,W] at ``coords`` [B,S,S,2] ((x, y) in [-1, 1], x along the width).

    Returns [B,C,S,S] with ``out[:, :, i, j]`` taken at ``coords[:, i, j]``; align_corners=True (x=-1 is column 0,
    x=+1 column W-1) and border padding, as the release. The release's ``sample`` permutes the coordinates first,
    so its output is the transpose of ours (DG src/modules.py:822-825); every loss term sums over all pairs of
    samples, so the arrangement does not change a loss value.
    """
    assert coords.dim() == 4 and coords.shape[-1] == 2, f"coords must be [B,S,S,2], got {tuple(coords.shape)}"
    assert t.shape[0] == coords.shape[0], f"batch of t {t.shape[0]} != batch of coords {coords.shape[0]}"
    return F.grid_sample(t, coords.to(t.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def bilinear_taps(coords: Tensor, grid_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The four corners :func:`sample` blends at each coordinate: coords [B,S,S,2] -> (taps [B,n,4], weights [B,n,4]).

    ``taps`` are raster indices r*w + c into one h x w map, corners in the order (top-left, top-right, bottom-left,
    bottom-right), with grid_sample's arithmetic: align_corners=True unnormalisation, border clipping, and a corner
    past the last row/column clamped onto it (its weight is 0 there). Sample s of the grid is coords[:, s // S, s % S].
    """
    assert coords.dim() == 4 and coords.shape[-1] == 2, f"coords must be [B,S,S,2], got {tuple(coords.shape)}"
    h, w = grid_hw
    xy = coords.reshape(coords.shape[0], -1, 2).float()  # [B,S,S,2] -> [B,n,2]
    x = ((xy[..., 0] + 1) / 2 * (w - 1)).clamp(0, w - 1)
    y = ((xy[..., 1] + 1) / 2 * (h - 1)).clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    tx, ty = x - x0, y - y0  # distances from the top-left corner
    c0, r0 = x0.long(), y0.long()
    c1, r1 = (c0 + 1).clamp(max=w - 1), (r0 + 1).clamp(max=h - 1)
    taps = torch.stack([r0 * w + c0, r0 * w + c1, r1 * w + c0, r1 * w + c1], dim=-1)
    sx, sy = 1 - tx, 1 - ty
    weights = torch.stack([sy * sx, sy * tx, ty * sx, ty * tx], dim=-1)
    return taps, weights


# On CPU the feature maps are read through tables of this many bytes at most, one channel block at a time
# (depthg.model.losses). The block's table is freed before the next is built, so the allocator hands the same memory
# back instead of mapping fresh pages: page-faulting one fresh 38 MB ViT-S/8 table in cost ~37 ms on the shared test
# machine, a copy into reused memory 3 ms; blocks over 32 MB would always be fresh (glibc's mmap threshold).
CPU_TABLE_BYTES = 8 * 2**20


def channel_blocks(t: Tensor) -> list[slice]:
    """Channel ranges of [B,C,h,w] whose :func:`point_table` stays under ``CPU_TABLE_BYTES`` on CPU; one elsewhere."""
    C = t.shape[1]
    blocks = 1
    if t.device.type == "cpu":
        blocks = min(C, -(-t.numel() * t.element_size() // CPU_TABLE_BYTES))  # ceil
    step = -(-C // blocks)
    return [slice(c, min(c + step, C)) for c in range(0, C, step)]


def point_table(t: Tensor) -> Tensor:
    """Maps [B,C,h,w] as one row per location, [B*h*w, C], row b*h*w + r*w + c (one channels-last copy)."""
    B, C, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(B * h * w, C)


def gather_points(table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """Bilinear reads from a :func:`point_table`: rows/weights [..., n, 4] -> [..., n, C].

    ``rows`` index the table (image * h*w + the tap of :func:`bilinear_taps`), so any image can be read at any
    coordinates without copying its map; the same values as :func:`sample` (to float rounding), laid out per point.
    One weighted row sum per point (embedding_bag), so the four corners are never materialised; the gradient
    reaches the table.
    """
    assert rows.shape == weights.shape and rows.shape[-1] == 4, (
        f"rows {tuple(rows.shape)} and weights {tuple(weights.shape)} must both be [..., n, 4]"
    )
    out = F.embedding_bag(
        rows.reshape(-1, 4), table, per_sample_weights=weights.reshape(-1, 4).to(table.dtype), mode="sum"
    )
    return out.view(*rows.shape[:-1], table.shape[1])


def pool_depth(depth: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Average depth [B,1,H,W] over each patch of the feature grid -> [B,1,h,w] (METHOD.md §4.1, DG :1003)."""
    return F.adaptive_avg_pool2d(depth, tuple(grid_hw))


def normalize_depth(depth: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-image min-max normalisation of [B,1,H,W] depth to [0, 1]; a flat map becomes zeros."""
    lo = depth.amin(dim=(1, 2, 3), keepdim=True)
    hi = depth.amax(dim=(1, 2, 3), keepdim=True)
    return (depth - lo) / (hi - lo).clamp_min(eps)


def depth_to_points(
    depth: Tensor, *, fidelity: str = "paper", fov_deg: float = PAPER_FOV_DEG, z_scale: float = PAPER_Z_SCALE
) -> Tensor:
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


def _start_indices(
    start: int | str | Tensor, B: int, N: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
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


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the block with one intra-op thread on CPU, restoring the count after (a no-op elsewhere).

    FPS is ~7 dependent ops of a few 10^4 elements per pick: too small to split, so a second thread only adds a
    fork/join per op, and on a loaded machine an oversubscribed join stalls. Measured on the 2 shared cores (B=32,
    784 points, 121 picks, load ~5): 199 ms with 2 threads against 27 ms with this scope.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def farthest_point_sample(
    points: Tensor,
    n: int,
    *,
    start: int | str | Tensor = 0,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> Tensor:
    """Greedy farthest point sampling of ``n`` of the ``N`` points [B,N,3] -> indices [B,n] in selection order.

    Each pick is the point whose squared distance to the nearest chosen point is largest; ties go to the lowest
    index, and a chosen point is never picked again (even when all remaining distances are 0, as on flat depth).
    ``start``: an index for every image, a LongTensor[B], or "random" (drawn with ``generator``).
    ``backend``: "torch" (batched tensor ops on the points' device), "numba" (compiled CPU loop,
    :mod:`depthg.model.fps_cpu`) or "auto" (numba for CPU tensors, torch elsewhere); the indices are identical.
    """
    assert points.dim() == 3 and points.shape[-1] == 3, f"points must be [B,N,3], got {tuple(points.shape)}"
    B, N, _ = points.shape
    if not 1 <= n <= N:
        raise ConfigError(f"FPS asked for {n} samples from {N} points; use 1 <= n <= {N} (feature_samples**2).")
    if backend not in ("auto", "torch", "numba"):
        raise ConfigError(f"FPS backend={backend!r}: use 'auto', 'torch' or 'numba'.")
    cur = _start_indices(start, B, N, points.device, generator)
    if backend == "numba" or (backend == "auto" and points.device.type == "cpu"):
        return _fps_numba(points, n, cur)
    return _fps_torch(points, n, cur)


def _fps_numba(points: Tensor, n: int, start: Tensor) -> Tensor:
    from depthg.model.fps_cpu import fps_kernel  # numba loads (~0.5 s) only when FPS first runs on the CPU

    # one thread for the copies too: a parallel torch op leaves its OpenMP workers spinning, which on a busy
    # machine takes the core the (serial) compiled loop needs
    with _one_cpu_thread(torch.device("cpu")):
        coords = points.detach().float().cpu().permute(0, 2, 1).contiguous()  # [B,N,3] -> [B,3,N]
        if not torch.isfinite(coords).all():
            # the torch loop would pick NaN points first; either way the samples would be meaningless
            raise ValueError("FPS points contain NaN or inf: check the depth maps of this batch (non-finite depth).")
        out = torch.empty(points.shape[0], n, dtype=torch.long)
        fps_kernel(coords.numpy(), start.cpu().numpy(), n, out.numpy())
    return out.to(points.device)


def _fps_torch(points: Tensor, n: int, cur: Tensor) -> Tensor:
    B, N, _ = points.shape
    # Coordinates as one [3,B,N] tensor: a pick costs one gather, one subtract and one square for all three axes;
    # the loop is bound by per-op overhead (~3 us each), not arithmetic, so fewer ops is what makes it fast.
    P = points.float().permute(2, 0, 1).contiguous()  # [B,N,3] -> [3,B,N]
    picks = [cur]
    # min squared distance to the chosen set; chosen points hold -1 so they lose every argmax (distances are >= 0).
    best = torch.full((B, N), float("inf"), device=points.device)
    diff, dist = torch.empty_like(P), torch.empty_like(best)
    dx, dy, dz = diff.unbind(0)  # views made once: slicing inside the loop costs as much as arithmetic
    with _one_cpu_thread(points.device):
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


def indices_to_coords(idx: Tensor, grid_hw: tuple[int, int], side: int, *, fidelity: str = "paper") -> Tensor:
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


def fps_coords(
    depth: Tensor,
    grid_hw: tuple[int, int],
    side: int,
    *,
    fidelity: str = "paper",
    lifting: str | None = None,
    start: int | str | Tensor = 0,
    generator: torch.Generator | None = None,
    fov_deg: float = PAPER_FOV_DEG,
    z_scale: float = PAPER_Z_SCALE,
) -> Tensor:
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


def choose_coords(
    mode: str,
    B: int,
    grid_hw: tuple[int, int],
    side: int,
    *,
    depth: Tensor | None = None,
    device: torch.device | str | None = None,
    fidelity: str = "paper",
    lifting: str | None = None,
    start: int | str | Tensor = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
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
        return fps_coords(depth, grid_hw, side, fidelity=fidelity, lifting=lifting, start=start, generator=generator)
    raise ConfigError(f"depth_sampling={mode!r} is not 'fps' or 'random'.")
