"""Loss-landscape measures on flat parameter vectors.

The core (:mod:`.objective`) turns a loss into a counted function of a flat vector; every
measure takes such a ``loss`` (a plain callable or an :class:`Objective`) and a point ``x``
and returns a frozen :class:`Result` with its value, settings and cost. A network's loss
over any data (tensors, a DataLoader, dict batches for Hugging Face models) is a
:class:`ModelObjective`; :class:`Landscape` bundles every measure for a model and its data.
Each measure is registered once (:mod:`.registry`): ``compute("keskar_sharpness", obj, x)``
and ``cached_measure`` reach them by name.
"""

from sharpminima.landscape.curvature import layer_eigenvalues, layer_traces, subspace_ritz_values
from sharpminima.landscape.density import slq, spectral_density
from sharpminima.landscape.eigen import (
    block_lanczos,
    hessian_eigenvalues,
    lanczos,
    power_iteration,
    top_eigenvalues,
)
from sharpminima.landscape.epsilon import epsilon_study, plot_epsilon_study
from sharpminima.landscape.facade import Landscape
from sharpminima.landscape.flatness import adaptive_sharpness, average_sharpness
from sharpminima.landscape.graph_hvp import GraphHVP
from sharpminima.landscape.interpolate import interpolate
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.noise import gradient_noise_scale
from sharpminima.landscape.norms import distance_ratio, parameter_distance, weight_norms
from sharpminima.landscape.objective import (
    CountedObjective,
    Counters,
    FunctionObjective,
    NetworkObjective,
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
from sharpminima.landscape.registry import (
    DataSpec,
    Measure,
    MeasureParams,
    Request,
    all_measures,
    cached_measure,
    compute,
    get_measure,
    register_measure,
)
from sharpminima.landscape.relative_flatness import relative_flatness
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
    "BlockOperator", "Cost", "CostMeter", "CountedObjective", "Counters", "DataSpec", "DenseOperator",
    "FunctionObjective", "GGNOperator", "GraphHVP", "HessianOperator", "Landscape", "Measure",
    "MeasureParams", "ModelObjective", "NetworkObjective", "Objective", "Operator", "Request", "Result",
    "adaptive_sharpness", "all_measures", "as_objective", "as_operator", "average_sharpness", "block_lanczos",
    "bn_mode",
    "cached_measure", "compute", "distance_ratio", "epsilon_study", "flatten_params", "get_measure",
    "gradient_noise_scale", "hessian_eigenvalues", "hessian_trace", "hutchinson", "interpolate",
    "keskar_sharpness", "keskar_sharpness_multistart", "lanczos", "layer_eigenvalues", "layer_traces",
    "loss_surface", "loss_surface_1d", "loss_surface_2d", "parameter_distance", "plot_epsilon_study",
    "power_iteration", "random_direction", "random_subspace", "register_measure", "relative_flatness",
    "slq", "spectral_density", "subspace_coordinates", "subspace_ritz_values", "top_eigenvalues",
    "weight_norms",
]
