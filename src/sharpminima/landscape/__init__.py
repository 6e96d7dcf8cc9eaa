"""Loss-landscape measures on flat parameter vectors.

The core (:mod:`.objective`) turns a loss into a counted function of a flat vector; every
measure takes such a ``loss`` (a plain callable or an :class:`Objective`) and a point ``x``
and returns a frozen :class:`Result` with its value, settings and cost. :class:`Landscape`
bundles them for a model and a dataset.
"""

from sharpminima.landscape.curvature import layer_eigenvalues, layer_traces, subspace_ritz_values
from sharpminima.landscape.density import slq, spectral_density
from sharpminima.landscape.eigen import hessian_eigenvalues, lanczos, power_iteration, top_eigenvalues
from sharpminima.landscape.epsilon import epsilon_study, plot_epsilon_study
from sharpminima.landscape.facade import Landscape
from sharpminima.landscape.geometry import (
    adaptive_sharpness,
    average_sharpness,
    distance_ratio,
    gradient_noise_scale,
    parameter_distance,
    weight_norms,
)
from sharpminima.landscape.interpolate import interpolate
from sharpminima.landscape.objective import (
    Counters,
    FunctionObjective,
    GraphHVP,
    ModelObjective,
    Objective,
    as_objective,
    bn_mode,
    flatten_params,
)
from sharpminima.landscape.operators import (
    BlockOperator,
    DenseOperator,
    GGNOperator,
    HessianOperator,
    Operator,
    as_operator,
)
from sharpminima.landscape.results import Cost, CostMeter, Result
from sharpminima.landscape.sharpness import (
    keskar_sharpness,
    keskar_sharpness_multistart,
    random_subspace,
    subspace_coordinates,
)
from sharpminima.landscape.surface import loss_surface, loss_surface_1d, loss_surface_2d, random_direction
from sharpminima.landscape.trace import hessian_trace, hutchinson

__all__ = [
    "BlockOperator", "Cost", "CostMeter", "Counters", "DenseOperator", "FunctionObjective",
    "GGNOperator", "GraphHVP", "HessianOperator", "Landscape", "ModelObjective", "Objective", "Operator",
    "Result", "adaptive_sharpness", "as_objective", "as_operator", "average_sharpness", "bn_mode",
    "distance_ratio", "epsilon_study", "flatten_params", "gradient_noise_scale", "hessian_eigenvalues",
    "hessian_trace", "hutchinson", "interpolate", "keskar_sharpness", "keskar_sharpness_multistart",
    "lanczos", "layer_eigenvalues", "layer_traces", "loss_surface", "loss_surface_1d",
    "loss_surface_2d", "parameter_distance", "plot_epsilon_study", "power_iteration",
    "random_direction", "random_subspace", "slq", "spectral_density", "subspace_coordinates",
    "subspace_ritz_values", "top_eigenvalues", "weight_norms",
]
