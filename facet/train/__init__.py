"""Training Facet models: data (extxyz via ASE), batched forces/stress, loss, EMA, the training
loop and the ``facet-train`` command line."""

from facet.train.data import DataError, LabelKeys
from facet.train.trainer import Trainer, TrainingError, TrainOptions

__all__ = ["DataError", "LabelKeys", "TrainOptions", "Trainer", "TrainingError"]
