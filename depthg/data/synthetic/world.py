"""Writing the synthetic world to disk: {img,label,depth}/{train,val} and a manifest of the generator parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from depthg.data.depth_io import write_depth
from depthg.data.synthetic.classes import CLASS_NAMES
from depthg.data.synthetic.render import render_scene
from depthg.data.synthetic.scene import CLIP, FAR
from depthg.files import atomic_write, write_json

VAL_OFFSET = 1_000_000  # validation scene i is scene VAL_OFFSET + i of the seed

# Bump whenever rendering changes, so stale worlds (and their derived kNN files) are regenerated.
# 2: class-typical appearance priors. 3: thin far poles and small far objects.
VERSION = 3


def _params(n_train: int, n_val: int, res: int, seed: int) -> dict:
    return dict(
        generator="depthg.data.synthetic",
        version=VERSION,
        n_train=n_train,
        n_val=n_val,
        res=res,
        seed=seed,
        classes=list(CLASS_NAMES),
        depth="camera z in metres, sky = FAR",
        far=FAR,
        clip=CLIP,
        val_offset=VAL_OFFSET,
    )


def write_synthetic(root, *, n_train: int, n_val: int, res: int = 224, seed: int = 0, progress: bool = True) -> Path:
    """Write the synthetic dataset under ``root`` (= <data>/synthetic): {img,label,depth}/{train,val}/<n:05d>.png,
    depth sidecars, and manifest.json with the generator parameters (written last, so it marks a finished set).

    Idempotent and resumable: the parameters are recorded in ``.pending.json`` before the first scene, and every
    file is written atomically (temp + rename), so after a kill the rerun with the same parameters keeps each
    finished scene and renders only the rest (none when complete). With different parameters the old manifest and
    our numbered files are removed first, so no stale scenes remain."""
    root = Path(root)
    params = _params(n_train, n_val, res, seed)
    manifest, pending = root / "manifest.json", root / ".pending.json"
    recorded = [json.loads(f.read_text()) for f in (manifest, pending) if _readable_json(f)]
    if params not in recorded:
        if manifest.is_file() or pending.is_file():  # another world was here: what was derived from it is stale too
            shutil.rmtree(root / "derived", ignore_errors=True)
        manifest.unlink(missing_ok=True)
        for f in root.glob("[idl]*/*/[0-9][0-9][0-9][0-9][0-9].*"):
            if f.parts[-3] in ("img", "label", "depth") and f.suffix in (".png", ".json"):
                f.unlink()
        write_json(pending, params, indent=1)  # with the first output: a killed run's scenes are known to fit
    jobs = [(split, i) for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    done = 0
    for split, i in jobs:
        name = f"{i:05d}.png"
        paths = [root / kind / split / name for kind in ("img", "label", "depth")]
        if all(p.is_file() for p in paths) and paths[2].with_suffix(".json").is_file():
            continue
        item = render_scene(seed, i + (0 if split == "train" else VAL_OFFSET), res)
        for path, array in ((paths[0], item["image"]), (paths[1], item["label"].astype(np.uint8))):
            with atomic_write(path) as tmp:  # a killed writer leaves no truncated PNG that looks finished
                Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
        write_depth(
            paths[2], item["depth"], source="synthetic", units="metres", extra=dict(depth_kind="camera_z", far=FAR)
        )
        done += 1
        if progress and done % 50 == 0:
            print(f"synthetic: rendered {done} scenes ({split} {i + 1})", flush=True)
    write_json(manifest, params, indent=1)
    pending.unlink(missing_ok=True)
    if progress:
        print(f"synthetic: {root} ready ({n_train} train, {n_val} val, {done} rendered now)", flush=True)
    return root


def _readable_json(path: Path) -> bool:
    """A manifest that exists and parses (a truncated one counts as absent: its world is redone)."""
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False
