"""Several trials of one configuration: the paper's "5 trials from different starting points"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sharpminima.config import TrainConfig
from sharpminima.train.loop import train
from sharpminima.train.run import Run


def train_trials(
    config: TrainConfig, seeds: Sequence[int] = range(5), *, vectorize: bool = False, **kwargs: Any
) -> list[Run]:
    """Train ``config`` once per seed (each its own stored run) and return the runs.

    Use :func:`sharpminima.train.run.mean_std` on the result for mean +- std over trials.

    Args:
        config: The shared configuration; its ``seed`` is replaced by each of ``seeds``.
        seeds: One seed per trial (five by default, as in the paper).
        vectorize: Train the trials as one batched computation
            (:func:`sharpminima.train.vectorized.train_vectorized`: same runs, same store
            records; it falls back to one at a time where it cannot).
        **kwargs: Passed to :func:`sharpminima.train.train` (``store``, ``dataset``, ...).
    """
    if vectorize:
        from sharpminima.train.vectorized import train_vectorized

        return train_vectorized(config, seeds, **kwargs)
    return [train(config.replace(seed=s), **kwargs) for s in seeds]
