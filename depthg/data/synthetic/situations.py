"""The situations the paper's claims rest on, found in the synthetic world: one validation scene shown per situation.

DepthG's argument (paper §1, §3) is that depth separates what appearance confuses. The world generates each such
case on purpose (:mod:`depthg.data.synthetic`); :func:`find_situations` picks, for each, the first validation scene
where it is plainly visible and marks the pixels involved, for the figure of ``04_figures``
(:func:`depthg.reporting.plots.situations_grid`). The criteria are those of tests/test_synthetic.py, with minimum
pixel counts so that the case can be seen at the figure's resolution.

Shapes: H = W = res; masks bool [H,W].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from depthg.data.synthetic.classes import GROUND, WALL
from depthg.data.synthetic.render import render_scene
from depthg.data.synthetic.world import VAL_OFFSET
from depthg.errors import DataError

# key -> title; the order of the figure's columns
SITUATIONS = {
    "shadow": "a cast shadow across one surface",
    "shared_texture": "one texture on a wall and a box",
    "twins": "one colour at two depths",
    "occlusion": "an object partly behind another",
    "far_structures": "thin and small far structures",
}


def _shadow(s: dict, min_px: int) -> np.ndarray | None:
    """The shadowed pixels of the ground or a wall that is both in shadow and lit (the shadow falls across it)."""
    best = None
    for inst in np.unique(s["instance"][(s["label"] == GROUND) | (s["label"] == WALL)]):
        on = s["instance"] == inst
        dark = on & s["shadow"]
        if dark.sum() >= min_px and (on & ~s["shadow"]).sum() >= min_px and (best is None or dark.sum() > best.sum()):
            best = dark
    return best


def _objects_mask(s: dict, ids, min_px: int) -> np.ndarray | None:
    """Pixels of the instances ``ids``, each at least ``min_px`` visible; None when one is missing or too small."""
    if any(j is None for j in ids):
        return None
    masks = [s["instance"] == j for j in ids]
    return np.logical_or.reduce(masks) if all(m.sum() >= min_px for m in masks) else None


def _mask(key: str, s: dict, min_px: int) -> np.ndarray | None:
    info, objs = s["info"], {o["id"]: o for o in s["objects"]}
    if key == "shadow":
        return _shadow(s, 4 * min_px)
    if key == "shared_texture":
        box = info["shared_wall_box"]
        if box is None:
            return None
        wall = (s["label"] == WALL) & (s["material"] == objs[box]["material"])
        on_box = _objects_mask(s, [box], min_px)
        return None if on_box is None or wall.sum() < min_px else on_box | wall
    if key == "twins":
        near, far = info["twins"]
        return _objects_mask(s, [near, far], min_px)
    if key == "occlusion":
        front, back = info["occlusion"]
        if back is None or not 0 < objs[back]["visible"] < objs[back]["solo"]:
            return None  # the back object must be partly hidden
        return _objects_mask(s, [front, back], min_px)
    if key == "far_structures":
        return _objects_mask(s, [info["far_thin"], info["far_small"]], 1)  # about a pixel wide: any pixel counts
    raise KeyError(key)


def find_situations(seed: int = 0, res: int = 224, *, max_scenes: int = 40, min_px: int | None = None) -> list[dict]:
    """For each of :data:`SITUATIONS`, the first validation scene of world ``seed`` that shows it.

    Returns [{"key", "title", "index" (validation index), "image" uint8 [H,W,3], "depth" float32 [H,W], "mask"}];
    ``min_px`` defaults to (res/32)^2 pixels per object. Raises LookupError naming the situations not found in
    ``max_scenes`` scenes.
    """
    min_px = max(1, (res // 32) ** 2) if min_px is None else min_px
    found: dict[str, dict] = {}
    for i in range(max_scenes):
        s = render_scene(seed, VAL_OFFSET + i, res, debug=True)
        for key, title in SITUATIONS.items():
            mask = None if key in found else _mask(key, s, min_px)
            if mask is not None:
                found[key] = dict(key=key, title=title, index=i, image=s["image"], depth=s["depth"], mask=mask)
        if len(found) == len(SITUATIONS):
            return [found[k] for k in SITUATIONS]
    missing = [k for k in SITUATIONS if k not in found]
    raise LookupError(f"situations {missing} not found in the first {max_scenes} validation scenes of seed {seed}")


def world_situations(root: str | Path) -> list[dict]:
    """:func:`find_situations` in the world written at ``root`` (<data>/synthetic): its seed and resolution, scenes
    of its validation split only."""
    manifest = Path(root) / "manifest.json"
    try:
        params = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"no readable synthetic world at {root} ({manifest}: {err}); make it with "
            "`python -m depthg prep synthetic`."
        ) from err
    return find_situations(params["seed"], params["res"], max_scenes=params["n_val"])
