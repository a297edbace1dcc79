"""The synthetic RGB-D world (DESIGN.md §5): procedural outdoor-like scenes with exact depth and per-pixel labels.

Shapes: H = W = res (square images), N = H*W rays, M a subset of rays.

Each scene is ray cast (vectorised numpy, float32) through a pinhole camera at height h, pitched down, with a random
horizontal field of view. The world: an infinite ground plane (y = 0), vertical walls (thin boxes), boxes rotated
about the vertical, balls (spheres on the ground), pillars (vertical cylinders) and sky. Depth is the distance along
the camera's view axis (camera z, not ray length), exact per pixel. Surfaces beyond the clipping distance CLIP are
not drawn (they fade into haze); sky gets depth FAR > CLIP, so sky is always the farthest class.

The ambiguities that depth resolves in photographs are generated on purpose in every scene:
- shadows: a directional sun with shadow rays, plus a point lamp whose fall-off makes a lighting gradient across
  one surface (ground, walls);
- shared textures: the first wall and one box use the same material (stripes/checker/noise); with probability 1/2
  a pillar or ball uses the ground's material;
- same-coloured objects at different depths: two "twin" objects share one plain material, the second at least
  twice as far;
- occlusion: an object is placed behind the near twin (or the shared box), near its silhouette edge and close
  enough that the front object covers its base; objects also stand in front of walls.
Placement keeps these objects from hiding each other otherwise, so each ambiguity stays visible.

Scene i of seed s uses ``np.random.default_rng([s, i])``, so it does not depend on how many scenes are made.
Validation scenes use indices VAL_OFFSET + i.
"""

from __future__ import annotations

import colorsys
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from depthg.data.depth_io import write_depth

CLASS_NAMES = ("sky", "ground", "wall", "box", "ball", "pillar")
SKY, GROUND, WALL, BOX, BALL, PILLAR = range(6)
CLASS_COLORS = np.array([[135, 190, 240], [120, 90, 50], [170, 60, 60], [240, 170, 40], [60, 160, 230],
                         [150, 150, 160]], np.uint8)  # for plots only
FAR = 50.0  # depth given to sky pixels (metres)
CLIP = 40.0  # far clipping distance of surfaces (camera z, metres)
VAL_OFFSET = 1_000_000
_EPS = 1e-3
_F = np.float32
_PATTERNS = ("plain", "stripes", "checker", "noise")
# Per class: patterns to draw from, hue, saturation and value ranges. Each class has a typical appearance, as real
# classes do (grass is green, bricks are red): the stand-in backbone is a random ViT whose features encode colour and
# texture, so this is where class evidence lives for it, as it lives in DINO's features for photographs. The forced
# ambiguities below (a texture shared by a wall and a box, ground material on an object, same-coloured twins of
# different classes, shadows and lamp gradients) are the exceptions that depth has to resolve.
_PRIORS = {
    GROUND: (("plain", "noise", "checker"), (0.20, 0.32), (0.35, 0.65), (0.30, 0.55)),  # grass / moss green
    WALL: (("plain", "stripes", "noise"), (0.98, 1.03), (0.40, 0.65), (0.45, 0.75)),  # brick red
    BOX: (("plain", "stripes", "noise"), (0.09, 0.14), (0.65, 0.90), (0.75, 0.95)),  # bright orange / wood
    BALL: (("plain", "stripes"), (0.72, 0.88), (0.55, 0.90), (0.55, 0.90)),  # purple / magenta
    PILLAR: (("plain", "noise"), (0.0, 1.0), (0.0, 0.10), (0.80, 0.97)),  # white / light grey stone
}


# ---------------------------------------------------------------- scene sampling


def _material(rng, cls, kind=None) -> dict:
    kinds, hue, sat, val = _PRIORS[cls]
    kind = kind or str(rng.choice(kinds))
    a = np.array(colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val)), _F)
    b = a * _F(rng.uniform(0.35, 0.7))
    # noise = sum of 4 sinusoids of random direction and wavelength (cheap smooth "value noise")
    ang = rng.uniform(0, np.pi, 4)
    waves = np.stack([np.cos(ang), np.sin(ang)], 1) * (2 * np.pi / rng.uniform(0.3, 2.0, 4))[:, None]
    return dict(kind=kind, a=a, b=b, period=_F(rng.uniform(0.25, 1.0)), angle=rng.uniform(0, np.pi),
                waves=waves.astype(_F), phases=rng.uniform(0, 2 * np.pi, 4).astype(_F))


def _object(rng, cls, x, z, mat) -> dict:
    """A primitive standing on the ground at (x, z): kind, centre c, sizes, footprint radius fp."""
    if cls in (BOX, WALL):
        if cls == BOX:
            half, yaw = rng.uniform([0.3, 0.25, 0.3], [1.0, 0.9, 1.0]), rng.uniform(0, np.pi)
        else:
            half, yaw = np.array([rng.uniform(4, 12), rng.uniform(1.2, 3.5), 0.2]), 0.0
        cs, sn = np.cos(yaw), np.sin(yaw)
        rot = np.array([[cs, 0, sn], [0, 1, 0], [-sn, 0, cs]], _F)  # columns: local axes in world coordinates
        return dict(cls=cls, kind="box", c=np.array([x, half[1], z], _F), half=half.astype(_F), rot=rot, mat=mat,
                    fp=float(np.hypot(half[0], half[2])), bound=_F(np.linalg.norm(half)))
    if cls == BALL:
        r = rng.uniform(0.3, 0.9)
        return dict(cls=cls, kind="sphere", c=np.array([x, r, z], _F), r=_F(r), mat=mat, fp=r, bound=_F(r))
    r, hgt = rng.uniform(0.15, 0.45), rng.uniform(2.0, 6.0)
    return dict(cls=cls, kind="cyl", c=np.array([x, hgt / 2, z], _F), r=_F(r), hgt=_F(hgt), mat=mat, fp=r,
                bound=_F(np.hypot(r, hgt / 2)))


def _wall(rng, mat, cam) -> dict:
    while True:
        w = _object(rng, WALL, 0.0, 0.0, mat)
        if rng.random() < 0.6:  # a back wall roughly facing the camera
            yaw, x, z = rng.uniform(-0.6, 0.6), rng.uniform(-6, 6), rng.uniform(14, 30)
        else:  # a side wall running away from the camera
            yaw, x, z = np.pi / 2 + rng.uniform(-0.2, 0.2), rng.choice([-1, 1]) * rng.uniform(4, 9), rng.uniform(10, 22)
        cs, sn = np.cos(yaw), np.sin(yaw)
        w["rot"] = np.array([[cs, 0, sn], [0, 1, 0], [-sn, 0, cs]], _F)
        w["c"] = np.array([x, w["c"][1], z], _F)
        loc = np.abs((cam - w["c"]) @ w["rot"])
        if loc[0] > w["half"][0] + 2 or loc[2] > w["half"][2] + 2:  # keep the camera 2 m clear of the wall
            return w


def _free(obj, objs, walls, cam, keep_clear) -> bool:
    """No footprint overlap with placed objects or walls, not hidden behind a wall as seen from the camera, and not
    overlapping (in bearing, seen from above) the objects of ``keep_clear``, which must stay visible."""
    for o in objs:
        if np.hypot(*(obj["c"] - o["c"])[[0, 2]]) < obj["fp"] + o["fp"] + 0.2:
            return False
    for o in keep_clear:
        gap = abs(np.arctan2(obj["c"][0], obj["c"][2]) - np.arctan2(o["c"][0], o["c"][2]))
        if gap < obj["fp"] / obj["c"][2] + o["fp"] / o["c"][2] + 0.02:
            return False
    for w in walls:
        loc = (obj["c"] - w["c"]) @ w["rot"]
        if abs(loc[0]) < w["half"][0] + obj["fp"] + 0.2 and abs(loc[2]) < w["half"][2] + obj["fp"] + 0.2:
            return False
        seg = (obj["c"] - cam)[None]  # the camera->centre segment must not cross the wall (t < 1)
        if _hit(w, cam, seg, full=False)[0] < 1:
            return False
    return True


def _sample_scene(rng) -> dict:
    h, pitch, hfov = rng.uniform(1.0, 2.5), np.radians(rng.uniform(1, 12)), np.radians(rng.uniform(50, 80))
    cam = np.array([0, h, 0], _F)
    el, az = np.radians(rng.uniform(20, 55)), rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], _F)
    mats = [_material(rng, GROUND), _material(rng, WALL, str(rng.choice(["stripes", "checker", "noise"])))]
    walls = [_wall(rng, 1, cam)] + [_wall(rng, len(mats) + i, cam) for i in range(rng.integers(0, 3))]
    mats += [_material(rng, WALL) for _ in walls[1:]]
    tanh = np.tan(hfov / 2)

    objs, info, clear = [], {}, []  # clear: indices of objects that later ones must not hide

    def place(cls, mat, z_range, bearing=None, protect=True, exempt=None, tries=60):
        for _ in range(tries):
            z = rng.uniform(*z_range)
            x = (bearing if bearing is not None else rng.uniform(-0.85, 0.85) * tanh) * z
            if mat is None:
                mats.append(_material(rng, cls))
            o = _object(rng, cls, x, z, len(mats) - 1 if mat is None else mat)
            if _free(o, objs, walls, cam, [objs[j] for j in clear if j != exempt]):
                objs.append(o)
                clear.extend([len(objs) - 1] if protect else [])
                return len(objs) - 1
            if mat is None:
                mats.pop()
        return None

    # placed in order of priority (later ones may fail to find room)
    # shared texture: a box wearing the first wall's material
    info["shared_wall_box"] = place(BOX, 1, (3, 18))
    # twins: one plain colour, the second at least twice as far
    mats.append(_material(rng, BALL, "plain"))
    t1 = place(int(rng.choice([BOX, BALL, PILLAR])), len(mats) - 1, (3.5, 7))
    t2 = None if t1 is None else place(int(rng.choice([BOX, BALL, PILLAR])), len(mats) - 1, (2 * objs[t1]["c"][2], 18))
    info["twins"] = (t1, t2)
    # occlusion: B behind A (the near twin or the shared box), its bearing near A's silhouette edge so that B stays
    # partly visible. A covers B's base only if A's top is seen above B's base: (h - top_A) / z_A < h / z_B.
    def reach(j):  # how far behind A (as a multiple of z_A) B's base is still covered
        top = 2 * objs[j]["c"][1]  # every primitive stands on the ground, centred at half its height
        return np.inf if top >= h else h / (h - top)

    cands = [j for j in (t1, info["shared_wall_box"]) if j is not None]
    a = max(cands, key=reach) if cands else None
    b = None
    if a is not None and min(2.2, 0.95 * reach(a)) > 1.2:
        za = objs[a]["c"][2]
        off = rng.choice([-1, 1]) * rng.uniform(0.5, 1.0) * objs[a]["fp"] / za
        b = place(int(rng.choice([BOX, BALL, PILLAR])), None, (za * 1.2, za * min(2.2, 0.95 * reach(a))),
                  bearing=objs[a]["c"][0] / za + off, exempt=a)
    info["occlusion"] = (a, b)
    # maybe a pillar/ball wearing the ground's material
    info["shared_ground"] = place(int(rng.choice([PILLAR, BALL])), 0, (3, 15)) if rng.random() < 0.5 else None
    for _ in range(rng.integers(2, 6)):
        place(int(rng.choice([BOX, BALL, PILLAR, PILLAR])), None, (3, 18), protect=False, tries=8)
    lamp = np.array([rng.uniform(-5, 5), rng.uniform(1.5, 4), rng.uniform(4, 14)], _F)
    return dict(cam=cam, pitch=pitch, hfov=hfov, sun=sun, lamp=lamp, mats=mats, prims=walls + objs,
                n_walls=len(walls), info=info,
                sun_col=np.array([1.0, 0.93, 0.8], _F) * _F(rng.uniform(0.8, 1.0)),
                amb_col=np.array([0.55, 0.62, 0.75], _F) * _F(rng.uniform(0.35, 0.5)),
                lamp_col=np.array([1.0, 0.85, 0.6], _F) * _F(rng.uniform(0.4, 0.8)),
                horizon=np.array(colorsys.hsv_to_rgb(rng.uniform(0.55, 0.62), rng.uniform(0.05, 0.2), 0.92), _F),
                zenith=np.array(colorsys.hsv_to_rgb(rng.uniform(0.56, 0.63), rng.uniform(0.45, 0.7),
                                                    rng.uniform(0.7, 0.9)), _F))


# ---------------------------------------------------------------- ray-primitive intersections


def _hit(p: dict, o: np.ndarray, d: np.ndarray, *, full: bool = True):
    """Nearest hit t > eps of rays o + t d (o [3] or [M,3], d [M,3]) with primitive p: t [M] (inf = miss), and with
    ``full`` the world normal [M,3] and surface coordinates uv [M,2] in metres (for textures)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if p["kind"] == "box":  # slab test in the box frame
            ol, dl = (o - p["c"]) @ p["rot"], d @ p["rot"]
            t1, t2 = (-p["half"] - ol) / dl, (p["half"] - ol) / dl
            tn, tf = np.fmin(t1, t2), np.fmax(t1, t2)  # fmin/fmax skip the NaN of 0 * inf on a slab boundary
            # column-wise (a reduce over a length-3 axis is slow in numpy)
            near = np.fmax(np.fmax(tn[:, 0], tn[:, 1]), tn[:, 2])
            far = np.fmin(np.fmin(tf[:, 0], tf[:, 1]), tf[:, 2])
            t = np.where(near > _EPS, near, far)
            t = np.where((far >= near) & (t > _EPS), t, np.inf).astype(_F)
            if not full:
                return t
            k = np.argmax(tn, axis=1)  # the slab entered last is the face hit
            nl = np.zeros_like(dl)
            nl[np.arange(len(k)), k] = -np.sign(dl[np.arange(len(k)), k])
            pl = ol + np.nan_to_num(t, posinf=0)[:, None] * dl
            uv = np.take_along_axis(pl, np.array([[1, 2], [0, 2], [0, 1]])[k], 1) + p["half"].max()
            return t, nl @ p["rot"].T, uv
        oc = o - p["c"]
        if p["kind"] == "sphere":
            b, cc = (oc * d).sum(-1), (oc * oc).sum(-1) - p["r"] ** 2
            a = (d * d).sum(-1)
            sq = np.sqrt(b * b - a * cc)  # NaN where the ray misses
            t0, t1 = (-b - sq) / a, (-b + sq) / a
            t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
            t = np.where(np.isnan(t), np.inf, t).astype(_F)
            if not full:
                return t
            n = (o + np.nan_to_num(t, posinf=0)[:, None] * d - p["c"]) / p["r"]
            uv = np.stack([p["r"] * np.arctan2(n[:, 0], n[:, 2]), p["r"] * np.arccos(np.clip(n[:, 1], -1, 1))], 1)
            return t, n, uv
        # vertical cylinder of radius r, y in [0, hgt], with a top cap (the bottom rests on the ground)
        oc = oc + np.array([0, p["hgt"] / 2, 0], _F)  # origin relative to the base centre
        a = d[:, 0] ** 2 + d[:, 2] ** 2
        b = oc[..., 0] * d[:, 0] + oc[..., 2] * d[:, 2]
        cc = oc[..., 0] ** 2 + oc[..., 2] ** 2 - p["r"] ** 2
        sq = np.sqrt(b * b - a * cc)
        y_at = lambda t: oc[..., 1] + t * d[:, 1]  # noqa: E731
        side = np.inf
        for ts in ((-b + sq) / a, (-b - sq) / a):  # nearer root last so it wins
            side = np.where((ts > _EPS) & (y_at(ts) >= 0) & (y_at(ts) <= p["hgt"]), ts, side)
        tc = (p["hgt"] - oc[..., 1]) / d[:, 1]
        pc = oc + tc[:, None] * d
        cap = np.where((tc > _EPS) & (pc[:, 0] ** 2 + pc[:, 2] ** 2 <= p["r"] ** 2), tc, np.inf)
        t = np.where(np.isnan(side), np.inf, side)
        on_cap = cap < t
        t = np.minimum(t, cap).astype(_F)
        if not full:
            return t
        q = oc + np.nan_to_num(t, posinf=0)[:, None] * d
        n = np.where(on_cap[:, None], np.array([0, 1, 0], _F), q * np.array([1, 0, 1], _F) / p["r"])
        ang = p["r"] * np.arctan2(q[:, 0], q[:, 2])
        uv = np.where(on_cap[:, None], q[:, [0, 2]], np.stack([ang, q[:, 1]], 1))
        return t, n, uv


def _near(p: dict, o_dot_u, o_sq, o_dot_c, u_dot_c) -> np.ndarray:
    """Indices of rays o + t u (u unit) that pass within the bounding sphere of p and not behind their origin.

    Takes dot products so that one origin (primary rays) or one direction (shadow rays) costs a single matvec:
    along = (c - o).u, |c - o|^2 - along^2 = squared distance of the centre from the ray line."""
    along = u_dot_c - o_dot_u
    dist2 = p["c"] @ p["c"] - 2 * o_dot_c + o_sq - along**2
    return np.flatnonzero((dist2 < p["bound"] ** 2 + 0.01) & (along > -p["bound"]))


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


# ---------------------------------------------------------------- rendering


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
    s = _sample_scene(rng)
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
        tp, n_p, uv_p = _hit(p, s["cam"], d[cand])
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
    orig = pts[lit] + nrm[lit] * _F(2 * _EPS)
    blocked = np.zeros(len(orig), bool)
    o_sun, o_sq = orig @ s["sun"], (orig * orig).sum(1)
    for p in s["prims"]:
        cand = _near(p, o_sun, o_sq, orig @ p["c"], s["sun"] @ p["c"])
        cand = cand[~blocked[cand]]
        blocked[cand] = np.isfinite(_hit(p, orig[cand], np.broadcast_to(s["sun"], (len(cand), 3)), full=False))
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

    out = dict(image=(np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(res, res, 3),
               depth=depth.reshape(res, res), label=label.astype(np.int64).reshape(res, res))
    if debug:
        shade, shadow = np.zeros(n_rays, _F), np.zeros(n_rays, bool)
        shade[surf] = light.mean(1)
        shadow[np.flatnonzero(surf)[lit]] = blocked
        vis = np.bincount(inst + 1, minlength=len(s["prims"]) + 2)[2:]
        albedo = np.zeros((n_rays, 3), _F)
        albedo[surf] = alb
        nw = s["n_walls"]
        out.update(
            instance=inst.reshape(res, res), material=mat.reshape(res, res), shadow=shadow.reshape(res, res),
            shading=shade.reshape(res, res), albedo=albedo.reshape(res, res, 3),
            objects=[dict(id=i + 1, cls=p["cls"], material=p["mat"], z=float(p["c"][2]), solo=solo[i],
                          visible=int(vis[i])) for i, p in enumerate(s["prims"])],
            info={k: (tuple(None if j is None else nw + j + 1 for j in v) if isinstance(v, tuple)
                      else None if v is None else nw + v + 1) for k, v in s["info"].items()},
            camera=dict(height=float(s["cam"][1]), pitch_deg=float(np.degrees(s["pitch"])),
                        hfov_deg=float(np.degrees(s["hfov"]))))
    return out


# ---------------------------------------------------------------- dataset views, writer, plots


class SyntheticScenes:
    """On-the-fly map-style view of the synthetic world: item i = ``render_scene(seed, offset + i, res)`` plus its key;
    the same content ``write_synthetic`` stores (offset 0 for train, VAL_OFFSET for val)."""

    def __init__(self, n: int, *, res: int = 224, seed: int = 0, split: str = "train"):
        assert split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}"
        self.n, self.res, self.seed, self.split = n, res, seed, split
        self.offset = 0 if split == "train" else VAL_OFFSET

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"scene {i} out of range 0..{self.n - 1}")
        return dict(key=f"{i:05d}", **render_scene(self.seed, self.offset + i, self.res))


def _params(n_train: int, n_val: int, res: int, seed: int) -> dict:
    # version: bump whenever rendering changes, so stale worlds (and their derived kNN files) are regenerated.
    # 2: class-typical appearance priors.
    return dict(generator="depthg.data.synthetic", version=2, n_train=n_train, n_val=n_val, res=res, seed=seed,
                classes=list(CLASS_NAMES), depth="camera z in metres, sky = FAR", far=FAR, clip=CLIP,
                val_offset=VAL_OFFSET)


def write_synthetic(root, *, n_train: int, n_val: int, res: int = 224, seed: int = 0, progress: bool = True) -> Path:
    """Write the synthetic dataset under ``root`` (= <data>/synthetic): {img,label,depth}/{train,val}/<n:05d>.png,
    depth sidecars, and manifest.json with the generator parameters (written last, so it marks a finished set).

    Idempotent: with an identical manifest only missing items are rendered (none when complete). With different
    parameters the old manifest and our numbered files are removed first, so no stale scenes remain."""
    root = Path(root)
    params = _params(n_train, n_val, res, seed)
    manifest = root / "manifest.json"
    same = manifest.is_file() and json.loads(manifest.read_text()) == params
    if not same:
        if manifest.is_file():  # another world was here: what was derived from it (kNN files) is stale too
            shutil.rmtree(root / "derived", ignore_errors=True)
        manifest.unlink(missing_ok=True)
        for f in root.glob("[idl]*/*/[0-9][0-9][0-9][0-9][0-9].*"):
            if f.parts[-3] in ("img", "label", "depth") and f.suffix in (".png", ".json"):
                f.unlink()
    jobs = [(split, i) for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    done = 0
    for split, i in jobs:
        name = f"{i:05d}.png"
        paths = [root / kind / split / name for kind in ("img", "label", "depth")]
        if all(p.is_file() for p in paths) and paths[2].with_suffix(".json").is_file():
            continue
        item = render_scene(seed, i + (0 if split == "train" else VAL_OFFSET), res)
        for p in paths[:2]:
            p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(item["image"]).save(paths[0], compress_level=1)
        Image.fromarray(item["label"].astype(np.uint8)).save(paths[1], compress_level=1)
        write_depth(paths[2], item["depth"], source="synthetic", units="metres",
                    extra=dict(depth_kind="camera_z", far=FAR))
        done += 1
        if progress and done % 50 == 0:
            print(f"synthetic: rendered {done} scenes ({split} {i + 1})", flush=True)
    manifest.write_text(json.dumps(params, indent=1))
    if progress:
        print(f"synthetic: {root} ready ({n_train} train, {n_val} val, {done} rendered now)", flush=True)
    return root


def save_sample_grid(items, path, *, max_items: int = 8) -> Path:
    """Save a grid of RGB / depth / label for items (dicts with image, depth, label) as a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    items = list(items)[:max_items]
    assert items, "save_sample_grid needs at least one item"
    fig = Figure(figsize=(7.5, 2.5 * len(items)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items), 3, squeeze=False)
    cmap = ListedColormap(CLASS_COLORS / 255.0)
    for row, it in zip(axes, items):
        row[0].imshow(it["image"])
        row[1].imshow(it["depth"], cmap="magma_r")  # dark = far
        lab = np.where(np.asarray(it["label"]) < 0, 0, it["label"])
        row[2].imshow(lab, cmap=cmap, vmin=-0.5, vmax=len(CLASS_NAMES) - 0.5, interpolation="nearest")
        for ax in row:
            ax.set_axis_off()
    for ax, title in zip(axes[0], ("image", "depth", "label")):
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
