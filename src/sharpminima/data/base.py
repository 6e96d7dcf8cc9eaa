"""The in-memory dataset type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """A dataset held in memory as tensors (classification by default).

    Attributes:
        name: Short name (``"mnist"``, ``"cifar10"``, ``"synthetic"``...).
        x_train: Inputs, shape ``(N, *input_shape)``: float32 images ``(N, C, H, W)``
            scaled to [0, 1], features ``(N, d)``, or token ids ``(N, T)``.
        y_train: Targets, shape ``(N, ...)``: int64 labels in ``[0, num_classes)`` (the
            paper's datasets), token ids ``(N, T)`` or float regression targets.
        x_test: Test inputs, shape ``(M, *input_shape)``.
        y_test: Test targets, shape ``(M, ...)``.
        num_classes: Number of classes (or of outputs for a regression): what a network
            factory is given.
        source: Where the data came from (file, package, seed), for reports.
        meta: Free-form extra facts (checksums, class names).

    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    def subset(self, train_limit: int | None = None, test_limit: int | None = None) -> Dataset:
        """Return the first ``train_limit`` training and ``test_limit`` test samples.

        The first samples (not a random draw) are taken so that a subset is reproducible and
        nested: the 1,000-sample subset is contained in the 10,000-sample one.
        """
        xtr, ytr, xte, yte = self.x_train, self.y_train, self.x_test, self.y_test
        if train_limit is not None:
            xtr, ytr = xtr[:train_limit], ytr[:train_limit]
        if test_limit is not None:
            xte, yte = xte[:test_limit], yte[:test_limit]
        return replace(self, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy with all tensors on ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )
