"""The loss and accuracy at a point: a measurement like any other (``accuracy``).

A reproduction evaluates its runs' final weights on the test set in a stated BatchNorm mode
and batching (the paper's Keras code used batch statistics); storing that as a measurement
makes it cached and keyed like every other number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, register_measure
from sharpminima.landscape.results import CostMeter, Result


@dataclass(frozen=True)
class EvaluationResult(Result):
    """Accuracy (``value``, percent; NaN where the loss defines none) and the mean loss.

    Attributes:
        loss: The mean loss over the data.
    """

    loss: float = math.nan


@dataclass(frozen=True)
class EvaluationParams(MeasureParams):
    """``accuracy`` takes no parameters: the data spec says where and how."""


def _accuracy(inputs: Inputs, p: EvaluationParams) -> EvaluationResult:
    obj = inputs.objective
    with CostMeter(obj) as meter:
        loss, acc = obj.loss_and_accuracy(inputs.x)
    return EvaluationResult(value=acc, settings=obj.settings(), cost=meter.cost, loss=loss)


register_measure(
    Measure(
        "accuracy",
        EvaluationParams,
        _accuracy,
        "Accuracy (percent) and mean loss over the data, in the given BatchNorm mode",
        needs=Needs(network=True),
        passes=lambda p: 1 / 3,
    )
)
