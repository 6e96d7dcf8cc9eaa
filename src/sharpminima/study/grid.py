"""Hyperparameter grids of a correlation study: parsing ``--grid`` and the named presets.

A grid maps :class:`~sharpminima.config.TrainConfig` fields to the values they take; the
study trains every point of the Cartesian product. ``--grid`` accepts either one axis per
flag (``--grid batch_size=256,6000 --grid lr=1e-3,1e-4``) or several in one flag
(``--grid batch_size=256,6000,lr=1e-3,1e-4``): a token with ``=`` starts a new axis and the
tokens after it are more values of that axis.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError

Grid = dict[str, tuple[Any, ...]]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be positive")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


def _optimizer(text: str) -> str:
    from sharpminima.train.optim import OPTIMIZERS

    if text not in OPTIMIZERS:
        raise ValueError(f"is not an optimizer ({', '.join(sorted(OPTIMIZERS))})")
    return text


def _int(text: str) -> int:
    return int(text)


#: Config fields a grid may vary, with the parser of one value.
AXES: dict[str, Callable[[str], Any]] = {
    "batch_size": _positive_int,
    "lr": _positive_float,
    "optimizer": _optimizer,
    "seed": _int,
    "epochs": _positive_int,
    "weight_decay": _nonnegative_float,
    "momentum": _nonnegative_float,
    "adam_eps": _positive_float,
}


def parse_grid(specs: Sequence[str]) -> Grid:
    """Parse ``--grid`` strings into ``{field: values}`` (axes in order of appearance).

    Args:
        specs: Strings such as ``"batch_size=256,6000"`` or ``"lr=1e-3,1e-4,seed=0,1"``.

    Returns:
        The grid; each axis's values in the order given.

    Raises:
        ConfigError: For an empty spec, values before any ``name=``, an unknown field, an
            axis given twice or without values, a value that does not parse, or a value
            repeated on one axis.
    """
    grid: Grid = {}
    for spec in specs:
        tokens = [t.strip() for t in spec.split(",")]
        if not spec.strip() or not tokens[0]:
            raise ConfigError(f"empty --grid entry {spec!r}; write name=v1,v2 (e.g. batch_size=256,6000)")
        if "=" not in tokens[0]:
            raise ConfigError(f"--grid {spec!r} does not start with name=; write e.g. lr=1e-3,1e-4")
        axis: str | None = None
        for token in tokens:
            if "=" in token:
                axis, _, first = (s.strip() for s in token.partition("="))
                if axis not in AXES:
                    raise ConfigError(f"--grid cannot vary {axis!r}; choose from {', '.join(AXES)}")
                if axis in grid:
                    raise ConfigError(f"--grid axis {axis} is given twice; list all its values once")
                grid[axis] = ()
                token = first
            assert axis is not None  # the first token has "=" (checked above)
            if not token:
                raise ConfigError(f"--grid {axis} has an empty value in {spec!r}")
            try:
                value = AXES[axis](token)
            except ValueError as exc:
                why = str(exc) if not str(exc).startswith(("invalid literal", "could not convert")) else (
                    "is not a number"
                )
                raise ConfigError(f"--grid {axis}: {token!r} {why}") from None
            if value in grid[axis]:
                raise ConfigError(f"--grid {axis} lists {token!r} twice")
            grid[axis] += (value,)
    return grid


@dataclass(frozen=True)
class GridPoint:
    """One run of a study: its grid values and full training configuration.

    Attributes:
        hparams: The grid axes' values at this point (``{"batch_size": 256, ...}``).
        config: The training configuration (the base with ``hparams`` applied).
    """

    hparams: dict[str, Any]
    config: TrainConfig


def expand(base: TrainConfig, grid: Mapping[str, Sequence[Any]]) -> list[GridPoint]:
    """Every point of the Cartesian product of ``grid``, applied to ``base``.

    The last axis varies fastest. Config validation (e.g. a batch size larger than the
    training set is caught at training time) is that of :class:`TrainConfig`.

    Args:
        base: Settings shared by every run (net, dataset, epochs, limits...).
        grid: ``{field: values}``, e.g. from :func:`parse_grid`.

    Returns:
        The points, one per run.

    Raises:
        ConfigError: For an empty grid or axis, or a value TrainConfig rejects.
    """
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ConfigError("the grid is empty; give at least one --grid name=v1,v2")
    axes = list(grid)
    points = []
    for values in itertools.product(*(grid[a] for a in axes)):
        hp = dict(zip(axes, values, strict=True))
        points.append(GridPoint(hp, base.replace(**hp)))
    return points


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyPreset:
    """Everything a correlation study does, in one frozen record (written into the report).

    Attributes:
        name: ``quick``, ``full`` or ``custom``.
        net: Network trained at every grid point.
        dataset: Dataset name.
        grid: ``((field, values), ...)`` axes of the grid.
        epochs: Training epochs of every run (fixed budget, ``stop="epochs"``) unless the
            grid varies ``epochs``.
        train_limit: First N training samples used for training (None: all).
        test_limit: First N test samples for the test loss and error (None: all).
        measure_samples: First N training samples every landscape measure averages over.
        chunk_size: Samples per forward pass of a measure (BatchNorm statistics per chunk
            in ``batch`` mode).
        measures: Measure families (see :data:`sharpminima.study.measures.FAMILIES`).
        eps: Box sizes of Keskar sharpness.
        bn_modes: BatchNorm modes of Keskar sharpness.
        max_iters: L-BFGS-B iterations of Keskar and adaptive sharpness.
        subspace_dim: Columns of the random subspace.
        hessian_bn: BatchNorm mode of the Hessian, average and adaptive sharpness.
        hessian_tol: Relative residual tolerance of the top Hessian eigenvalue (Lanczos).
        hessian_max_iters: Lanczos steps at most (None: the method's default).
        trace_probes: Products of the Hessian trace estimator (XTrace, the default).
        average_sigma: Relative noise of average sharpness (Keskar-shaped scale).
        average_draws: Random directions of average sharpness (antithetic).
        adaptive_eps: Relative box size of adaptive sharpness (``|z_i| <= eps |x_i|``).
        noise_examples: Per-example gradients of the gradient noise scale (BN eval mode).
        flatness_draws: Random draws per sigma of the PAC-Bayes flatness search.
        flatness_target: Training-error increase (fraction) that defines sigma'.
        loss_threshold: A run enters the statistics only if its final training
            cross-entropy (eval mode, over its training set) is at most this.
        num_bootstrap: Bootstrap resamples of the confidence intervals.
        level: Confidence level.
        bootstrap_seed: Seed of the resampling.
    """

    name: str
    net: str = "f1"
    dataset: str = "mnist"
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    epochs: int = 20
    train_limit: int | None = None
    test_limit: int | None = None
    measure_samples: int = 10_000
    chunk_size: int = 1000
    measures: tuple[str, ...] = ()
    eps: tuple[float, ...] = (1e-3, 5e-4)
    bn_modes: tuple[str, ...] = ("batch", "eval")
    max_iters: int = 10
    subspace_dim: int = 100
    hessian_bn: str = "batch"
    hessian_tol: float = 1e-3
    hessian_max_iters: int | None = None
    trace_probes: int = 20
    average_sigma: float = 1e-3
    average_draws: int = 16
    adaptive_eps: float = 1e-2
    noise_examples: int = 1000
    flatness_draws: int = 4
    flatness_target: float = 0.1
    loss_threshold: float = 0.01
    num_bootstrap: int = 1000
    level: float = 0.95
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        """Validate what a user can set from the command line."""
        from sharpminima.study.measures import FAMILIES

        bad = [m for m in self.measures if m not in FAMILIES]
        if bad:
            raise ConfigError(f"unknown measure(s) {bad}; choose from {', '.join(FAMILIES)}")
        if not self.measure_samples >= 2:
            raise ConfigError(f"measure samples must be an integer >= 2, got {self.measure_samples}")
        if not self.loss_threshold > 0:
            raise ConfigError(f"the training-loss threshold must be positive, got {self.loss_threshold}")
        for mode in (*self.bn_modes, self.hessian_bn):
            if mode not in ("batch", "eval"):
                raise ConfigError(f"BatchNorm mode must be 'batch' or 'eval', got {mode!r}")

    @property
    def grid_dict(self) -> Grid:
        """The grid as ``{field: values}``."""
        return {k: tuple(v) for k, v in self.grid}

    def base_config(self) -> TrainConfig:
        """The configuration shared by every run of the grid."""
        return TrainConfig(
            net=self.net, dataset=self.dataset, epochs=self.epochs, stop="epochs",
            train_limit=self.train_limit, test_limit=self.test_limit,
        )

    def points(self) -> list[GridPoint]:
        """Every run of the grid."""
        return expand(self.base_config(), self.grid_dict)

    def replace(self, **changes: Any) -> StudyPreset:
        """Return a copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        out = dataclasses.asdict(self)
        out["grid"] = {k: list(v) for k, v in self.grid}
        return out


#: The measures of the quick and full presets (every family).
ALL_MEASURES = (
    "keskar_full", "keskar_random", "hessian_top", "hessian_trace", "average_sharpness",
    "adaptive_sharpness", "pacbayes_flatness", "pacbayes_mag_flatness", "noise_scale",
    "weight_norm", "distance_init", "log_prod_frob", "log_prod_spec", "train_loss", "hparam",
)

#: About 20 minutes on an idle 2-core CPU (estimated from per-run timings on a busy one):
#: F1 on the first 5,000 MNIST training images (tested on all 10,000 test images), Adam at
#: two learning rates, the paper's SB (256) against a large batch (1,000 = 20% of the
#: subset), two seeds: 8 runs of 12 epochs (60 steps for the large batch, 240 for the small).
#: Measures average over the first 500 training images; a run counts if its final training
#: cross-entropy is <= 0.02. About 150 CPU-seconds of measuring per run, over half of it
#: Keskar sharpness (L-BFGS-B on 1.46M parameters).
QUICK = StudyPreset(
    name="quick",
    grid=(("batch_size", (256, 1000)), ("lr", (1e-3, 3e-3)), ("seed", (0, 1))),
    epochs=12,
    train_limit=5_000,
    measure_samples=500,
    chunk_size=500,
    measures=ALL_MEASURES,
    hessian_tol=1e-2,
    hessian_max_iters=20,
    trace_probes=8,
    noise_examples=256,
    loss_threshold=0.02,
)

#: For a GPU (hours): F1 on all 60,000 MNIST images, four batch sizes up to the paper's LB
#: (10%), three learning rates, two optimizers, three seeds (72 runs); measures on 10,000
#: images, 50 trace probes.
FULL = StudyPreset(
    name="full",
    grid=(("batch_size", (128, 512, 2048, 6000)), ("optimizer", ("adam", "sgd")),
          ("lr", (3e-4, 1e-3, 3e-3)), ("seed", (0, 1, 2))),
    epochs=60,
    measure_samples=10_000,
    measures=ALL_MEASURES,
    trace_probes=50,
    noise_examples=2_000,
    flatness_draws=8,
    loss_threshold=0.01,
)

PRESETS = {"quick": QUICK, "full": FULL}


def get_preset(name: str, **changes: Any) -> StudyPreset:
    """Return the named preset with ``changes`` applied (``None`` values are ignored).

    Raises:
        ConfigError: For an unknown preset name or an invalid change.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown study preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)
