"""The measures a correlation study computes at each run's final weights.

Each family expands into one or more :class:`MeasureSpec` (e.g. Keskar sharpness at two
eps and two BatchNorm modes is four measures). A spec names its store ``kind`` and
``params`` (the cache key of the measurement), a rough cost in gradient passes over the
measure samples (only for the progress bar's ETA), and a ``compute`` function of a
:class:`MeasureInput` that returns a landscape :class:`~sharpminima.landscape.Result` or a
dict with ``value`` and ``cost``.

Besides the landscape measures of :mod:`sharpminima.landscape`, the cheap baselines of
Jiang et al. ("Fantastic Generalization Measures and Where to Find Them", ICLR 2020) that
need no parameter count:

* ``log_prod_frob``: ``sum_l log ||W_l||_F^2`` over weight matrices (their "log product of
  Frobenius norms", biases and BatchNorm scales left out);
* ``log_prod_spec``: ``sum_l log ||W_l||_2^2`` (spectral norms);
* ``pacbayes_flatness`` / ``pacbayes_mag_flatness``: ``1 / sigma'^2`` with ``sigma'`` the
  largest noise level at which Gaussian weight noise raises the training error by at most
  ``flatness_target`` (their best-ranked flatness measures; the magnitude-aware one scales
  the noise of weight ``i`` by ``|w_i|`` plus a floor of 1e-3);
* ``train_loss``: the final training cross-entropy;
* ``hparam``: each numeric grid axis itself as a measure (their "canonical ordering"
  reference: does a measure rank the runs better than the batch size alone?).

Path norm is left out: with BatchNorm it is only defined after folding the normalisation
into the weights, which F1's structure would allow but other nets would not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpminima.landscape.objective import ModelObjective
from sharpminima.landscape.results import Cost, CostMeter

#: Every measure family, in report order.
FAMILIES = (
    "keskar_full",
    "keskar_random",
    "hessian_top",
    "hessian_trace",
    "average_sharpness",
    "adaptive_sharpness",
    "pacbayes_flatness",
    "pacbayes_mag_flatness",
    "noise_scale",
    "weight_norm",
    "distance_init",
    "log_prod_frob",
    "log_prod_spec",
    "train_loss",
    "hparam",
)

#: Families that cost (almost) nothing: no pass over data beyond the recorded history.
CHEAP = ("weight_norm", "distance_init", "log_prod_frob", "log_prod_spec", "train_loss", "hparam")


@dataclass
class MeasureInput:
    """What a measure may use: the final model and weights, and objectives on the samples.

    Attributes:
        model: The trained network (never modified).
        x: Its final trainable parameters, flat ``(n,)``.
        x0: Its initial trainable parameters, flat ``(n,)``.
        inputs: The measure samples' inputs.
        targets: Their labels.
        chunk_size: Samples per forward pass.
        final: The run's last-epoch metrics (``train_loss``...).
        hparams: The run's grid point.
    """

    model: nn.Module
    x: Tensor
    x0: Tensor
    inputs: Tensor
    targets: Tensor
    chunk_size: int
    final: dict[str, Any]
    hparams: dict[str, Any]
    _objectives: dict[str, ModelObjective] = field(default_factory=dict)

    def objective(self, bn: str) -> ModelObjective:
        """Mean cross-entropy over the measure samples in BatchNorm mode ``bn`` (a fresh one)."""
        return ModelObjective(self.model, self.inputs, self.targets, bn_mode=bn,  # type: ignore[arg-type]
                              chunk_size=self.chunk_size)


@dataclass(frozen=True)
class MeasureSpec:
    """One measure of the study.

    Attributes:
        name: Unique name in tables and plots (``"keskar full eps=1e-3 BN batch"``).
        family: Its family in :data:`FAMILIES`.
        kind: Store measurement kind.
        params: Settings that identify the stored measurement.
        passes: Rough cost in gradient passes over the measure samples (for the ETA).
        compute: Returns a landscape Result or ``{"value": ..., "cost": {...}}``.
    """

    name: str
    family: str
    kind: str
    params: dict[str, Any]
    passes: float
    compute: Callable[[MeasureInput], Any] = field(repr=False, compare=False)


def _weight_matrices(model: nn.Module) -> list[Tensor]:
    """Weights of linear and convolution layers, as ``(out, in * k * k)`` matrices."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            w = module.weight.detach()
            out.append(w.reshape(w.shape[0], -1).double())
    return out


def _log_prod_norms(model: nn.Module, ord_: str | int) -> dict[str, Any]:
    t0 = time.perf_counter()
    mats = _weight_matrices(model)
    norms = [float(torch.linalg.matrix_norm(w, ord=ord_)) for w in mats]  # type: ignore[arg-type]
    value = float(sum(2 * math.log(v) for v in norms if v > 0))
    return {"value": value, "norms": norms, "num_layers": len(mats),
            "cost": Cost(seconds=time.perf_counter() - t0).to_dict()}


def pacbayes_flatness(
    objective: ModelObjective,
    x: Tensor,
    *,
    magnitude: bool = False,
    target: float = 0.1,
    num_samples: int = 4,
    floor: float = 1e-3,
    sigma_min: float = 1e-4,
    sigma_max: float = 1.0,
    steps: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """``1 / sigma'^2`` with ``sigma'`` the largest noise at which training error rises <= target.

    Jiang et al. (2020), "PAC-Bayesian flatness" measures: ``sigma'`` is the largest
    ``sigma`` with ``E_u[err(x + u)] <= err(x) + target`` (they use ``err(x + u) <= 0.1``
    for models at zero training error, where the two agree), ``u ~ N(0, sigma^2 I)``, or
    magnitude-aware ``u_i ~ N(0, sigma^2 x_i^2 + floor^2)``. The expectation is a mean over
    ``num_samples`` draws; the same draws ``xi`` serve every ``sigma`` (``u = scale * xi``)
    so the search sees a deterministic, nearly monotone function, bisected ``steps`` times
    on ``log sigma`` within ``[sigma_min, sigma_max]``.

    Args:
        objective: Training samples (errors measured in the objective's BN mode).
        x: The point ``(n,)``.
        magnitude: Magnitude-aware noise.
        target: Allowed rise of the training error (a fraction: 0.1 = 10 points).
        num_samples: Draws per sigma.
        floor: Noise floor of the magnitude-aware version.
        sigma_min: Lower end of the search (returned if even it breaks the target).
        sigma_max: Upper end (returned if it never breaks the target).
        steps: Bisection steps.
        seed: Seed of the draws.

    Returns:
        ``{"value": 1 / sigma'^2, "sigma": sigma', "err0": ..., "cost": ...}``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    x = x.detach()
    draws = [torch.randn(x.shape[0], generator=gen, dtype=x.dtype).to(x.device) for _ in range(num_samples)]

    def mean_error(sigma: float) -> float:
        errs = []
        for xi in draws:
            scale = torch.sqrt(sigma**2 * x * x + floor**2) if magnitude else sigma
            _, acc = objective.loss_and_accuracy(x + scale * xi)
            errs.append(1.0 - acc / 100.0)
        return float(np.mean(errs))

    with CostMeter(objective) as meter:
        _, acc0 = objective.loss_and_accuracy(x)
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
    return {"value": 1.0 / sigma**2, "sigma": sigma, "err0": err0, "magnitude": magnitude,
            "target": target, "num_samples": num_samples, "cost": meter.cost.to_dict()}


def _simple(value: float) -> dict[str, Any]:
    return {"value": float(value), "cost": Cost().to_dict()}


def specs(preset: Any, numeric_axes: tuple[str, ...] = ()) -> list[MeasureSpec]:
    """Expand the preset's measure families into :class:`MeasureSpec` objects.

    Args:
        preset: A :class:`~sharpminima.study.grid.StudyPreset`.
        numeric_axes: Numeric grid axes for the ``hparam`` baseline.

    Returns:
        The measures, in :data:`FAMILIES` order.
    """
    from sharpminima.landscape.eigen import hessian_eigenvalues
    from sharpminima.landscape.geometry import (
        adaptive_sharpness,
        average_sharpness,
        gradient_noise_scale,
        parameter_distance,
        weight_norms,
    )
    from sharpminima.landscape.sharpness import keskar_sharpness, random_subspace
    from sharpminima.landscape.trace import hessian_trace

    p = preset
    base = {"samples": p.measure_samples, "chunk_size": p.chunk_size}
    drawn: dict[tuple, Tensor] = {}

    def subspace(x: Tensor) -> Tensor:
        # one U[0,1) subspace (unit-norm columns, seed 0) for every run and setting: drawing
        # a 1.46M x 100 matrix costs seconds, and a shared A makes runs comparable
        key = (x.numel(), x.dtype, x.device)
        if key not in drawn:
            drawn.clear()
            drawn[key] = random_subspace(x.numel(), p.subspace_dim, seed=0, distribution="uniform",
                                         dtype=x.dtype, device=x.device)
        return drawn[key]

    out: list[MeasureSpec] = []
    chosen = set(p.measures)
    for family in FAMILIES:
        if family not in chosen:
            continue
        if family in ("keskar_full", "keskar_random"):
            sub = family.removeprefix("keskar_")
            for bn in p.bn_modes:
                for eps in p.eps:
                    params = base | {"eps": eps, "subspace": sub, "bn_mode": bn, "maxiter": p.maxiter}
                    if sub == "random":
                        params |= {"p": p.subspace_dim, "seed": 0, "distribution": "uniform"}
                    out.append(MeasureSpec(
                        f"keskar {sub} eps={eps:g} BN {bn}", family, "keskar_sharpness", params,
                        p.maxiter + 3,
                        lambda m, eps=eps, bn=bn, sub=sub: keskar_sharpness(
                            m.objective(bn), m.x, eps=eps, maxiter=p.maxiter,
                            A=subspace(m.x) if sub == "random" else None, seed=0),
                    ))
        elif family == "hessian_top":
            params = base | {"bn_mode": p.hessian_bn, "k": 1, "seed": 0, "tol": p.hessian_tol,
                             "max_iters": p.hessian_max_iters}
            out.append(MeasureSpec(
                "Hessian top eigenvalue", family, "hessian_top_eigenvalue", params, 40,
                lambda m: hessian_eigenvalues(m.objective(p.hessian_bn), m.x, k=1, seed=0,
                                              tol=p.hessian_tol, max_iters=p.hessian_max_iters),
            ))
        elif family == "hessian_trace":
            params = base | {"bn_mode": p.hessian_bn, "probes": p.trace_probes, "seed": 0}
            out.append(MeasureSpec(
                "Hessian trace", family, "hessian_trace", params, 2 * p.trace_probes,
                lambda m: hessian_trace(m.objective(p.hessian_bn), m.x, samples=p.trace_probes, seed=0),
            ))
        elif family == "average_sharpness":
            params = base | {"bn_mode": p.hessian_bn, "sigma": p.average_sigma,
                             "num_samples": p.average_samples, "seed": 0}
            out.append(MeasureSpec(
                f"average sharpness sigma={p.average_sigma:g}", family, "average_sharpness", params,
                2 * p.average_samples / 3,
                lambda m: average_sharpness(m.objective(p.hessian_bn), m.x, sigma=p.average_sigma,
                                            num_samples=p.average_samples, seed=0),
            ))
        elif family == "adaptive_sharpness":
            params = base | {"bn_mode": p.hessian_bn, "eps": p.adaptive_eps, "maxiter": p.maxiter}
            out.append(MeasureSpec(
                f"adaptive sharpness eps={p.adaptive_eps:g}", family, "adaptive_sharpness", params,
                p.maxiter + 3,
                lambda m: adaptive_sharpness(m.objective(p.hessian_bn), m.x, eps=p.adaptive_eps,
                                             maxiter=p.maxiter),
            ))
        elif family in ("pacbayes_flatness", "pacbayes_mag_flatness"):
            mag = family == "pacbayes_mag_flatness"
            params = base | {"bn_mode": "eval", "target": p.flatness_target,
                             "num_samples": p.flatness_samples, "magnitude": mag, "seed": 0}
            out.append(MeasureSpec(
                "PAC-Bayes flatness" + (" (magnitude-aware)" if mag else ""), family,
                "pacbayes_flatness", params, (10 * p.flatness_samples + 1) / 3,
                lambda m, mag=mag: pacbayes_flatness(
                    m.objective("eval"), m.x, magnitude=mag, target=p.flatness_target,
                    num_samples=p.flatness_samples),
            ))
        elif family == "noise_scale":
            num = min(p.noise_examples, p.measure_samples)
            params = base | {"bn_mode": "eval", "method": "per_example", "num_examples": num, "seed": 0}
            out.append(MeasureSpec(
                "gradient noise scale", family, "gradient_noise_scale", params,
                3 * num / p.measure_samples,
                lambda m, num=num: gradient_noise_scale(m.objective("eval"), m.x, num_examples=num, seed=0),
            ))
        elif family == "weight_norm":
            out.append(MeasureSpec("weight norm", family, "weight_norm", {}, 0,
                                   lambda m: weight_norms(m.x)))
        elif family == "distance_init":
            out.append(MeasureSpec("distance from init", family, "distance_from_init", {}, 0,
                                   lambda m: parameter_distance(m.x, m.x0)))
        elif family == "log_prod_frob":
            out.append(MeasureSpec("log prod Frobenius^2", family, "log_prod_frobenius", {}, 0,
                                   lambda m: _log_prod_norms(m.model, "fro")))
        elif family == "log_prod_spec":
            out.append(MeasureSpec("log prod spectral^2", family, "log_prod_spectral", {}, 0,
                                   lambda m: _log_prod_norms(m.model, 2)))
        elif family == "train_loss":
            out.append(MeasureSpec("final train loss", family, "", {}, 0,
                                   lambda m: _simple(m.final.get("train_loss", math.nan))))
        elif family == "hparam":
            for axis in numeric_axes:
                out.append(MeasureSpec(f"hparam: {axis}", family, "", {}, 0,
                                       lambda m, axis=axis: _simple(m.hparams[axis])))
    return out
