"""Full-pass evaluation of a model on in-memory data."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int = 10_000) -> tuple[float, float]:
    """Return the mean cross-entropy and the accuracy (percent) over all samples.

    The model is evaluated in eval mode (BatchNorm running statistics, no dropout) and its
    previous mode is restored. The loss is the mean over samples (chunks weighted by size).

    Args:
        model: The network.
        inputs: ``(N, ...)`` on the model's device.
        targets: ``(N,)`` integer labels.
        chunk: Samples per forward pass.
    """
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=inputs.device)
        correct = torch.zeros((), dtype=torch.int64, device=inputs.device)
        for start in range(0, inputs.shape[0], chunk):
            logits = model(inputs[start : start + chunk])  # (B, classes)
            yb = targets[start : start + chunk]
            total += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
        n = inputs.shape[0]
        return float(total) / n, 100.0 * float(correct) / n
    finally:
        model.train(was_training)
