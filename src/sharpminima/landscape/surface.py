"""Filter-normalised random directions and 1-D / 2-D loss surfaces around a point.

Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets",
NeurIPS 2018. A random direction ``d`` is drawn with the shape of every parameter and each
*filter* of it (a row of a Linear weight, an output channel of a convolution: index 0 of a
parameter with two or more dimensions) is rescaled to the norm of the same filter of the
weights, ``d_f <- d_f / ||d_f|| * ||w_f||``, so that plots of networks with different
weight scales are comparable. The surface is then ``f(x0 + a d + b e)`` on a grid, each
point set absolutely from the frozen ``x0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from sharpminima.errors import ConfigError
from sharpminima.landscape.batched import evaluate_points
from sharpminima.landscape.objective import LossFn, Objective, as_objective, objective_settings
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, positive, register_measure
from sharpminima.landscape.results import CostMeter, Result

Normalization = Literal["filter", "layer", "none"]
OneD = Literal["zero", "weights", "filter"]
NORMALIZATIONS = ("filter", "layer", "none")
ONE_D = ("zero", "weights", "filter")


#: The parameter shapes of a flat vector: a network objective (``.shapes``) or a sequence.
ShapeLayout = Any


def _shapes(layout: ShapeLayout, n: int) -> list:
    shapes = list(layout.shapes) if hasattr(layout, "shapes") else list(layout)
    total = sum(math.prod(s) for s in shapes)
    if total != n:
        raise ConfigError(f"the parameter shapes cover {total} entries but x has {n}")
    return shapes


def random_direction(
    x: Tensor,
    layout: ShapeLayout,
    *,
    seed: int,
    normalization: Normalization = "filter",
    one_d: OneD = "zero",
) -> Tensor:
    """Draw a Gaussian direction ``(n,)`` normalised to the weights, as Li et al. do.

    ``normalization``:

    * ``"filter"`` (Li et al.): for every parameter with ``ndim >= 2``, each slice along
      dimension 0 (a Linear row, a conv output filter) gets the norm of the same slice of
      ``x``;
    * ``"layer"``: each such parameter as a whole gets the norm of the parameter;
    * ``"none"``: the raw ``N(0, 1)`` draw (also for 1-D parameters).

    ``one_d`` says what happens to 1-D parameters (biases, BatchNorm scales and shifts)
    under ``"filter"``/``"layer"``: ``"zero"`` (Li et al.'s ``ignore='biasbn'``: not
    perturbed), ``"weights"`` (Li et al.'s default: the direction equals the parameter
    itself) or ``"filter"`` (normalised as one filter, to the parameter's norm).

    Args:
        x: The flat parameter vector ``(n,)`` whose filter norms are matched.
        layout: A network objective, or the parameter shapes in the order of ``x``.
        seed: Seed (``torch.Generator`` on the CPU; the direction does not depend on the
            device).
        normalization: ``"filter"``, ``"layer"`` or ``"none"``.
        one_d: ``"zero"``, ``"weights"`` or ``"filter"``.

    Returns:
        The direction ``(n,)``, dtype and device of ``x``. A filter whose weights are zero
        gets a zero direction.

    Raises:
        ConfigError: For an unknown option or shapes that do not cover ``x``.
    """
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}"
        )
    if one_d not in ONE_D:
        raise ConfigError(f"unknown one_d option {one_d!r}; choose one of {ONE_D}")
    shapes = _shapes(layout, x.numel())
    gen = torch.Generator().manual_seed(int(seed))
    d = torch.randn(x.numel(), generator=gen, dtype=torch.float64)
    if normalization == "none":
        return d.to(device=x.device, dtype=x.dtype)
    w = x.detach().double().cpu()
    out = []
    sizes = [math.prod(s) for s in shapes]
    for shape, db, wb in zip(shapes, d.split(sizes), w.split(sizes), strict=True):
        if len(shape) <= 1:
            if one_d == "zero":
                db = torch.zeros_like(db)
            elif one_d == "weights":
                db = wb.clone()
            else:
                db = db * _ratio(wb.norm(), db.norm())
        elif normalization == "layer":
            db = db * _ratio(wb.norm(), db.norm())
        else:
            d2, w2 = db.view(shape[0], -1), wb.view(shape[0], -1)  # (filters, fan_in...)
            wn, dn = w2.norm(dim=1, keepdim=True), d2.norm(dim=1, keepdim=True)
            db = (d2 * torch.where(dn > 0, wn / dn.clamp_min(1e-300), 0.0)).reshape(-1)
        out.append(db)
    return torch.cat(out).to(device=x.device, dtype=x.dtype)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return num / den if float(den) > 0 else torch.zeros((), dtype=num.dtype)


@dataclass(frozen=True)
class SurfaceResult(Result):
    """Loss (and accuracy) on a 1-D line or 2-D plane through ``x0``.

    Attributes:
        value: ``f(x0)``, the loss at the centre.
        alphas: Coordinates along the first direction ``(A,)``.
        betas: Coordinates along the second direction ``(B,)``; ``None`` for 1-D.
        losses: ``f(x0 + a d [+ b e])``: shape ``(A,)`` or ``(A, B)`` (float64).
        accuracies: Accuracies in percent, same shape, or ``None`` for a plain callable.
    """

    alphas: Tensor | None = field(default=None, repr=False)
    betas: Tensor | None = field(default=None, repr=False)
    losses: Tensor | None = field(default=None, repr=False)
    accuracies: Tensor | None = field(default=None, repr=False)


def _grid(values: Tensor | Sequence[float], name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name} must be a non-empty sequence of finite numbers")
    return t


def _evaluate(obj: Objective, point: Tensor) -> tuple[float, float]:
    metrics = getattr(obj, "loss_and_accuracy", None)
    if callable(metrics):
        return metrics(point)
    return float(obj.loss(point)), math.nan


def loss_surface(
    loss: LossFn | Objective,
    x0: Tensor,
    directions: Sequence[Tensor],
    coords: Sequence[Tensor | Sequence[float]],
    *,
    batched: bool | None = None,
) -> SurfaceResult:
    """``f(x0 + a d)`` on a line or ``f(x0 + a d + b e)`` on a grid of a plane.

    Every point is set absolutely from the frozen ``x0`` (no walking, so no drift and no
    state left in a model). For a network objective the loss and accuracy (where the loss
    defines one) come from one pass per point, in its BatchNorm mode (recorded).

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x0: The centre ``(n,)``.
        directions: One or two directions ``(n,)`` (e.g. from :func:`random_direction`).
        coords: The coordinates along each direction (e.g. ``torch.linspace(-1, 1, 21)``).
        batched: Evaluate several points per forward pass
            (:func:`~sharpminima.landscape.batched.evaluate_points`; None: the faster path
            for the device).

    Returns:
        :class:`SurfaceResult` (``value`` is ``f(x0)``).

    Raises:
        ConfigError: For other than one or two directions, mismatched lengths or shapes, or
            empty or non-finite coordinates.
    """
    if len(directions) not in (1, 2) or len(coords) != len(directions):
        raise ConfigError(
            f"need one or two directions and as many coordinate lists, got {len(directions)} "
            f"and {len(coords)}"
        )
    obj = as_objective(loss, x0)
    base = x0.detach().to(device=obj.device, dtype=obj.dtype)
    dirs = []
    for d in directions:
        if d.shape != base.shape:
            raise ConfigError(f"direction shape {tuple(d.shape)} != x0 shape {tuple(base.shape)}")
        dirs.append(d.detach().to(device=obj.device, dtype=obj.dtype))
    grids = [_grid(c, name) for c, name in zip(coords, ("alphas", "betas"), strict=False)]
    shape = tuple(g.numel() for g in grids)
    losses = torch.empty(shape, dtype=torch.float64)
    accs = torch.empty(shape, dtype=torch.float64)
    indices = torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(-1, len(shape)).tolist()

    def points() -> Iterator[Tensor]:
        for index in indices:
            point = base.clone()
            for g, d, i in zip(grids, dirs, index, strict=True):
                point.add_(d, alpha=float(g[i]))
            yield point

    with CostMeter(obj) as meter:
        loss_values, acc_values = evaluate_points(obj, points(), batched=batched)
        for index, lv, av in zip(indices, loss_values, acc_values, strict=True):
            losses[tuple(index)] = lv
            accs[tuple(index)] = av
        centre = [torch.nonzero(g == 0) for g in grids]
        if all(c.numel() > 0 for c in centre):
            f0 = float(losses[tuple(int(c[0, 0]) for c in centre)])
        else:
            f0, _ = _evaluate(obj, base)
    return SurfaceResult(
        value=f0,
        settings={"measure": f"surface_{len(shape)}d", "shape": list(shape),
                  "dtype": str(obj.dtype), **objective_settings(obj)},
        cost=meter.cost,
        alphas=grids[0],
        betas=grids[1] if len(grids) == 2 else None,
        losses=losses,
        accuracies=accs if bool(getattr(obj, "has_accuracy", False)) else None,
    )


def loss_surface_1d(
    loss: LossFn | Objective,
    x0: Tensor,
    d: Tensor,
    alphas: Tensor | Sequence[float] | None = None,
    *,
    batched: bool | None = None,
) -> SurfaceResult:
    """``f(x0 + a d)`` for ``a`` in ``alphas`` (default ``linspace(-1, 1, 21)``).

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x0: The centre ``(n,)``.
        d: The direction ``(n,)``.
        alphas: Coordinates along ``d``.
        batched: See :func:`loss_surface`.

    Returns:
        :class:`SurfaceResult` with ``losses`` of shape ``(A,)``.
    """
    grid = torch.linspace(-1, 1, 21, dtype=torch.float64) if alphas is None else alphas
    return loss_surface(loss, x0, [d], [grid], batched=batched)


def loss_surface_2d(
    loss: LossFn | Objective,
    x0: Tensor,
    d: Tensor,
    e: Tensor,
    alphas: Tensor | Sequence[float] | None = None,
    betas: Tensor | Sequence[float] | None = None,
    *,
    batched: bool | None = None,
) -> SurfaceResult:
    """``f(x0 + a d + b e)`` on the grid ``alphas x betas`` (default 11 x 11 on [-1, 1]).

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x0: The centre ``(n,)``.
        d: First direction ``(n,)``.
        e: Second direction ``(n,)``.
        alphas: Coordinates along ``d``.
        betas: Coordinates along ``e``.
        batched: See :func:`loss_surface`.

    Returns:
        :class:`SurfaceResult` with ``losses`` of shape ``(A, B)``.
    """
    default = torch.linspace(-1, 1, 11, dtype=torch.float64)
    return loss_surface(
        loss, x0, [d, e],
        [default if alphas is None else alphas, default if betas is None else betas],
        batched=batched,
    )


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class SurfaceParams(MeasureParams):
    """Parameters of ``loss_surface``: filter-normalised random directions around the point.

    Attributes:
        dims: 1 (a line) or 2 (a plane).
        seed: Seed of the first direction (the second uses ``seed + 1``).
        num_points: Points per axis (None: 21 for a line, 11 for a plane).
        radius: The grid spans ``[-radius, radius]`` along each direction.
        normalization: ``"filter"`` (Li et al.), ``"layer"`` or ``"none"``.
    """

    dims: Literal[1, 2] = 1
    seed: int = 0
    num_points: int | None = None
    radius: float = 1.0
    normalization: Literal["filter", "layer", "none"] = "filter"

    def validate(self) -> None:
        """At least two points, a positive radius."""
        if self.num_points is not None and self.num_points < 2:
            raise ConfigError(f"num_points must be at least 2, got {self.num_points}")
        positive("radius", self.radius)


def _surface(inputs: Inputs, p: SurfaceParams) -> SurfaceResult:
    obj, x = inputs.objective, inputs.x
    n = p.num_points if p.num_points is not None else (21 if p.dims == 1 else 11)
    grid = torch.linspace(-p.radius, p.radius, n, dtype=torch.float64)
    d = random_direction(x, obj, seed=p.seed, normalization=p.normalization)
    if p.dims == 1:
        return loss_surface_1d(obj, x, d, grid)
    e = random_direction(x, obj, seed=p.seed + 1, normalization=p.normalization)
    return loss_surface_2d(obj, x, d, e, grid, grid)


register_measure(Measure(
    "loss_surface", SurfaceParams, _surface,
    "Loss (and accuracy) on a line or plane of filter-normalised random directions (Li et al. 2018)",
    aliases=("surface", "loss_surface_1d"), needs=Needs(network=True),
    passes=lambda p: ((p.num_points or 21) if p.dims == 1 else (p.num_points or 11) ** 2) / 3,
))
