"""A seeded, learnable classification problem for tests, demos and quick experiments."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import expit

from sharpminima.data.base import Dataset
from sharpminima.errors import DataError

__all__ = ["synthetic"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DataError(message)


def synthetic(
    num_train: int = 2000,
    num_test: int = 1000,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 1.0,
    latent_dim: int = 16,
) -> Dataset:
    """Generate a classification problem from a random latent Gaussian mixture.

    The generative model, with ``k = latent_dim`` and ``d = prod(input_shape)``:

    * class means ``mu_c ~ N(0, I_k)`` for ``c = 0..num_classes-1``;
    * a fixed random decoder ``W ~ N(0, 4/k)^(k x d)``, ``b ~ N(0, 1/4)^d``;
    * each sample draws a label ``y ~ Uniform{0..num_classes-1}``,
      ``z = mu_y + noise * eps`` with ``eps ~ N(0, I_k)``, and
      ``x = sigmoid(W^T z + b)`` reshaped to ``input_shape``, so ``x`` lies in [0, 1]
      like scaled pixels.

    Classes overlap more as ``noise`` grows (the Bayes error rises from 0); with the
    defaults a small MLP reaches high but not perfect test accuracy. The problem (means
    and decoder), the training set and the test set come from three independent streams
    of ``numpy.random.SeedSequence(seed)``, so the same seed gives identical tensors, and
    changing ``num_train`` leaves the problem and the test set unchanged.

    Args:
        num_train: Number of training samples (>= 1).
        num_test: Number of test samples (>= 1).
        input_shape: Shape of one sample, e.g. ``(1, 28, 28)`` (MNIST-like, default),
            ``(784,)`` or ``(3, 32, 32)``.
        num_classes: Number of classes (>= 2).
        seed: Seed of everything random (an integer >= 0).
        noise: Standard deviation of the latent noise (>= 0).
        latent_dim: Dimension ``k`` of the latent space (>= 1).

    Returns:
        A :class:`Dataset` named ``"synthetic"`` with float32 inputs in [0, 1] and int64
        labels; ``meta`` holds the generator's settings.

    Raises:
        DataError: A size is not a positive integer, fewer than 2 classes, a negative
            seed, or a negative or non-finite ``noise``.

    """
    shape = tuple(input_shape)
    _check(
        all(isinstance(n, int) and n >= 1 for n in (num_train, num_test, latent_dim)),
        f"synthetic: num_train, num_test and latent_dim must be integers >= 1, got "
        f"{num_train}, {num_test}, {latent_dim}",
    )
    _check(
        len(shape) >= 1 and all(isinstance(s, int) and s >= 1 for s in shape),
        f"synthetic: input_shape must be positive integers such as (1, 28, 28), got {shape}",
    )
    _check(
        isinstance(num_classes, int) and num_classes >= 2,
        f"synthetic: num_classes must be an integer >= 2, got {num_classes}",
    )
    _check(
        isinstance(seed, int) and seed >= 0,
        f"synthetic: seed must be an integer >= 0, got {seed!r}",
    )
    _check(
        isinstance(noise, int | float) and math.isfinite(noise) and noise >= 0,
        f"synthetic: noise must be a finite number >= 0, got {noise}",
    )
    problem_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
    problem = np.random.default_rng(problem_seq)
    dim = math.prod(shape)
    means = problem.standard_normal((num_classes, latent_dim))  # (C, k)
    decoder = problem.standard_normal((latent_dim, dim)) * (2.0 / math.sqrt(latent_dim))  # (k, d)
    bias = problem.standard_normal(dim) * 0.5  # (d,)

    def draw(seq: np.random.SeedSequence, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seq)
        labels = rng.integers(0, num_classes, size=num)  # (n,)
        latent = means[labels] + noise * rng.standard_normal((num, latent_dim))  # (n, k)
        x = expit(latent @ decoder + bias)  # (n, d)
        x = x.astype(np.float32).reshape(num, *shape)
        return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))

    x_train, y_train = draw(train_seq, num_train)
    x_test, y_test = draw(test_seq, num_test)
    settings = {
        "seed": seed,
        "noise": noise,
        "latent_dim": latent_dim,
        "input_shape": list(shape),
        "num_classes": num_classes,
    }
    return Dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        source=f"synthetic(seed={seed}, noise={noise}, latent_dim={latent_dim})",
        meta=settings,
    )
