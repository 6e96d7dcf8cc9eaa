"""The gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al. 2018).

"An Empirical Model of Large-Batch Training": from per-example gradients or from gradients
at two batch sizes (their Appendix A), with jackknife standard errors. It needs per-sample
data: a network objective that can give per-example gradients
(``per_example_gradients``) or sub-objectives over drawn samples (``subset``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import Objective, as_objective, require_network
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, positive, register_measure
from sharpminima.landscape.results import Cost, CostMeter, Result

NoiseMethod = Literal["per_example", "two_batch"]
NOISE_METHODS = ("per_example", "two_batch")


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
    obj: Any, x: Tensor, idx: Tensor, num_groups: int, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group ``k``: the Gram matrix of the gradient sums ``S_k``, ``sum ||g_i||^2``, counts."""
    groups = torch.tensor_split(idx, num_groups)
    sums = torch.zeros(num_groups, obj.dim, dtype=torch.float64, device=obj.device)
    sq = np.zeros(num_groups)
    for k, gidx in enumerate(groups):
        for s in range(0, gidx.numel(), chunk):
            flat = obj.per_example_gradients(x, gidx[s : s + chunk]).double()  # (b, n)
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
    objective: Objective,
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
        objective: A network objective with per-sample data (``per_example_gradients`` for
            ``"per_example"``, ``subset`` for ``"two_batch"``), e.g. a
            :class:`~sharpminima.landscape.model_objective.ModelObjective`.
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
        ConfigError: If ``objective`` is not a network objective with per-sample data, for
            an unknown method, sizes out of range, or per-example gradients of a BatchNorm
            model in ``"batch"`` mode.
    """
    obj = require_network(objective, "the gradient noise scale")
    need = "per_example_gradients" if method == "per_example" else "subset"
    if method in NOISE_METHODS and not callable(getattr(obj, need, None)):
        raise ConfigError(
            f"the gradient noise scale ({method}) needs per-sample data on this process "
            f"({need}); a {type(obj).__name__} has none (measure it on one process)"
        )
    if method not in NOISE_METHODS:
        raise ConfigError(f"unknown noise-scale method {method!r}; choose one of {NOISE_METHODS}")
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
                    _, g = obj.subset(sel).loss_and_grad(x)
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


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class NoiseParams(MeasureParams):
    """Parameters of ``gradient_noise_scale`` (see :func:`gradient_noise_scale`).

    Attributes:
        method: ``"per_example"`` or ``"two_batch"``.
        num_examples: Per-example: samples drawn (None: all).
        num_groups: Per-example: jackknife groups.
        per_call: Per-example: examples per vectorised call.
        batch_small: Two-batch: the small batch.
        batch_big: Two-batch: the big batch.
        num_repeats: Two-batch: pairs of batches.
        seed: Seed of the draws.
    """

    method: Literal["per_example", "two_batch"] = "per_example"
    num_examples: int | None = None
    num_groups: int = 10
    per_call: int = 64
    batch_small: int = 64
    batch_big: int = 1024
    num_repeats: int = 20
    seed: int = 0

    def validate(self) -> None:
        """Positive sizes."""
        for name in ("num_examples", "num_groups", "per_call", "batch_small", "batch_big", "num_repeats"):
            positive(name, getattr(self, name), integer=True)

    def canonical(self) -> dict[str, Any]:
        """Only the chosen method's settings matter."""
        out = dataclasses.asdict(self)
        if self.method == "per_example":
            out.update(batch_small=None, batch_big=None, num_repeats=None)
        else:
            out.update(num_examples=None, num_groups=None, per_call=None)
        return out


def _noise(inputs: Inputs, p: NoiseParams) -> NoiseScaleResult:
    return gradient_noise_scale(
        inputs.objective, inputs.x, method=p.method, num_examples=p.num_examples, num_groups=p.num_groups,
        chunk_size=p.per_call, batch_small=p.batch_small, batch_big=p.batch_big, num_repeats=p.num_repeats,
        seed=p.seed,
    )


register_measure(Measure(
    "gradient_noise_scale", NoiseParams, _noise,
    "McCandlish et al.'s B_simple = tr(Sigma) / |G|^2 from per-example or two-batch gradients",
    aliases=("noise-scale", "noise_scale"), needs=Needs(network=True),
    bn_mode=lambda p: "eval" if p.method == "per_example" else None,
    passes=lambda p: 3.0 * (p.num_examples or 1000) / 1000,
))
