"""Loss-landscape measures on flat parameter vectors (see objective.py for the core)."""

from sharpminima.landscape.objective import (
    Counters,
    FunctionObjective,
    ModelObjective,
    Objective,
    as_objective,
    bn_mode,
    flatten_params,
)
from sharpminima.landscape.results import Cost, CostMeter, Result

__all__ = [
    "Cost",
    "CostMeter",
    "Counters",
    "FunctionObjective",
    "ModelObjective",
    "Objective",
    "Result",
    "as_objective",
    "bn_mode",
    "flatten_params",
]
