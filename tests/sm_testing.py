"""Test helpers shared across test folders (imported as `sm_testing`, never via conftest)."""

from __future__ import annotations

import torch

from sharpminima.data.base import Dataset


def make_tiny(
    n_train: int = 600, n_test: int = 200, shape=(1, 8, 8), classes: int = 4, seed: int = 0
) -> Dataset:
    """A small learnable problem: labels from a fixed random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, *shape, generator=g)
    w = torch.randn(x[0].numel(), classes, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return Dataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, "test")



def small_mlp(in_features: int = 64, classes: int = 4) -> torch.nn.Module:
    """A fast BatchNorm MLP for loop tests (F1's structure, 32 units wide)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(in_features, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, classes),
    )


def mean_abs_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """A user loss ``fn(model, batch)``: mean absolute error of the logits to one-hot targets."""
    x, y = batch
    out = model(x)
    return (out - torch.nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)).abs().mean()
