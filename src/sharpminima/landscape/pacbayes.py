"""PAC-Bayesian flatness (Jiang et al. 2020): the largest weight noise the training error tolerates.

"Fantastic Generalization Measures and Where to Find Them" (ICLR 2020) ranks these among
the best predictors of generalization: ``1 / sigma'^2``, with ``sigma'`` the largest
standard deviation of Gaussian weight noise at which the training error rises by at most
a target (plain), or with noise scaled by each weight's magnitude (magnitude-aware).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpminima.deprecation import renamed
from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import require_network
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, positive, register_measure
from sharpminima.landscape.results import CostMeter, Result


@dataclass(frozen=True)
class FlatnessResult(Result):
    """``value = 1 / sigma'^2``.

    Attributes:
        sigma: ``sigma'``, the largest tolerated noise level found.
        err0: The training error (a fraction) at the point.
        magnitude: Whether the noise was magnitude-aware.
        target: The allowed rise of the training error.
        num_draws: Noise draws averaged per noise level.
    """

    sigma: float = math.nan
    err0: float = math.nan
    magnitude: bool = False
    target: float = math.nan
    num_draws: int = 0


@renamed(num_samples="num_draws")
def pacbayes_flatness(
    objective: Any,
    x: Tensor,
    *,
    magnitude: bool = False,
    target: float = 0.1,
    num_draws: int = 4,
    floor: float = 1e-3,
    sigma_min: float = 1e-4,
    sigma_max: float = 1.0,
    steps: int = 8,
    seed: int = 0,
) -> FlatnessResult:
    """``1 / sigma'^2`` with ``sigma'`` the largest noise at which training error rises <= target.

    ``sigma'`` is the largest ``sigma`` with ``E_u[err(x + u)] <= err(x) + target`` (Jiang et
    al. use ``err(x + u) <= 0.1`` for models at zero training error, where the two agree),
    ``u ~ N(0, sigma^2 I)``, or magnitude-aware ``u_i ~ N(0, sigma^2 x_i^2 + floor^2)``. The
    expectation is a mean over ``num_draws`` draws; the same draws ``xi`` serve every
    ``sigma`` (``u = scale * xi``) so the search sees a deterministic, nearly monotone
    function, bisected ``steps`` times on ``log sigma`` within ``[sigma_min, sigma_max]``.

    Args:
        objective: A network objective whose loss defines accuracy (errors measured in its
            BN mode).
        x: The point ``(n,)``.
        magnitude: Magnitude-aware noise.
        target: Allowed rise of the training error (a fraction: 0.1 = 10 points).
        num_draws: Draws per sigma.
        floor: Noise floor of the magnitude-aware version.
        sigma_min: Lower end of the search (returned if even it breaks the target).
        sigma_max: Upper end (returned if it never breaks the target).
        steps: Bisection steps.
        seed: Seed of the draws.

    Returns:
        :class:`FlatnessResult`.

    Raises:
        ConfigError: If the objective is not a network objective with accuracy.
    """
    obj = require_network(objective, "PAC-Bayesian flatness")
    if not obj.has_accuracy:
        raise ConfigError(
            "PAC-Bayesian flatness is defined by the training error: the loss must define accuracy"
        )
    gen = torch.Generator().manual_seed(int(seed))
    x = x.detach()
    draws = [torch.randn(x.shape[0], generator=gen, dtype=x.dtype).to(x.device) for _ in range(num_draws)]

    def mean_error(sigma: float) -> float:
        errs = []
        for xi in draws:
            scale = torch.sqrt(sigma**2 * x * x + floor**2) if magnitude else sigma
            _, acc = obj.loss_and_accuracy(x + scale * xi)
            errs.append(1.0 - acc / 100.0)
        return float(np.mean(errs))

    with CostMeter(obj) as meter:
        _, acc0 = obj.loss_and_accuracy(x)
        err0 = 1.0 - acc0 / 100.0
        lo, hi = math.log(sigma_min), math.log(sigma_max)
        if mean_error(sigma_max) <= err0 + target:
            sigma = sigma_max
        elif mean_error(sigma_min) > err0 + target:
            sigma = sigma_min
        else:
            for _ in range(steps):
                mid = (lo + hi) / 2
                if mean_error(math.exp(mid)) <= err0 + target:
                    lo = mid
                else:
                    hi = mid
            sigma = math.exp(lo)
    return FlatnessResult(
        value=1.0 / sigma**2,
        settings={
            "metric": "pacbayes_flatness",
            "floor": floor,
            "steps": steps,
            "sigma_range": [sigma_min, sigma_max],
            **obj.settings(),
        },
        cost=meter.cost,
        seed=seed,
        sigma=sigma,
        err0=err0,
        magnitude=magnitude,
        target=target,
        num_draws=num_draws,
    )


@dataclass(frozen=True)
class PacBayesParams(MeasureParams):
    """Parameters of ``pacbayes_flatness`` (see :func:`pacbayes_flatness`)."""

    magnitude: bool = False
    target: float = 0.1
    num_draws: int = 4
    floor: float = 1e-3
    sigma_min: float = 1e-4
    sigma_max: float = 1.0
    steps: int = 8
    seed: int = 0

    def validate(self) -> None:
        """Positive sizes and an increasing sigma range."""
        positive("target", self.target)
        positive("num_draws", self.num_draws, integer=True)
        positive("steps", self.steps, integer=True)
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


def _pacbayes(inputs: Inputs, p: PacBayesParams) -> FlatnessResult:
    return pacbayes_flatness(
        inputs.objective,
        inputs.x,
        magnitude=p.magnitude,
        target=p.target,
        num_draws=p.num_draws,
        floor=p.floor,
        sigma_min=p.sigma_min,
        sigma_max=p.sigma_max,
        steps=p.steps,
        seed=p.seed,
    )


register_measure(
    Measure(
        "pacbayes_flatness",
        PacBayesParams,
        _pacbayes,
        "1 / sigma'^2 for the largest Gaussian weight noise that raises training error by <= target",
        needs=Needs(network=True),
        passes=lambda p: (10 * p.num_draws + 1) / 3,
    )
)
