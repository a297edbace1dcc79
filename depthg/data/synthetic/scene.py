"""Scene sampling: camera, sun, lamp, materials and the placement of the primitives that make the ambiguities."""

from __future__ import annotations

import colorsys

import numpy as np

from depthg.data.synthetic.classes import BALL, BOX, GROUND, PILLAR, PRIORS, WALL
from depthg.data.synthetic.intersect import hit

FAR = 50.0  # depth given to sky pixels (metres)
CLIP = 40.0  # far clipping distance of surfaces (camera z, metres)
_F = np.float32


def _material(rng, cls, kind=None) -> dict:
    kinds, hue, sat, val = PRIORS[cls]
    kind = kind or str(rng.choice(kinds))
    a = np.array(colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val)), _F)
    b = a * _F(rng.uniform(0.35, 0.7))
    # noise = sum of 4 sinusoids of random direction and wavelength (cheap smooth "value noise")
    ang = rng.uniform(0, np.pi, 4)
    waves = np.stack([np.cos(ang), np.sin(ang)], 1) * (2 * np.pi / rng.uniform(0.3, 2.0, 4))[:, None]
    return dict(
        kind=kind,
        a=a,
        b=b,
        period=_F(rng.uniform(0.25, 1.0)),
        angle=rng.uniform(0, np.pi),
        waves=waves.astype(_F),
        phases=rng.uniform(0, 2 * np.pi, 4).astype(_F),
    )


def _object(rng, cls, x, z, mat, small: bool = False) -> dict:
    """A primitive standing on the ground at (x, z): kind, centre c, sizes, footprint radius fp. ``small``: a box or
    ball a third of the usual size, or a pillar as a thin pole (a lamp post), for far structures below patch size."""
    if cls in (BOX, WALL):
        if cls == BOX:
            half, yaw = rng.uniform([0.3, 0.25, 0.3], [1.0, 0.9, 1.0]), rng.uniform(0, np.pi)
            half = half / 3 if small else half
        else:
            half, yaw = np.array([rng.uniform(4, 12), rng.uniform(1.2, 3.5), 0.2]), 0.0
        cs, sn = np.cos(yaw), np.sin(yaw)
        rot = np.array([[cs, 0, sn], [0, 1, 0], [-sn, 0, cs]], _F)  # columns: local axes in world coordinates
        return dict(
            cls=cls,
            kind="box",
            c=np.array([x, half[1], z], _F),
            half=half.astype(_F),
            rot=rot,
            mat=mat,
            fp=float(np.hypot(half[0], half[2])),
            bound=_F(np.linalg.norm(half)),
        )
    if cls == BALL:
        r = rng.uniform(0.3, 0.9) / (3 if small else 1)
        return dict(cls=cls, kind="sphere", c=np.array([x, r, z], _F), r=_F(r), mat=mat, fp=r, bound=_F(r))
    r, hgt = rng.uniform(0.06, 0.14) if small else rng.uniform(0.15, 0.45), rng.uniform(2.0, 6.0)
    return dict(
        cls=cls,
        kind="cyl",
        c=np.array([x, hgt / 2, z], _F),
        r=_F(r),
        hgt=_F(hgt),
        mat=mat,
        fp=r,
        bound=_F(np.hypot(r, hgt / 2)),
    )


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
        if hit(w, cam, seg, full=False)[0] < 1:
            return False
    return True


def sample_scene(rng) -> dict:
    h, pitch, hfov = rng.uniform(1.0, 2.5), np.radians(rng.uniform(1, 12)), np.radians(rng.uniform(50, 80))
    cam = np.array([0, h, 0], _F)
    el, az = np.radians(rng.uniform(20, 55)), rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], _F)
    mats = [_material(rng, GROUND), _material(rng, WALL, str(rng.choice(["stripes", "checker", "noise"])))]
    walls = [_wall(rng, 1, cam)] + [_wall(rng, len(mats) + i, cam) for i in range(rng.integers(0, 3))]
    mats += [_material(rng, WALL) for _ in walls[1:]]
    tanh = np.tan(hfov / 2)

    objs, info, clear = [], {}, []  # clear: indices of objects that later ones must not hide

    def place(cls, mat, z_range, bearing=None, protect=True, exempt=None, tries=60, small=False):
        for _ in range(tries):
            z = rng.uniform(*z_range)
            x = (bearing if bearing is not None else rng.uniform(-0.85, 0.85) * tanh) * z
            if mat is None:
                mats.append(_material(rng, cls))
            o = _object(rng, cls, x, z, len(mats) - 1 if mat is None else mat, small)
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
        b = place(
            int(rng.choice([BOX, BALL, PILLAR])),
            None,
            (za * 1.2, za * min(2.2, 0.95 * reach(a))),
            bearing=objs[a]["c"][0] / za + off,
            exempt=a,
        )
    info["occlusion"] = (a, b)
    # maybe a pillar/ball wearing the ground's material
    info["shared_ground"] = place(int(rng.choice([PILLAR, BALL])), 0, (3, 15)) if rng.random() < 0.5 else None
    # thin and small far structures: a pole about a pixel wide at 112 px, a small box or ball, both 12-28 m away
    info["far_thin"] = place(PILLAR, None, (12, 28), small=True)
    info["far_small"] = place(int(rng.choice([BOX, BALL])), None, (12, 28), small=True)
    for _ in range(rng.integers(2, 6)):
        place(int(rng.choice([BOX, BALL, PILLAR, PILLAR])), None, (3, 18), protect=False, tries=8)
    lamp = np.array([rng.uniform(-5, 5), rng.uniform(1.5, 4), rng.uniform(4, 14)], _F)
    return dict(
        cam=cam,
        pitch=pitch,
        hfov=hfov,
        sun=sun,
        lamp=lamp,
        mats=mats,
        prims=walls + objs,
        n_walls=len(walls),
        info=info,
        sun_col=np.array([1.0, 0.93, 0.8], _F) * _F(rng.uniform(0.8, 1.0)),
        amb_col=np.array([0.55, 0.62, 0.75], _F) * _F(rng.uniform(0.35, 0.5)),
        lamp_col=np.array([1.0, 0.85, 0.6], _F) * _F(rng.uniform(0.4, 0.8)),
        horizon=np.array(colorsys.hsv_to_rgb(rng.uniform(0.55, 0.62), rng.uniform(0.05, 0.2), 0.92), _F),
        zenith=np.array(
            colorsys.hsv_to_rgb(rng.uniform(0.56, 0.63), rng.uniform(0.45, 0.7), rng.uniform(0.7, 0.9)), _F
        ),
    )
