"""The paper's networks and a registry: ``sharpminima.models.build("f1")``."""

from sharpminima.models.networks import MLP, DeepConv, ShallowConv
from sharpminima.models.registry import NETS, NetSpec, build, count_parameters, has_batchnorm

__all__ = [
    "MLP",
    "NETS",
    "DeepConv",
    "NetSpec",
    "ShallowConv",
    "build",
    "count_parameters",
    "has_batchnorm",
]
