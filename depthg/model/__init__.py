"""The method as pure modules and functions: the frozen backbone and its weights, the segmentation head and probes,
depth-guided sampling (FPS), the correlation losses and 3D local hidden positives.

Layer 2 of the package (after the foundations ``errors, paths, files, device, config, presets``): it imports none of
``data``, ``training``, ``evaluation`` or ``reporting`` (``tests/test_layers.py`` checks this).
"""
