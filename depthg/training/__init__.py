"""Training: schedules, the per-iteration step, the loop, its checkpoints and the torchrun scale-out; and the
self-supervised (DINO) pretraining of the synthetic world's backbone (pretrain, dino).

Layer 4: imports the foundations, ``model`` and ``data`` only (``tests/test_layers.py`` checks this).
"""
