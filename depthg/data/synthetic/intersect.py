"""Ray-primitive intersections of the synthetic world (vectorised numpy, float32).

Shapes: M rays. A primitive is a dict from :mod:`depthg.data.synthetic.scene` (kind "box", "sphere" or "cyl")."""

from __future__ import annotations

import numpy as np

EPS = 1e-3  # minimal hit distance (metres): keeps shadow rays from hitting their own surface
_F = np.float32


def hit(p: dict, o: np.ndarray, d: np.ndarray, *, full: bool = True):
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
            t = np.where(near > EPS, near, far)
            t = np.where((far >= near) & (t > EPS), t, np.inf).astype(_F)
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
            t = np.where(t0 > EPS, t0, np.where(t1 > EPS, t1, np.inf))
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
            side = np.where((ts > EPS) & (y_at(ts) >= 0) & (y_at(ts) <= p["hgt"]), ts, side)
        tc = (p["hgt"] - oc[..., 1]) / d[:, 1]
        pc = oc + tc[:, None] * d
        cap = np.where((tc > EPS) & (pc[:, 0] ** 2 + pc[:, 2] ** 2 <= p["r"] ** 2), tc, np.inf)
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


def near_rays(p: dict, o_dot_u, o_sq, o_dot_c, u_dot_c) -> np.ndarray:
    """Indices of rays o + t u (u unit) that pass within the bounding sphere of p and not behind their origin.

    Takes dot products so that one origin (primary rays) or one direction (shadow rays) costs a single matvec:
    along = (c - o).u, |c - o|^2 - along^2 = squared distance of the centre from the ray line."""
    along = u_dot_c - o_dot_u
    dist2 = p["c"] @ p["c"] - 2 * o_dot_c + o_sq - along**2
    return np.flatnonzero((dist2 < p["bound"] ** 2 + 0.01) & (along > -p["bound"]))
