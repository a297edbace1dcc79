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
  enough that the front object covers its base; objects also stand in front of walls;
- thin and small far structures: a thin pole (class pillar, about a pixel wide at 112 px) and a small box or ball,
  12-28 m away, smaller than one 8 px patch.
Placement keeps these objects from hiding each other otherwise, so each ambiguity stays visible.

Scene i of seed s uses ``np.random.default_rng([s, i])``, so it does not depend on how many scenes are made.
Validation scenes use indices VAL_OFFSET + i.
"""

from depthg.data.synthetic.classes import BALL, BOX, CLASS_COLORS, CLASS_NAMES, GROUND, PILLAR, SKY, WALL
from depthg.data.synthetic.render import render_scene
from depthg.data.synthetic.scene import CLIP, FAR
from depthg.data.synthetic.world import VAL_OFFSET, write_synthetic

__all__ = [
    "BALL",
    "BOX",
    "CLASS_COLORS",
    "CLASS_NAMES",
    "CLIP",
    "FAR",
    "GROUND",
    "PILLAR",
    "SKY",
    "VAL_OFFSET",
    "WALL",
    "render_scene",
    "write_synthetic",
]
