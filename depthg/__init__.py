"""depthg: DepthG (Sick et al., CVPR 2024) as a reproducible research compendium.

The library holds the whole method; notebooks and the CLI only call it (DESIGN.md §2, §10).
Data flows one way: data -> backbone -> head -> sampling -> losses -> train; evaluate reads checkpoints and data.
"""

__version__ = "0.1.0"
