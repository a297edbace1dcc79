"""Evaluation with the STEGO protocol: metrics with Hungarian matching, DenseCRF, the evaluation loop and the
authors' released checkpoints; and the quality of frozen backbone features (feature_quality).

Layer 5: imports the foundations, ``model``, ``data`` and ``training`` only (``tests/test_layers.py`` checks this).
"""
