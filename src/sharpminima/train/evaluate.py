"""Full-pass evaluation of a model on in-memory data, with any loss adapter."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sharpminima.losses import CrossEntropy, Loss

_CE = CrossEntropy()


@torch.no_grad()
def evaluate(
    model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int = 10_000, criterion: Loss | None = None
) -> tuple[float, float | None]:
    """Return the mean loss and the accuracy (percent; None where the loss defines none).

    The model is evaluated in eval mode (BatchNorm running statistics, no dropout) and its
    previous mode is restored. The loss is the mean over all terms (samples, or tokens for a
    per-token loss): the adapter's per-chunk sums (:meth:`~sharpminima.losses.Loss.loss_sum`)
    accumulated in float64 and divided by the total count. The per-chunk computation is the
    loss adapter's, shared with the landscape objective
    (:meth:`~sharpminima.landscape.model_objective.ModelObjective.loss_and_accuracy`), which
    instead weights chunk means by their counts, because its function must be defined
    chunk by chunk for BatchNorm in batch mode; here BatchNorm uses running statistics,
    where the two agree up to rounding.

    Args:
        model: The network.
        inputs: ``(N, ...)`` on the model's device.
        targets: ``(N, ...)``.
        chunk: Samples per forward pass.
        criterion: The loss adapter (default: cross-entropy).
    """
    criterion = _CE if criterion is None else criterion
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=inputs.device)
        correct = torch.zeros((), dtype=torch.int64, device=inputs.device)
        count = 0.0
        defined = criterion.has_accuracy
        for start in range(0, inputs.shape[0], chunk):
            batch = (inputs[start : start + chunk], targets[start : start + chunk])
            loss_sum, hits = criterion.loss_sum(model, batch)
            total += loss_sum.double()
            count += criterion.count(batch)
            if hits is None:
                defined = False
            else:
                correct += hits
        n = count if isinstance(count, float) and not count.is_integer() else int(count)
        return float(total) / n, (100.0 * float(correct) / n if defined else None)
    finally:
        model.train(was_training)
