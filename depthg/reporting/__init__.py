"""Reporting: run records, the ablation and paper tables, published anchors and plots.

Layer 6: imports every layer before it; only the edges (``notebook``, ``reproduce``, ``cli``, ``bench``) import it.
``plots`` draws arrays and tables it is given and imports no other depthg module.
"""
