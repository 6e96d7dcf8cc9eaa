"""Other measures of loss-landscape geometry beside Keskar sharpness.

* :func:`average_sharpness`: the expected loss increase under random Gaussian perturbations
  (Monte-Carlo, with a standard error).
* :func:`adaptive_sharpness`: the worst-case increase over a box scaled by ``|x|``
  (scale-invariant under the reparametrisations of Dinh et al. 2017; Kwon et al. 2021,
  Andriushchenko et al. 2023), maximised with the same L-BFGS-B machinery as Keskar's.
* :func:`gradient_noise_scale`: McCandlish et al.'s ``B_simple = tr(Sigma) / |G|^2``
  ("An Empirical Model of Large-Batch Training", 2018), from per-example gradients or from
  gradients at two batch sizes (their Appendix A), with jackknife standard errors.
* :func:`parameter_distance`, :func:`distance_ratio`, :func:`weight_norms`: Euclidean
  distances and norms of flat parameter vectors, in total and per layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from sharpminima.errors import ConfigError
from sharpminima.landscape.batched import evaluate_points
from sharpminima.landscape.objective import (
    LossFn,
    ModelObjective,
    Objective,
    as_objective,
    bn_mode,
)
from sharpminima.landscape.results import Cost, CostMeter, Result
from sharpminima.landscape.sharpness import (
    BoxSearch,
    Driver,
    SharpnessResult,
    _check_common,
    _objective_settings,
    _resolve_driver,
    _result_fields,
    run_lbfgsb,
)

PerturbationScale = Literal["keskar", "adaptive", "absolute"]
NoiseMethod = Literal["per_example", "two_batch"]
SCALES = ("keskar", "adaptive", "absolute")
NOISE_METHODS = ("per_example", "two_batch")


# ---------------------------------------------------------------------------------------
# Average-case sharpness
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AverageSharpnessResult(Result):
    """Monte-Carlo estimate of ``E[f(x + z)] - f(x)``.

    Attributes:
        value: The estimated mean loss increase.
        stderr: Its standard error (standard deviation of the independent terms over the
            square root of their number).
        f0: ``f(x)``.
        relative: ``100 * value / (1 + f0)`` (Keskar's normalisation).
        num_samples: Random directions drawn (each costs two evaluations if antithetic).
        samples: The independent terms averaged (one per direction).
    """

    stderr: float = math.nan
    f0: float = math.nan
    relative: float = math.nan
    num_samples: int = 0
    samples: tuple[float, ...] = field(default=(), repr=False)


def _scale(x: Tensor, scale: str, eta: float) -> Tensor:
    if scale == "keskar":
        return x.abs() + 1.0
    if scale == "adaptive":
        return x.abs() + eta
    return torch.ones_like(x)


def average_sharpness(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    sigma: float = 1e-3,
    scale: PerturbationScale = "keskar",
    eta: float = 0.0,
    num_samples: int = 32,
    antithetic: bool = True,
    seed: int = 0,
    batched: bool | None = None,
) -> AverageSharpnessResult:
    """Average-case sharpness: the expected loss increase under Gaussian noise.

    ``z = sigma * s * xi`` with ``xi ~ N(0, I_n)`` and the per-parameter scale ``s``:
    ``"keskar"``: ``s_i = |x_i| + 1`` (the shape of Keskar's box); ``"adaptive"``:
    ``s_i = |x_i| + eta`` (scale-invariant for ``eta = 0``); ``"absolute"``: ``s_i = 1``.
    The estimate of ``E[f(x + z)] - f(x)`` averages ``f(x + z_k) - f(x)``, or with
    ``antithetic`` (default) ``(f(x + z_k) + f(x - z_k)) / 2 - f(x)``, which cancels the
    odd terms of the Taylor expansion (the gradient term) exactly and so reduces the
    variance without changing the mean. For ``f`` quadratic with Hessian ``H`` the mean is
    ``sigma^2 tr(H S^2) / 2``, ``S = diag(s)``.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point ``(n,)``.
        sigma: Relative noise level (``> 0``).
        scale: ``"keskar"``, ``"adaptive"`` or ``"absolute"``.
        eta: Offset of the adaptive scale (``>= 0``).
        num_samples: Random directions (``>= 2``).
        antithetic: Evaluate ``x - z`` as well as ``x + z``.
        seed: Seed of the directions (``torch.Generator`` on the CPU).
        batched: Evaluate several perturbed points per forward pass
            (:func:`~sharpminima.landscape.batched.evaluate_points`; None: the faster path
            for the device).

    Returns:
        :class:`AverageSharpnessResult`.

    Raises:
        ConfigError: For a nonpositive sigma, unknown scale, negative eta or fewer than two
            samples.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be a positive finite number, got {sigma!r}")
    if scale not in SCALES:
        raise ConfigError(f"unknown perturbation scale {scale!r}; choose one of {SCALES}")
    if not eta >= 0:
        raise ConfigError(f"eta must be nonnegative, got {eta!r}")
    if not (isinstance(num_samples, int) and num_samples >= 2):
        raise ConfigError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    obj = as_objective(loss, x)
    x = x.detach().to(device=obj.device, dtype=obj.dtype)
    gen = torch.Generator().manual_seed(int(seed))
    with CostMeter(obj) as meter:
        s = sigma * _scale(x, scale, eta)  # (n,)

        def points() -> Iterator[Tensor]:  # x, then the directions in the same order as ever
            yield x
            for _ in range(num_samples):
                z = s * torch.randn(x.shape[0], generator=gen, dtype=x.dtype).to(x.device)
                yield x + z
                if antithetic:
                    yield x - z

        # f0 comes from the same evaluation path as the perturbed values: the increases are
        # ~1e-6 of the loss, so mixing float32- and float64-accumulated values would bias them
        f0, *values = evaluate_points(obj, points(), batched=batched)[0]
        if antithetic:
            terms = [(up + down) / 2 - f0 for up, down in zip(values[::2], values[1::2], strict=True)]
        else:
            terms = [up - f0 for up in values]
    t = np.asarray(terms)
    mean = float(t.mean())
    return AverageSharpnessResult(
        value=mean,
        settings={"metric": "average", "sigma": sigma, "scale": scale,
                  "eta": eta if scale == "adaptive" else None, "antithetic": antithetic,
                  "num_samples": num_samples, "dtype": str(obj.dtype),
                  **_objective_settings(obj)},
        cost=meter.cost,
        seed=seed,
        stderr=float(t.std(ddof=1) / math.sqrt(t.size)),
        f0=f0,
        relative=100.0 * mean / (1.0 + f0),
        num_samples=num_samples,
        samples=tuple(float(v) for v in t),
    )


# ---------------------------------------------------------------------------------------
# Adaptive (worst-case) sharpness
# ---------------------------------------------------------------------------------------


def adaptive_sharpness(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    eps: float = 1e-3,
    eta: float = 0.0,
    maxiter: int = 10,
    maxcor: int = 10,
    ftol: float = 0.0,
    gtol: float = 0.0,
    driver: Driver = "auto",
) -> SharpnessResult:
    """Adaptive worst-case sharpness: ``max_{|z_i| <= eps (|x_i| + eta)} f(x + z) - f(x)``.

    The elementwise l-infinity version of the adaptive sharpness of Kwon et al. (ASAM,
    2021, who use ``eta = 0.01`` and an l2 ball) and Andriushchenko et al. (2023, ``eta =
    0``). With ``eta = 0`` it is invariant under rescalings of the weights that leave the
    function unchanged (Dinh et al. 2017), which Keskar's ``+1`` is not; parameters that are
    exactly zero are then not perturbed. The maximum is computed as in
    :func:`~sharpminima.landscape.sharpness.keskar_sharpness` (``maxiter`` L-BFGS-B
    iterations from ``z = 0``; the best point evaluated; never below ``f(x)``).

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point ``(n,)``.
        eps: Relative box size.
        eta: Offset added to ``|x_i|`` (``>= 0``).
        maxiter: L-BFGS-B iterations.
        maxcor: L-BFGS-B memory.
        ftol: L-BFGS-B relative-reduction tolerance (0: off).
        gtol: L-BFGS-B projected-gradient tolerance (0: off).
        driver: L-BFGS-B driver (see ``keskar_sharpness``).

    Returns:
        :class:`~sharpminima.landscape.sharpness.SharpnessResult` with
        ``value = fmax - f0`` (unnormalised; ``relative_increase`` gives Keskar's scaling).

    Raises:
        ConfigError: For nonpositive eps or maxiter, negative eta, an unknown driver or a
            loss that is not finite in the box.
    """
    _check_common(eps, maxiter)
    if not eta >= 0:
        raise ConfigError(f"eta must be nonnegative, got {eta!r}")
    drv = _resolve_driver(driver)
    obj = as_objective(loss, x)
    x = x.detach().to(device=obj.device, dtype=obj.dtype)
    with CostMeter(obj) as meter:
        halfwidth = (eps * (x.detach().double().abs() + eta)).cpu().numpy()
        search = BoxSearch(obj, x, None, halfwidth)
        y0 = np.zeros(search.dim)
        f0, _ = search.value_and_grad(y0)
        run = run_lbfgsb(search, y0, maxiter=maxiter, maxcor=maxcor, ftol=ftol, gtol=gtol,
                         driver=drv)
    fields = _result_fields(search, f0)
    return SharpnessResult(
        value=fields["fmax"] - f0,
        settings={"metric": "adaptive", "eps": float(eps), "eta": float(eta), "space": "full",
                  "p": obj.dim, "maxiter": maxiter, "maxcor": maxcor, "ftol": ftol,
                  "gtol": gtol, "optimizer": "L-BFGS-B", "driver": drv,
                  "dtype": str(obj.dtype), **_objective_settings(obj)},
        cost=meter.cost,
        converged=run.success,
        final_f=run.final_f,
        num_iters=run.num_iters,
        message=run.message,
        **fields,
    )


# ---------------------------------------------------------------------------------------
# Gradient noise scale
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseScaleResult(Result):
    """The simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2``.

    ``Sigma`` is the covariance of per-example gradients and ``G`` their mean (the true
    gradient); ``B_simple`` is about the batch size at which the gradient's noise equals
    its signal (McCandlish et al. 2018).

    Attributes:
        value: ``B_simple`` (the ratio of the two estimates below).
        stderr: Jackknife standard error of ``value``.
        trace_cov: Unbiased estimate of ``tr(Sigma)``.
        trace_cov_stderr: Its jackknife standard error.
        grad_norm_sq: Unbiased estimate of ``|G|^2``.
        grad_norm_sq_stderr: Its jackknife standard error.
        method: ``"per_example"`` or ``"two_batch"``.
        num_examples: Per-example gradients computed, or samples drawn into batches.
        data_passes: Samples processed over the objective's ``N`` (gradient passes).
    """

    stderr: float = math.nan
    trace_cov: float = math.nan
    trace_cov_stderr: float = math.nan
    grad_norm_sq: float = math.nan
    grad_norm_sq_stderr: float = math.nan
    method: str = ""
    num_examples: int = 0
    data_passes: float = 0.0


def _jackknife(estimates: np.ndarray) -> float:
    """Jackknife standard error from the ``K`` delete-one estimates."""
    k = estimates.size
    return float(math.sqrt((k - 1) / k * np.sum((estimates - estimates.mean()) ** 2)))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _per_example_sums(
    obj: ModelObjective, x: Tensor, idx: Tensor, num_groups: int, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group ``k``: the Gram matrix of the gradient sums ``S_k``, ``sum ||g_i||^2``, counts."""
    params = obj.unflatten(x)
    model = obj.model

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return obj.loss_fn(functional_call(model, p, (xi[None],)), yi[None])

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    groups = torch.tensor_split(idx, num_groups)
    sums = torch.zeros(num_groups, obj.dim, dtype=torch.float64, device=obj.device)
    sq = np.zeros(num_groups)
    with bn_mode(model, "eval"):
        for k, gidx in enumerate(groups):
            for s in range(0, gidx.numel(), chunk):
                sel = gidx[s : s + chunk]
                xb = obj.inputs[sel].to(obj.device)
                yb = obj.targets[sel].to(obj.device)
                g = per_example(params, xb, yb)
                flat = torch.cat([g[n].reshape(sel.numel(), -1) for n in obj.names], 1)  # (b, n)
                flat = flat.double()
                sums[k] += flat.sum(0)
                sq[k] += float((flat * flat).sum())
    gram = (sums @ sums.T).cpu().numpy()  # (K, K)
    counts = np.array([g.numel() for g in groups], dtype=np.float64)
    return gram, sq, counts


def _per_example_estimates(
    gram: np.ndarray, sq: np.ndarray, counts: np.ndarray, keep: np.ndarray
) -> tuple[float, float]:
    """``(tr Sigma, |G|^2)`` from the groups in ``keep`` (a boolean mask)."""
    m = counts[keep].sum()
    w = keep.astype(np.float64)
    mean_sq = float(w @ gram @ w) / m**2  # ||g_bar||^2
    trace = (sq[keep].sum() - m * mean_sq) / (m - 1)
    return trace, mean_sq - trace / m


def gradient_noise_scale(
    objective: ModelObjective,
    x: Tensor | None = None,
    *,
    method: NoiseMethod = "per_example",
    num_examples: int | None = None,
    num_groups: int = 10,
    chunk_size: int = 64,
    batch_small: int = 64,
    batch_big: int = 1024,
    num_repeats: int = 20,
    seed: int = 0,
) -> NoiseScaleResult:
    """McCandlish et al.'s simple noise scale ``B_simple = tr(Sigma) / |G|^2`` at ``x``.

    The objective's ``N`` samples are treated as i.i.d. draws from the data distribution;
    ``Sigma`` and ``G`` are the covariance and mean of the per-example gradient
    ``grad loss(x; a_i, b_i)``.

    * ``"per_example"``: per-example gradients (``torch.func.vmap(grad)``) of
      ``num_examples`` samples drawn without replacement (all if ``None``), split into
      ``num_groups`` groups. With ``M`` samples, mean ``g_bar``:
      ``tr(Sigma) ~ T = (sum ||g_i||^2 - M ||g_bar||^2) / (M - 1)`` (unbiased) and
      ``|G|^2 ~ ||g_bar||^2 - T / M`` (unbiased). Standard errors: delete-one-group
      jackknife. BatchNorm must use running statistics (an ``"eval"`` objective): with
      batch statistics a per-example gradient is not defined.
    * ``"two_batch"`` (McCandlish et al., Appendix A): ``num_repeats`` times, gradients
      ``G_s``, ``G_b`` of the mean loss over batches of ``batch_small`` and ``batch_big``
      samples drawn with replacement (so that ``E|G_B|^2 = |G|^2 + tr(Sigma) / B`` exactly);
      ``|G|^2 ~ (B_b |G_b|^2 - B_s |G_s|^2) / (B_b - B_s)`` and
      ``tr(Sigma) ~ (|G_s|^2 - |G_b|^2) / (1/B_s - 1/B_b)``, each averaged over repeats
      before the ratio is taken; jackknife over repeats. In ``"batch"`` BN mode each batch's
      gradient is that of the batch-statistics loss (computed in chunks of the objective's
      ``chunk_size``), so the estimate describes that function.

    The ratio of unbiased estimates is not itself unbiased; its bias is
    ``O(stderr^2)`` relative.

    Args:
        objective: A :class:`ModelObjective` (model, data, loss function, BN mode).
        x: The point (defaults to the model's current parameters).
        method: ``"per_example"`` or ``"two_batch"``.
        num_examples: Per-example method: samples used (``None``: all ``N``).
        num_groups: Per-example method: jackknife groups (``>= 2``).
        chunk_size: Per-example method: examples per vectorised call (memory is
            ``chunk_size * n`` floats).
        batch_small: Two-batch method: the small batch size.
        batch_big: Two-batch method: the big batch size (``> batch_small``).
        num_repeats: Two-batch method: pairs of batches (``>= 2``).
        seed: Seed of the sample and batch draws.

    Returns:
        :class:`NoiseScaleResult`.

    Raises:
        ConfigError: If ``objective`` is not a ModelObjective, for an unknown method, sizes
            out of range, or per-example gradients of a BatchNorm model in ``"batch"`` mode.
    """
    if not isinstance(objective, ModelObjective):
        raise ConfigError(
            "the gradient noise scale needs a ModelObjective (a model and per-sample data), "
            f"got {type(objective).__name__}"
        )
    if method not in NOISE_METHODS:
        raise ConfigError(f"unknown noise-scale method {method!r}; choose one of {NOISE_METHODS}")
    obj = objective
    x = (obj.base_point() if x is None else x).detach().to(device=obj.device, dtype=obj.dtype)
    as_objective(obj, x)  # shape check
    n_data = obj.num_samples
    gen = torch.Generator().manual_seed(int(seed))
    settings: dict[str, Any] = {"metric": "gradient_noise_scale", "method": method,
                                "dtype": str(obj.dtype), **obj.settings()}
    if method == "per_example":
        m = n_data if num_examples is None else num_examples
        if not (isinstance(num_groups, int) and 2 <= num_groups <= m <= n_data):
            raise ConfigError(
                f"need 2 <= num_groups <= num_examples <= N = {n_data}, got num_groups="
                f"{num_groups!r}, num_examples={num_examples!r}"
            )
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size}")
        if obj.bn_mode == "batch" and _has_batchnorm(obj.model):
            raise ConfigError(
                "per-example gradients of a BatchNorm model need running statistics: use an "
                "objective with bn_mode='eval', or method='two_batch'"
            )
        idx = torch.randperm(n_data, generator=gen)[:m]
        with CostMeter(obj) as meter:
            gram, sq, counts = _per_example_sums(obj, x, idx, num_groups, chunk_size)
            every = np.ones(num_groups, dtype=bool)
            trace, gsq = _per_example_estimates(gram, sq, counts, every)
            loo = []
            for j in range(num_groups):
                keep = every.copy()
                keep[j] = False
                loo.append(_per_example_estimates(gram, sq, counts, keep))
        settings.update(num_examples=m, num_groups=num_groups, chunk_size=chunk_size,
                        sampling="without replacement", stderr="jackknife over groups")
        processed = m
    else:
        if not (isinstance(batch_small, int) and 1 <= batch_small < batch_big):
            raise ConfigError(
                f"need 1 <= batch_small < batch_big, got {batch_small!r} and {batch_big!r}"
            )
        if not (isinstance(num_repeats, int) and num_repeats >= 2):
            raise ConfigError(f"num_repeats must be an integer >= 2, got {num_repeats!r}")
        small_sq, big_sq = [], []
        with CostMeter(obj) as meter:
            for _ in range(num_repeats):
                for size, out in ((batch_small, small_sq), (batch_big, big_sq)):
                    sel = torch.randint(0, n_data, (size,), generator=gen)
                    sub = ModelObjective(
                        obj.model, obj.inputs[sel], obj.targets[sel], bn_mode=obj.bn_mode,
                        chunk_size=obj.chunk_size, loss_fn=obj.loss_fn,
                    )
                    _, g = sub.loss_and_grad(x)
                    out.append(float(g.double().square().sum()))
            gs, gb = np.asarray(small_sq), np.asarray(big_sq)
            gsq_r = (batch_big * gb - batch_small * gs) / (batch_big - batch_small)
            tr_r = (gs - gb) / (1.0 / batch_small - 1.0 / batch_big)
            trace, gsq = float(tr_r.mean()), float(gsq_r.mean())
            mask = ~np.eye(num_repeats, dtype=bool)
            loo = [(float(tr_r[keep].mean()), float(gsq_r[keep].mean())) for keep in mask]
        settings.update(batch_small=batch_small, batch_big=batch_big, num_repeats=num_repeats,
                        sampling="with replacement", stderr="jackknife over repeats")
        processed = num_repeats * (batch_small + batch_big)
    loo_arr = np.asarray(loo)  # (K, 2): trace, |G|^2 without group k
    cost = meter.cost
    if method == "two_batch":
        cost = Cost(cost.num_loss, 2 * num_repeats, cost.num_hvp, cost.seconds)
    return NoiseScaleResult(
        value=trace / gsq,
        settings=settings,
        cost=cost,
        seed=seed,
        stderr=_jackknife(loo_arr[:, 0] / loo_arr[:, 1]),
        trace_cov=trace,
        trace_cov_stderr=_jackknife(loo_arr[:, 0]),
        grad_norm_sq=gsq,
        grad_norm_sq_stderr=_jackknife(loo_arr[:, 1]),
        method=method,
        num_examples=processed,
        data_passes=processed / n_data,
    )


# ---------------------------------------------------------------------------------------
# Distances and norms
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormResult(Result):
    """A Euclidean norm of a flat vector, in total and per layer.

    Attributes:
        value: The total norm.
        relative: ``value`` over the reference norm (``||x0||`` for a distance; NaN for a
            plain norm).
        per_layer: Norm of each named parameter's block (empty without a layout).
    """

    relative: float = math.nan
    per_layer: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DistanceRatioResult(Result):
    """``||x_a - x0|| / ||x_b - x0||`` (Keskar et al.: ``||x_SB - x0|| / ||x_LB - x0||``).

    Attributes:
        value: The ratio.
        distance_a: ``||x_a - x0||``.
        distance_b: ``||x_b - x0||``.
    """

    distance_a: float = math.nan
    distance_b: float = math.nan


Layout = ModelObjective | nn.Module | Sequence[tuple[str, int]]


def _layout(layout: Layout | None, n: int) -> list[tuple[str, int]]:
    if layout is None:
        return []
    if isinstance(layout, ModelObjective):
        pairs = list(zip(layout.names, layout.numels, strict=True))
    elif isinstance(layout, nn.Module):
        pairs = [(k, p.numel()) for k, p in layout.named_parameters() if p.requires_grad]
    else:
        pairs = [(str(k), int(v)) for k, v in layout]
    if sum(v for _, v in pairs) != n:
        raise ConfigError(
            f"the layout covers {sum(v for _, v in pairs)} parameters but the vector has {n}"
        )
    return pairs


def _per_layer(v: Tensor, pairs: list[tuple[str, int]]) -> dict[str, float]:
    if not pairs:
        return {}
    blocks = torch.split(v, [k for _, k in pairs])
    return {name: float(b.double().norm()) for (name, _), b in zip(pairs, blocks, strict=True)}


def _check_vectors(*vs: Tensor) -> None:
    if any(v.ndim != 1 for v in vs) or len({v.numel() for v in vs}) != 1:
        raise ConfigError(
            "parameter vectors must be 1-D and of equal length, got shapes "
            f"{[tuple(v.shape) for v in vs]}"
        )


def weight_norms(x: Tensor, layout: Layout | None = None) -> NormResult:
    """``||x||_2`` in total and per layer.

    Args:
        x: Flat parameter vector ``(n,)``.
        layout: Names and sizes of the blocks of ``x``: a ModelObjective, the model, or a
            sequence of ``(name, numel)``; ``None`` for the total only.

    Returns:
        :class:`NormResult` (``relative`` is NaN).

    Raises:
        ConfigError: If ``x`` is not 1-D or the layout does not cover it.
    """
    _check_vectors(x)
    pairs = _layout(layout, x.numel())
    return NormResult(value=float(x.detach().double().norm()), settings={"norm": "l2"},
                      per_layer=_per_layer(x.detach(), pairs))


def parameter_distance(x: Tensor, x0: Tensor, layout: Layout | None = None) -> NormResult:
    """``||x - x0||_2`` in total and per layer, and relative to ``||x0||``.

    Args:
        x: Flat parameter vector ``(n,)``.
        x0: Reference vector ``(n,)`` (e.g. the initial weights).
        layout: As in :func:`weight_norms`.

    Returns:
        :class:`NormResult` with ``relative = ||x - x0|| / ||x0||``.

    Raises:
        ConfigError: If the vectors are not 1-D of equal length or the layout does not fit.
    """
    _check_vectors(x, x0)
    pairs = _layout(layout, x.numel())
    d = x.detach().double() - x0.detach().double()
    dist = float(d.norm())
    ref = float(x0.detach().double().norm())
    return NormResult(value=dist, settings={"norm": "l2"},
                      relative=dist / ref if ref > 0 else math.inf,
                      per_layer=_per_layer(d, pairs))


def distance_ratio(x_a: Tensor, x_b: Tensor, x0: Tensor) -> DistanceRatioResult:
    """``||x_a - x0|| / ||x_b - x0||``; Keskar et al. report 3 to 10 for ``(x_SB, x_LB)``.

    Args:
        x_a: First endpoint (the paper: small-batch solution).
        x_b: Second endpoint (the paper: large-batch solution).
        x0: Common starting point.

    Returns:
        :class:`DistanceRatioResult`.

    Raises:
        ConfigError: If the vectors are not 1-D of equal length.
    """
    _check_vectors(x_a, x_b, x0)
    da = float((x_a.detach().double() - x0.detach().double()).norm())
    db = float((x_b.detach().double() - x0.detach().double()).norm())
    return DistanceRatioResult(value=da / db if db > 0 else math.inf, settings={"norm": "l2"},
                               distance_a=da, distance_b=db)
