"""Training: ``train(config) -> Run``; optimizers and step methods are registries."""

from sharpminima.train.evaluate import evaluate
from sharpminima.train.loop import batch_indices, epoch_seed, train
from sharpminima.train.methods import METHODS, make_step, register_method
from sharpminima.train.optim import OPTIMIZERS, make_optimizer, register_optimizer
from sharpminima.train.run import Run, mean_std
from sharpminima.train.trials import train_trials

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "Run",
    "batch_indices",
    "epoch_seed",
    "evaluate",
    "make_optimizer",
    "make_step",
    "mean_std",
    "register_method",
    "register_optimizer",
    "train",
    "train_trials",
]
