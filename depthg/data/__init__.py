"""Data: the synthetic world, real datasets in their release layouts, transforms, and the preparation stages.

The entry points most code needs are re-exported here; everything else is imported from its module.
"""

from depthg.data.datasets import source_dataset
from depthg.data.labels import DatasetInfo, dataset_info
from depthg.data.pairs import EvalSet, TrainPairs, build_eval_set, build_train_set

__all__ = ["DatasetInfo", "EvalSet", "TrainPairs", "build_eval_set", "build_train_set", "dataset_info",
           "source_dataset"]
