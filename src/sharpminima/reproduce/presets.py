"""Named reproduction setups: ``quick`` (minutes on a laptop CPU) and ``paper`` (faithful)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from sharpminima.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """Everything a reproduction does, in one frozen record (written into the report).

    Attributes:
        name: ``quick`` or ``paper``.
        nets: Networks to run.
        trials: Seeds per regime (the paper: 5).
        seed: Seed of the first trial; trial ``k`` trains with seed ``seed + k`` (and its
            random sharpness subspace is drawn with that seed).
        stop: ``epochs`` (fixed) or ``plateau`` (until the training loss stops improving).
        sb_epochs: SB epochs (fixed) or cap (plateau).
        lb_epochs: LB epochs (fixed) or cap (plateau).
        patience: Plateau patience in epochs.
        min_improvement: Plateau: relative training-loss decrease that counts.
        train_limit: Use only the first N training samples (None: all).
        sharpness_samples: Training samples the sharpness loss averages over (None: all,
            as in the paper).
        eps: Box sizes of Metric 2.1.
        subspaces: ``full`` (A = I) and/or ``random`` (p columns).
        subspace_dim: p for the random subspace (the paper: 100).
        subspace_distribution: ``uniform`` (U[0,1) columns, unit norm), ``gaussian`` or
            ``uniform-raw`` (U[0,1) entries, not normalised).
        bn_modes: BatchNorm modes for sharpness; the first is the headline (``batch``
            matches the paper's magnitudes; ``eval`` is shown beside it).
        max_iters: L-BFGS-B iterations (the paper: 10).
        chunk_size: Samples per forward pass inside the loss (BN statistics per chunk).
        hessian_samples: Samples for the Hessian view (top eigenvalue and trace).
        trace_probes: Products of the Hessian trace estimator (XTrace, the default).
        interp_points: Points of the parametric plots on [-1, 2].
        interp_samples: Training samples for the parametric plots (test set: all).
        batch_sizes: Figure 4 sweep (empty: skipped).
        sweep_epochs: Epochs per run of the Figure 4 sweep.
        warm_sb_epochs: Figure 5: SB epochs whose iterates are kept (0: skipped).
        warm_points: Figure 5: SB epochs to warm-start LB from.
        warm_lb_epochs: Figure 5: LB epochs after each warm start.
        along_training: Figure 6: measure sharpness along training every k epochs (0: skip).
        experiments: Experiments run by ``reproduce`` without a name.
        dataset: Run every net on this dataset instead of the paper's (e.g. ``synthetic`` for
            smoke tests); None: the paper's, with MNIST standing in for unavailable data.
        remedies: Remedies compared by the ``remedies`` experiment (names in
            :data:`sharpminima.reproduce.remedies.REMEDIES`).
        remedy_trials: Trials per remedy (None: ``trials``).
        warm_epochs: SB epochs before the ``warm-start`` remedy switches to LB.
        lambda_sweep: ``conservative_sweep``: proximal weights ``lambda``.
        inner_iters_sweep: ``conservative_sweep``: inner Adam iterations per step.
        inits: ``init_study``: (scheme, scale) pairs.
        dynamics_every: ``dynamics``: measure every k epochs (plus the first and last).
        dynamics_samples: ``dynamics``: training samples the measures average over.
        noise_examples: ``dynamics``: per-example gradients for the noise scale.
        dynamics_optimizers: ``dynamics``: (optimizer, lr) pairs trained SB and LB.
    """

    name: str
    nets: tuple[str, ...] = ("f1",)
    trials: int = 5
    seed: int = 0
    stop: str = "plateau"
    sb_epochs: int = 100
    lb_epochs: int = 100
    patience: int = 5
    min_improvement: float = 1e-3
    train_limit: int | None = None
    sharpness_samples: int | None = None
    eps: tuple[float, ...] = (1e-3, 5e-4)
    subspaces: tuple[str, ...] = ("full", "random")
    subspace_dim: int = 100
    subspace_distribution: str = "uniform"
    bn_modes: tuple[str, ...] = ("batch", "eval")
    max_iters: int = 10
    chunk_size: int = 1000
    hessian_samples: int = 10_000
    trace_probes: int = 50
    interp_points: int = 25
    interp_samples: int | None = None
    batch_sizes: tuple[int, ...] = ()
    sweep_epochs: int = 100
    warm_sb_epochs: int = 0
    warm_points: tuple[int, ...] = ()
    warm_lb_epochs: int = 100
    along_training: int = 0
    experiments: tuple[str, ...] = ()
    dataset: str | None = None
    remedies: tuple[str, ...] = ()
    remedy_trials: int | None = None
    warm_epochs: int = 2
    lambda_sweep: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    inner_iters_sweep: tuple[int, ...] = (2, 3)
    inits: tuple[tuple[str, float], ...] = (
        ("default", 1.0),
        ("kaiming", 1.0),
        ("xavier", 1.0),
        ("orthogonal", 1.0),
        ("kaiming", 0.5),
        ("kaiming", 2.0),
    )
    dynamics_every: int = 2
    dynamics_samples: int | None = 5_000
    noise_examples: int | None = 1_000
    dynamics_optimizers: tuple[tuple[str, float], ...] = (("adam", 1e-3), ("sgd", 0.05))

    def to_dict(self) -> dict[str, Any]:
        """Return the preset as a JSON-friendly dict."""
        return dataclasses.asdict(self)


ALL_EXPERIMENTS = (
    "table2",
    "sharpness",
    "fig2",
    "fig3",
    "distance",
    "hessian",
    "stopping",
    "bn_test",
    "fig4",
    "fig5",
    "fig6",
)


#: Remedies and methods of the ``remedies`` experiment, in the report's order.
ALL_REMEDIES = (
    "warm-start",
    "conservative",
    "adversarial",
    "grad-noise",
    "iterate-noise",
    "augment",
    "ghost-bn",
    "sam",
    "asam",
    "lr-sqrt",
    "lr-linear",
    "batch-step",
    "batch-linear",
    "batch-exp",
    "batch-increase",
    "batch-adaptive",
    "lars",
    "lamb",
    "sgd-momentum",
    "adagrad",
    "adamw",
)

#: Three trials per regime: with two, the LB/SB sharpness ratio swung from 5.5x to 19.6x
#: between seeds and no interval could be formed; with three, seeds 0, 3 and 6 all gave
#: "LB sharper", "Hessian agrees" and an LB-better accuracy gap (README). About 9.5 minutes
#: on the 2-core CPU.
QUICK = Preset(
    name="quick",
    nets=("f1",),
    trials=3,
    stop="epochs",
    sb_epochs=5,
    lb_epochs=15,
    sharpness_samples=10_000,
    eps=(1e-3,),
    subspaces=("full", "random"),
    bn_modes=("batch", "eval"),
    hessian_samples=5_000,
    trace_probes=20,
    interp_samples=10_000,
    experiments=("table2", "sharpness", "fig2", "fig3", "distance", "hessian", "stopping", "bn_test"),
)

PAPER = Preset(
    name="paper",
    nets=("f1",),
    trials=5,
    stop="plateau",
    sb_epochs=100,
    lb_epochs=100,
    patience=5,
    batch_sizes=(256, 512, 1000, 2000, 4000, 6000, 10_000, 20_000),
    sweep_epochs=100,
    warm_sb_epochs=100,
    warm_points=(0, 1, 2, 5, 10, 20, 50, 100),
    warm_lb_epochs=100,
    along_training=5,
    experiments=ALL_EXPERIMENTS,
    remedies=ALL_REMEDIES,
    warm_epochs=10,
)

#: F1 on MNIST with every remedy (one trial each), the conservative-training sweep, the
#: initialization study and the optimization dynamics; about an hour on the 2-core CPU.
#: The baseline trials are the ``quick`` preset's (with every epoch's weights kept).
REMEDIES = dataclasses.replace(
    QUICK,
    name="remedies",
    remedies=ALL_REMEDIES,
    remedy_trials=1,
    inits=(("default", 1.0), ("kaiming", 1.0), ("xavier", 1.0), ("orthogonal", 1.0), ("default", 0.5)),
    lambda_sweep=(1e-4, 1e-3, 1e-2, 1e-1),
    inner_iters_sweep=(2,),  # with 1 inner step the proximal term is 0: a plain step
    dynamics_every=5,
    experiments=("table2", "remedies", "conservative_sweep", "init_study", "dynamics"),
)

PRESETS = {p.name: p for p in (QUICK, PAPER, REMEDIES)}

#: Older names of preset fields, accepted (with a warning) for one release.
RENAMED_FIELDS = {"maxiter": "max_iters", "trace_samples": "trace_probes"}


def get_preset(name: str, **overrides: Any) -> Preset:
    """Return a named preset with some fields replaced.

    Raises:
        ConfigError: For an unknown preset or field name.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    for old, new in RENAMED_FIELDS.items():
        if old in overrides:
            warnings.warn(f"preset field {old} is deprecated, use {new}", DeprecationWarning, stacklevel=2)
            overrides[new] = overrides.pop(old)
    names = {f.name for f in dataclasses.fields(Preset)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"unknown preset fields {bad}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


#: Preset fields whose values are tuples of pairs: not settable as ``NAME=VALUE``.
_NESTED = frozenset({"inits", "dynamics_optimizers"})


def coerce_overrides(pairs: dict[str, Any]) -> dict[str, Any]:
    """Fit parsed ``NAME=VALUE`` overrides (``reproduce --set``) to the preset fields' types.

    A single value given for a tuple field becomes a 1-tuple; ints given for float fields
    become floats; ``none`` clears an optional field.

    Raises:
        ConfigError: For an unknown field, a nested field, or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    out: dict[str, Any] = {}
    for name, value in pairs.items():
        name = RENAMED_FIELDS.get(name, name)
        if name not in fields or name == "name":
            valid = ", ".join(sorted(set(fields) - {"name"} - _NESTED))
            raise ConfigError(f"unknown preset field {name!r} in --set; valid fields: {valid}")
        if name in _NESTED:
            raise ConfigError(f"preset field {name!r} takes pairs; set it from the Python API")
        default = fields[name].default
        if isinstance(default, tuple):
            items = value if isinstance(value, tuple) else (value,)
            kind = type(default[0]) if default else None
            out[name] = tuple(_coerce(name, v, kind) for v in items)
        elif default is None:
            out[name] = value
        else:
            out[name] = _coerce(name, value, type(default))
    return out


def _coerce(name: str, value: Any, kind: type | None) -> Any:
    if kind is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"preset field {name!r} takes {kind.__name__} values, got {value!r}")
