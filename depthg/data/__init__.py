"""Data: the synthetic world, real datasets in their release layouts, transforms, and the preparation stages.

The entry points most code needs are re-exported here, loaded on first use (PEP 562): importing one light module
of this package (``depthg.data.stage`` for the ``prep`` command line) must not load torch, so ``--help`` stays fast.
"""

from importlib import import_module

_EXPORTS = {
    "source_dataset": "datasets",
    "DatasetInfo": "labels",
    "dataset_info": "labels",
    "EvalSet": "pairs",
    "TrainPairs": "pairs",
    "build_eval_set": "pairs",
    "build_train_set": "pairs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
