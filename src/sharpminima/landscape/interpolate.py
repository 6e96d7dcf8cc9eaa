"""Loss and accuracy along the path between two solutions (Keskar et al. Fig. 3 and 7).

Goodfellow, Vinyals, Saxe (2015) style 1-D plots. With ``x_a`` the small-batch and ``x_b``
the large-batch solution, as in the paper:

* ``"linear"``: ``f((1 - alpha) x_a + alpha x_b)`` (the paper's ``f(alpha x_LB + (1 -
  alpha) x_SB)``, Fig. 3);
* ``"curvilinear"``: ``f(cos(alpha pi/2) x_a + sin(alpha pi/2) x_b)`` (Appendix D, Fig. 7).

``alpha = 0`` and ``alpha = 1`` are always on the grid when they lie in its range (they are
inserted if missing; a popular loss-landscape library never evaluates ``alpha = 0``), and
there the point is *exactly* ``x_a`` or ``x_b``: the coefficients are exact (``cos`` and
``sin`` of multiples of ``pi/2`` are taken as exact 0 and +-1), so the endpoint values are
bit-identical to evaluating the endpoint models themselves.

BatchNorm running statistics are not in the flat parameter vector, so the path must say
what happens to them (``bn``):

* ``"batch"``: batch statistics (the objective evaluated with ``bn_mode="batch"``; Keskar
  et al.'s Keras behaviour); no buffers are involved.
* ``"interpolate"``: the two models' buffers are interpolated along the same path as the
  weights (running variances clipped at 0, which can only happen for ``alpha`` outside
  ``[0, 1]``) and the network is evaluated in eval mode. Needs ``models=(model_a,
  model_b)`` (modules or state dicts). At the endpoints this is each model's own eval-mode
  loss.
* ``"recompute"``: at each point the running statistics are re-estimated from the
  training inputs (``bn_samples`` of them, in batches of ``bn_batch_size``) as a cumulative
  average (``momentum=None``, PyTorch's ``update_bn`` convention: equal weight per batch;
  variances are the batches' unbiased ones), then the network is evaluated in eval mode.

Interpolating running statistics linearly is not the same as re-estimating them at the
interpolated weights: the average of two minima's statistics need not describe the
activations of the averaged weights (``"recompute"`` measures them there). All BN work is
done on a private deep copy of the objective's model: the caller's models are never modified.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.batched import evaluate_points
from sharpminima.landscape.objective import LossFn, Objective, as_objective, is_network, objective_settings
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, register_measure
from sharpminima.landscape.results import Cost, Result

PathKind = Literal["linear", "curvilinear"]
BNHandling = Literal["batch", "interpolate", "recompute"]
PATHS = ("linear", "curvilinear")
BN_CHOICES = ("batch", "interpolate", "recompute")
ModelOrState = nn.Module | Mapping[str, Tensor]


@dataclass(frozen=True)
class InterpolationResult(Result):
    """Loss and accuracy along a path from ``x_a`` (``alpha = 0``) to ``x_b`` (``alpha = 1``).

    Attributes:
        value: The barrier on the training loss: ``max`` over grid points with
            ``0 <= alpha <= 1`` of ``f(alpha)`` minus ``max(f(0), f(1))`` (NaN if the grid
            has no point in ``[0, 1]``).
        alphas: The grid ``(K,)`` (float64, sorted, with 0 and 1 if in range).
        train_loss: Training loss at each alpha ``(K,)``.
        train_acc: Training accuracy in percent, or ``None`` for a plain callable.
        test_loss: Test loss, or ``None`` without a test objective.
        test_acc: Test accuracy in percent, or ``None``.
        path: ``"linear"`` or ``"curvilinear"``.
        bn: ``"batch"``, ``"interpolate"`` or ``"recompute"``.
        num_clamped_var: Running-variance entries clipped at 0 (``bn="interpolate"``).
    """

    alphas: Tensor | None = field(default=None, repr=False)
    train_loss: Tensor | None = field(default=None, repr=False)
    train_acc: Tensor | None = field(default=None, repr=False)
    test_loss: Tensor | None = field(default=None, repr=False)
    test_acc: Tensor | None = field(default=None, repr=False)
    path: str = ""
    bn: str = ""
    num_clamped_var: int = 0

    def at(self, alpha: float) -> dict[str, float | None]:
        """Return the values at the grid point ``alpha`` (which must be on the grid)."""
        assert self.alphas is not None and self.train_loss is not None
        hits = torch.nonzero(self.alphas == alpha)
        if hits.numel() == 0:
            raise ConfigError(f"alpha={alpha} is not on the grid")
        i = int(hits[0, 0])

        def pick(t: Tensor | None) -> float | None:
            return None if t is None else float(t[i])

        return {"train_loss": pick(self.train_loss), "train_acc": pick(self.train_acc),
                "test_loss": pick(self.test_loss), "test_acc": pick(self.test_acc)}


def default_alphas() -> Tensor:
    """The paper's grid: 25 evenly spaced points on ``[-1, 2]`` (0 and 1 among them)."""
    return torch.linspace(-1.0, 2.0, 25, dtype=torch.float64)


def alpha_grid(alpha_min: float, alpha_max: float, num_points: int) -> list[float]:
    """Exactly ``num_points`` values of alpha from ``alpha_min`` to ``alpha_max``, 0 and 1 among them.

    The points are evenly spaced, except that the interior points nearest 0 and 1 move onto
    them when those lie in the range (the two minimizers are always evaluated exactly):
    ``alpha_grid(-1, 2, 5) == [-1.0, 0.0, 0.5, 1.0, 2.0]``.

    Raises:
        ConfigError: If the range is empty or too few points hold its ends and 0 and 1.
    """
    if not (math.isfinite(alpha_min) and math.isfinite(alpha_max) and alpha_max > alpha_min):
        raise ConfigError(f"need alpha_max > alpha_min, got {alpha_min} and {alpha_max}")
    targets = [a for a in (0.0, 1.0) if alpha_min < a < alpha_max]
    need = 2 + len(targets)
    if num_points < need:
        raise ConfigError(f"need at least {need} points to hold {alpha_min:g}, "
                          + "".join(f"{t:g}, " for t in targets) + f"and {alpha_max:g}; got {num_points}")
    lo, hi = float(alpha_min), float(alpha_max)
    grid = [lo + (hi - lo) * k / (num_points - 1) for k in range(num_points)]
    grid[-1] = hi  # no rounding at the end
    fixed = {0, num_points - 1}
    for t in targets:
        i = min((i for i in range(num_points) if i not in fixed), key=lambda i: abs(grid[i] - t))
        grid[i] = t
        fixed.add(i)
    return sorted(grid)


def path_coefficients(alpha: float, path: PathKind) -> tuple[float, float]:
    """``(c_a, c_b)`` with ``point = c_a x_a + c_b x_b``; exact at integer ``alpha``.

    Args:
        alpha: Path coordinate.
        path: ``"linear"`` (``1 - alpha, alpha``) or ``"curvilinear"``
            (``cos(alpha pi/2), sin(alpha pi/2)``).

    Returns:
        The two coefficients as floats.

    Raises:
        ConfigError: For an unknown path.
    """
    if path == "linear":
        return 1.0 - alpha, alpha
    if path == "curvilinear":
        if float(alpha).is_integer():  # cos/sin of multiples of pi/2: exactly 0 or +-1
            k = int(alpha) % 4
            return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[k]
        t = alpha * math.pi / 2
        return math.cos(t), math.sin(t)
    raise ConfigError(f"unknown path {path!r}; choose one of {PATHS}")


def _alpha_grid(alphas: Tensor | Sequence[float] | None) -> tuple[Tensor, list[float]]:
    grid = default_alphas() if alphas is None else torch.as_tensor(alphas, dtype=torch.float64)
    grid = grid.reshape(-1)
    if grid.numel() == 0 or not bool(torch.isfinite(grid).all()):
        raise ConfigError("alphas must be a non-empty sequence of finite numbers")
    lo, hi = float(grid.min()), float(grid.max())
    inserted = [a for a in (0.0, 1.0) if lo <= a <= hi and not bool((grid == a).any())]
    if inserted:
        grid = torch.cat([grid, torch.tensor(inserted, dtype=torch.float64)])
    return torch.unique(grid), inserted  # sorted, duplicates removed


def _buffers_of(source: ModelOrState, names: list[str]) -> dict[str, Tensor]:
    state = dict(source.named_buffers()) if isinstance(source, nn.Module) else dict(source)
    missing = [n for n in names if n not in state]
    if missing:
        raise ConfigError(
            f"a model given for bn='interpolate' lacks the buffers {missing[:3]} of the "
            "objective's model; pass two models (or state dicts) of the same architecture"
        )
    return {n: state[n].detach() for n in names}


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recompute_bn_statistics(
    objective: Any,
    model: nn.Module,
    x: Tensor,
    inputs: Any = None,
    batch_size: int | None = None,
    *,
    num_samples: int | None = None,
) -> int:
    """Re-estimate ``model``'s BatchNorm running statistics at parameters ``x``, in place.

    ``model`` must be a private copy of the objective's network (this mutates its
    buffers). Running statistics are reset and re-accumulated as a cumulative average over
    the objective's training batches (``momentum=None``); only BatchNorm modules are in
    training mode (dropout stays off). The parameters come from ``x``.

    Args:
        objective: A network objective (gives the data, the loss's forward pass and the
            parameter layout).
        model: The private copy whose buffers are re-estimated.
        x: Flat parameters ``(n,)``.
        inputs: Other data to estimate from (tensors with their targets' place taken by
            the objective's; None: the objective's own data).
        batch_size: Samples per forward pass (in-memory data; None: the data's batches).
        num_samples: Use only the first samples.

    Returns:
        The number of forward passes.

    Raises:
        ConfigError: If the objective cannot re-estimate statistics (no per-sample data).
    """
    twin = objective.with_model(model, "eval")
    if inputs is not None:
        twin = twin.with_source(inputs, torch.zeros(len(inputs), dtype=torch.long))
    if not callable(getattr(twin, "recompute_bn_statistics", None)):
        raise ConfigError(
            f"bn='recompute' needs the training data on this process; a {type(objective).__name__} "
            "cannot re-estimate BatchNorm statistics"
        )
    return twin.recompute_bn_statistics(x, num_samples=num_samples, batch_size=batch_size)


def interpolate(
    objective_train: LossFn | Objective,
    x_a: Tensor,
    x_b: Tensor,
    *,
    path: PathKind = "linear",
    alphas: Tensor | Sequence[float] | None = None,
    objective_test: LossFn | Objective | None = None,
    bn: BNHandling = "batch",
    models: tuple[ModelOrState, ModelOrState] | None = None,
    bn_samples: int | None = None,
    bn_batch_size: int | None = None,
    batched: bool | None = None,
) -> InterpolationResult:
    """Loss and accuracy on the training (and test) data along a path from ``x_a`` to ``x_b``.

    For a network objective, the objective supplies the model architecture, data, loss
    function and batching; ``bn`` decides the BatchNorm
    statistics (the objective's own ``bn_mode`` is overridden and recorded). For a plain
    callable, ``bn`` must be ``"batch"`` (the callable is evaluated as it is) and no
    accuracy is reported.

    Args:
        objective_train: Training-set objective (or a callable of the flat vector).
        x_a: The point at ``alpha = 0`` (the paper: the small-batch solution).
        x_b: The point at ``alpha = 1`` (the paper: the large-batch solution).
        path: ``"linear"`` or ``"curvilinear"``.
        alphas: The grid (default: 25 points on ``[-1, 2]``); 0 and 1 are added when in
            range.
        objective_test: Test-set objective of the same kind, or ``None``.
        bn: ``"batch"``, ``"interpolate"`` or ``"recompute"`` (see the module docstring).
        models: ``(model_a, model_b)`` or their state dicts, whose buffers are interpolated
            (``bn="interpolate"`` only).
        bn_samples: ``bn="recompute"``: the first ``bn_samples`` training inputs are used
            (all if ``None``).
        bn_batch_size: ``bn="recompute"``: batch size of the re-estimation (default: the
            training objective's chunk size).
        batched: With ``bn="batch"``, evaluate several grid points per forward pass
            (:func:`~sharpminima.landscape.batched.evaluate_points`; None: the faster path
            for the device). The other BN choices set per-point statistics and evaluate
            one point at a time.

    Returns:
        :class:`InterpolationResult`; ``settings`` records the path, BN handling, the
        inserted alphas and the objectives' settings. ``cost.num_loss`` counts evaluations
        (train and test) plus BN re-estimation passes.

    Raises:
        ConfigError: For an unknown path or BN choice, mismatched vectors, a bad grid,
            ``bn`` other than ``"batch"`` without a network objective, ``"interpolate"``
            without ``models`` or with models lacking the buffers, or a test objective of
            another kind.
    """
    if path not in PATHS:
        raise ConfigError(f"unknown path {path!r}; choose one of {PATHS}")
    if bn not in BN_CHOICES:
        raise ConfigError(f"unknown BatchNorm handling {bn!r}; choose one of {BN_CHOICES}")
    if x_a.shape != x_b.shape:
        raise ConfigError(f"x_a and x_b differ in shape: {tuple(x_a.shape)} vs {tuple(x_b.shape)}")
    train = as_objective(objective_train, x_a)
    test = None if objective_test is None else as_objective(objective_test, x_a)
    is_model = is_network(train)
    if test is not None and is_network(test) != is_model:
        raise ConfigError("objective_test must be of the same kind as objective_train")
    if bn != "batch" and not is_model:
        raise ConfigError(f"bn={bn!r} needs network objectives (a model with buffers)")
    if bn == "interpolate" and models is None:
        raise ConfigError("bn='interpolate' needs models=(model_a, model_b) or their state dicts")
    grid, inserted = _alpha_grid(alphas)
    xa = x_a.detach().to(device=train.device, dtype=train.dtype)
    xb = x_b.detach().to(device=train.device, dtype=train.dtype)

    evaluators: list[Any] = [train, test]
    work: nn.Module | None = None
    buf_a: dict[str, Tensor] = {}
    buf_b: dict[str, Tensor] = {}
    if is_model:
        if bn == "batch":
            evaluators = [t.with_bn_mode("batch") if t is not None else None for t in (train, test)]
        else:
            work = copy.deepcopy(train.model)  # type: ignore[attr-defined]
            evaluators = [t.with_model(work, "eval") if t is not None else None for t in (train, test)]
            if bn == "interpolate":
                assert models is not None
                names = [n for n, _ in work.named_buffers()]
                buf_a = _buffers_of(models[0], names)
                buf_b = _buffers_of(models[1], names)
    recompute = None
    if bn == "recompute":
        recompute = getattr(evaluators[0], "recompute_bn_statistics", None)
        if not callable(recompute):
            raise ConfigError(
                f"bn='recompute' needs the training data on this process; a {type(train).__name__} "
                "cannot re-estimate BatchNorm statistics"
            )
        for size in (bn_samples, bn_batch_size):
            if size is not None and not (isinstance(size, int) and size >= 1):
                raise ConfigError("bn_samples and bn_batch_size must be positive integers")

    rows: list[list[float]] = []
    num_clamped = 0
    num_evals = 0
    t0 = time.perf_counter()
    if work is None:  # no per-point BatchNorm state: the points can be evaluated together
        coeffs = [path_coefficients(alpha, path) for alpha in grid.tolist()]
        cols: list[tuple[list[float], list[float]]] = []
        for obj in evaluators:
            if obj is None:
                cols.append(([math.nan] * len(coeffs), [math.nan] * len(coeffs)))
                continue
            cols.append(evaluate_points(obj, (xa * ca + xb * cb for ca, cb in coeffs), batched=batched))
            num_evals += len(coeffs)
        rows = [[cols[0][0][i], cols[0][1][i], cols[1][0][i], cols[1][1][i]] for i in range(len(coeffs))]
    for alpha in grid.tolist() if work is not None else []:
        ca, cb = path_coefficients(alpha, path)
        point = xa * ca + xb * cb  # set absolutely from the two frozen endpoints
        if work is not None and bn == "interpolate":
            with torch.no_grad():
                for name, buf in work.named_buffers():
                    if buf.is_floating_point():
                        val = buf_a[name].to(buf.dtype) * ca + buf_b[name].to(buf.dtype) * cb
                        if name.endswith("running_var"):
                            num_clamped += int((val < 0).sum())
                            val = val.clamp_min(0.0)
                        buf.copy_(val)
                    else:
                        buf.copy_(buf_a[name])
        if recompute is not None:
            recompute(point, num_samples=bn_samples, batch_size=bn_batch_size)
            num_evals += 1
        row = []
        for obj in evaluators:
            if obj is None:
                row += [math.nan, math.nan]
            else:
                row += list(obj.loss_and_accuracy(point))
                num_evals += 1
        rows.append(row)
    seconds = time.perf_counter() - t0

    table = torch.tensor(rows, dtype=torch.float64)  # (K, 4)
    inside = (grid >= 0) & (grid <= 1)
    if bool(inside.any()) and bool((grid == 0).any()) and bool((grid == 1).any()):
        ends = max(float(table[grid == 0, 0][0]), float(table[grid == 1, 0][0]))
        barrier = float(table[inside, 0].max()) - ends
    else:
        barrier = math.nan
    settings: dict[str, Any] = {
        "measure": "interpolation", "path": path, "bn": bn if is_model else None,
        "alphas_inserted": inserted, "num_alphas": int(grid.numel()),
        "train": objective_settings(evaluators[0]),
        "test": objective_settings(evaluators[1]) if evaluators[1] is not None else None,
    }
    if bn == "recompute":
        settings.update(bn_samples=min(bn_samples or train.num_samples, train.num_samples),  # type: ignore[attr-defined]
                        bn_batch_size=bn_batch_size or getattr(train, "chunk_size", None),
                        bn_average="cumulative (momentum=None)")
    return InterpolationResult(
        value=barrier,
        settings=settings,
        cost=Cost(num_loss=num_evals, seconds=seconds),
        alphas=grid,
        train_loss=table[:, 0],
        train_acc=table[:, 1] if is_model and bool(getattr(train, "has_accuracy", False)) else None,
        test_loss=table[:, 2] if test is not None else None,
        test_acc=(table[:, 3] if test is not None and is_model and bool(getattr(test, "has_accuracy", False))
                  else None),
        path=path,
        bn=bn if is_model else "",
        num_clamped_var=num_clamped,
    )


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class InterpolationParams(MeasureParams):
    """Parameters of ``interpolation``: the path from the point to ``other``.

    Attributes:
        path: ``"linear"`` or ``"curvilinear"``.
        num_points: Grid points on ``[alpha_min, alpha_max]`` (0 and 1 are added if missing).
        alpha_min: Start of the grid.
        alpha_max: End of the grid.
        bn_handling: ``"batch"``, ``"interpolate"`` or ``"recompute"`` (module docstring).
        endpoint: The identity of the other end (a run id), part of the key.
    """

    path: Literal["linear", "curvilinear"] = "linear"
    num_points: int = 25
    alpha_min: float = -1.0
    alpha_max: float = 2.0
    bn_handling: Literal["batch", "interpolate", "recompute"] = "batch"
    endpoint: str | None = None

    def validate(self) -> None:
        """At least two points on a non-empty range."""
        if self.num_points < 2 or not self.alpha_max > self.alpha_min:
            raise ConfigError(
                f"need num_points >= 2 and alpha_max > alpha_min, got {self.num_points}, "
                f"[{self.alpha_min}, {self.alpha_max}]"
            )


def _interpolation(inputs: Inputs, p: InterpolationParams) -> InterpolationResult:
    assert inputs.other is not None
    return interpolate(
        inputs.objective, inputs.x, inputs.other, path=p.path,
        alphas=torch.linspace(p.alpha_min, p.alpha_max, p.num_points), objective_test=inputs.test,
        bn=p.bn_handling, models=inputs.models,
    )


register_measure(Measure(
    "interpolation", InterpolationParams, _interpolation,
    "Loss and accuracy on the path from the point to another (Keskar et al. Figures 3 and 7)",
    needs=Needs(other=True), passes=lambda p: p.num_points * 2 / 3,
))
