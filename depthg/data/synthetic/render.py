"""Rendering: primary rays, shadow rays, shading, haze and the debug channels of one scene."""

from __future__ import annotations

import numpy as np

from depthg.data.synthetic.classes import GROUND, SKY
from depthg.data.synthetic.intersect import EPS, hit, near_rays
from depthg.data.synthetic.scene import CLIP, FAR, sample_scene

_F = np.float32


def _albedo(m: dict, uv: np.ndarray) -> np.ndarray:
    """Material colour at surface coordinates uv [M,2] -> [M,3]."""
    if m["kind"] == "plain":
        p = np.zeros(len(uv), _F)
    elif m["kind"] == "stripes":
        s = uv[:, 0] * np.cos(m["angle"]) + uv[:, 1] * np.sin(m["angle"])
        p = (np.sin(2 * np.pi * s / m["period"]) > 0).astype(_F)
    elif m["kind"] == "checker":
        p = ((np.floor(uv[:, 0] / m["period"]) + np.floor(uv[:, 1] / m["period"])) % 2).astype(_F)
    else:  # noise in [0, 1]
        p = (np.sin(uv @ m["waves"].T + m["phases"]).sum(1) / 8 + 0.5).astype(_F)
    return m["a"] * (1 - p[:, None]) + m["b"] * p[:, None]


def _camera_axes(s: dict) -> np.ndarray:
    """Rows: right, up, forward of the camera pitched down by s["pitch"] (world y is up, the camera looks at +z)."""
    cp, sp = np.cos(s["pitch"]), np.sin(s["pitch"])
    return np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]], _F)


def _rays(s: dict, res: int) -> np.ndarray:
    """World directions [N,3] (raster order) whose camera-z component is 1, so the hit parameter t is the depth."""
    f = (res / 2) / np.tan(s["hfov"] / 2)
    u = ((np.arange(res) + 0.5 - res / 2) / f).astype(_F)
    xc, yc = np.meshgrid(u, -u)  # image rows go down, camera y goes up
    cam_xyz = np.stack([xc.ravel(), yc.ravel(), np.ones(res * res, _F)], 1)  # [N,3]
    return cam_xyz @ _camera_axes(s)


def _on_screen(p: dict, s: dict, res: int) -> np.ndarray:
    """Flat indices of the pixels inside a conservative screen rectangle around the bounding sphere of p."""
    x, y, z = _camera_axes(s) @ (p["c"] - s["cam"])
    r = p["bound"] + 0.05
    if z - r < 0.05:  # the sphere reaches the camera plane: no finite bound, test every pixel
        return np.arange(res * res)
    f = (res / 2) / np.tan(s["hfov"] / 2)
    # x/z over the box [x-r, x+r] x [z-r, z+r] is extreme at its corners (z > 0), likewise y/z
    xs = [(x + a) / (z + b) for a in (-r, r) for b in (-r, r)]
    ys = [(y + a) / (z + b) for a in (-r, r) for b in (-r, r)]
    c0, c1 = np.clip([np.floor(f * min(xs) + res / 2 - 0.5), np.ceil(f * max(xs) + res / 2 - 0.5)], 0, res - 1)
    r0, r1 = np.clip([np.floor(res / 2 - 0.5 - f * max(ys)), np.ceil(res / 2 - 0.5 - f * min(ys))], 0, res - 1)
    if c1 < c0 or r1 < r0 or f * min(xs) > res / 2 or f * max(xs) < -res / 2:
        return np.zeros(0, np.int64)
    return np.add.outer(np.arange(r0, r1 + 1) * res, np.arange(c0, c1 + 1)).ravel().astype(np.int64)


def render_scene(seed: int, index: int, res: int, *, debug: bool = False) -> dict:
    """Scene ``index`` of ``seed`` at res x res: {"image" uint8 [H,W,3], "depth" float32 [H,W] (camera z, metres,
    sky = FAR), "label" int64 [H,W] (CLASS_NAMES)}.

    ``debug`` adds per-pixel "instance" (-1 sky, 0 ground, 1+i primitive i; walls first), "material", "shadow"
    (faces the sun but blocked), "shading" (grey illumination), "albedo", and per scene "objects" (id, class,
    material, world z of the centre, pixel counts when drawn alone ("solo") and "visible"), "info" (instance ids of
    the forced ambiguities: shared_wall_box, twins, occlusion (front, back), shared_ground) and "camera"."""
    assert res >= 8, f"res must be >= 8, got {res}"
    rng = np.random.default_rng([seed, index])
    s = sample_scene(rng)
    d = _rays(s, res)
    n_rays = len(d)
    # ground plane y = 0 (only rays going down hit it)
    with np.errstate(divide="ignore"):
        t = np.where(d[:, 1] < 0, -s["cam"][1] / d[:, 1], np.inf).astype(_F)
    inst = np.zeros(n_rays, np.int32)
    normal = np.tile(np.array([0, 1, 0], _F), (n_rays, 1))
    uv = np.zeros((n_rays, 2), _F)
    solo = []
    for i, p in enumerate(s["prims"]):
        cand = _on_screen(p, s, res)
        tp, n_p, uv_p = hit(p, s["cam"], d[cand])
        solo.append(int((tp <= CLIP).sum()))
        closer = tp < t[cand]
        idx = cand[closer]
        t[idx], inst[idx], normal[idx], uv[idx] = tp[closer], i + 1, n_p[closer], uv_p[closer]
    sky = t > CLIP  # beyond the clipping distance: haze/sky (keeps sky the farthest class)
    inst[sky] = -1
    ground = inst == 0
    uv[ground] = (s["cam"] + t[ground, None] * d[ground])[:, [0, 2]]
    classes = np.array([SKY, GROUND] + [p["cls"] for p in s["prims"]])
    mat_of = np.array([-1, 0] + [p["mat"] for p in s["prims"]])
    label, mat = classes[inst + 1], mat_of[inst + 1]

    # shading: sun (with shadow rays), hemisphere ambient, lamp with distance fall-off (a gradient across surfaces)
    surf = ~sky
    pts = s["cam"] + t[surf, None] * d[surf]
    nrm = normal[surf]
    facing = nrm @ s["sun"]
    lit = facing > 0
    orig = pts[lit] + nrm[lit] * _F(2 * EPS)
    blocked = np.zeros(len(orig), bool)
    o_sun, o_sq = orig @ s["sun"], (orig * orig).sum(1)
    for p in s["prims"]:
        cand = near_rays(p, o_sun, o_sq, orig @ p["c"], s["sun"] @ p["c"])
        cand = cand[~blocked[cand]]
        blocked[cand] = np.isfinite(hit(p, orig[cand], np.broadcast_to(s["sun"], (len(cand), 3)), full=False))
    sun_vis = np.zeros(len(pts), _F)
    sun_vis[lit] = facing[lit] * ~blocked
    to_lamp = s["lamp"] - pts
    dist2 = (to_lamp**2).sum(1)
    lamp = np.clip((nrm * to_lamp).sum(1) / np.sqrt(dist2), 0, None) / (1 + dist2 / 9)
    amb = 0.75 + 0.25 * nrm[:, 1]
    light = amb[:, None] * s["amb_col"] + sun_vis[:, None] * s["sun_col"] + lamp[:, None] * s["lamp_col"]
    alb, mat_s, uv_s = np.zeros((len(pts), 3), _F), mat[surf], uv[surf]
    for k, m in enumerate(s["mats"]):
        sel = np.flatnonzero(mat_s == k)
        alb[sel] = _albedo(m, uv_s[sel])
    # haze grows with depth and reaches the horizon colour at CLIP, so the clipped ground blends into the sky
    haze = np.clip(t[surf] / CLIP, 0, 1)[:, None] ** 2 * _F(0.95)
    rgb = np.empty((n_rays, 3), _F)
    rgb[surf] = (alb * light) * (1 - haze) + s["horizon"] * haze
    elev = np.clip(d[sky, 1] / np.linalg.norm(d[sky], axis=1), 0, 1)[:, None]
    rgb[sky] = s["horizon"] + (s["zenith"] - s["horizon"]) * np.sqrt(elev / 0.6).clip(0, 1)
    rgb += rng.standard_normal(rgb.shape, dtype=_F) * _F(0.008)  # mild sensor noise
    depth = np.where(sky, _F(FAR), t).astype(_F)

    out = dict(
        image=(np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(res, res, 3),
        depth=depth.reshape(res, res),
        label=label.astype(np.int64).reshape(res, res),
    )
    if debug:
        shade, shadow = np.zeros(n_rays, _F), np.zeros(n_rays, bool)
        shade[surf] = light.mean(1)
        shadow[np.flatnonzero(surf)[lit]] = blocked
        vis = np.bincount(inst + 1, minlength=len(s["prims"]) + 2)[2:]
        albedo = np.zeros((n_rays, 3), _F)
        albedo[surf] = alb
        nw = s["n_walls"]
        out.update(
            instance=inst.reshape(res, res),
            material=mat.reshape(res, res),
            shadow=shadow.reshape(res, res),
            shading=shade.reshape(res, res),
            albedo=albedo.reshape(res, res, 3),
            objects=[
                dict(id=i + 1, cls=p["cls"], material=p["mat"], z=float(p["c"][2]), solo=solo[i], visible=int(vis[i]))
                for i, p in enumerate(s["prims"])
            ],
            info={
                k: (
                    tuple(None if j is None else nw + j + 1 for j in v)
                    if isinstance(v, tuple)
                    else None
                    if v is None
                    else nw + v + 1
                )
                for k, v in s["info"].items()
            },
            camera=dict(
                height=float(s["cam"][1]),
                pitch_deg=float(np.degrees(s["pitch"])),
                hfov_deg=float(np.degrees(s["hfov"])),
            ),
        )
    return out
