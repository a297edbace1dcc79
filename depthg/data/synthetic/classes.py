"""Classes of the synthetic world and their typical appearance (colour and texture priors)."""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("sky", "ground", "wall", "box", "ball", "pillar")
SKY, GROUND, WALL, BOX, BALL, PILLAR = range(6)
CLASS_COLORS = np.array(
    [[135, 190, 240], [120, 90, 50], [170, 60, 60], [240, 170, 40], [60, 160, 230], [150, 150, 160]], np.uint8
)  # for plots only
# Per class: patterns to draw from, hue, saturation and value ranges. Each class has a typical appearance, as real
# classes do (grass is green, bricks are red): this is where class evidence lives for the small ViT that is
# self-supervised on this world, as it lives in DINO's features for photographs. The forced ambiguities of
# scene.py (a texture shared by a wall and a box, ground material on an object, same-coloured twins of different
# classes, shadows and lamp gradients) are the exceptions that depth has to resolve.
PRIORS = {
    GROUND: (("plain", "noise", "checker"), (0.20, 0.32), (0.35, 0.65), (0.30, 0.55)),  # grass / moss green
    WALL: (("plain", "stripes", "noise"), (0.98, 1.03), (0.40, 0.65), (0.45, 0.75)),  # brick red
    BOX: (("plain", "stripes", "noise"), (0.09, 0.14), (0.65, 0.90), (0.75, 0.95)),  # bright orange / wood
    BALL: (("plain", "stripes"), (0.72, 0.88), (0.55, 0.90), (0.55, 0.90)),  # purple / magenta
    PILLAR: (("plain", "noise"), (0.0, 1.0), (0.0, 0.10), (0.80, 0.97)),  # white / light grey stone
}
