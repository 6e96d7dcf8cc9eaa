"""Named reproduction setups: ``quick`` (minutes on a laptop CPU) and ``paper`` (faithful)."""

from __future__ import annotations

import dataclasses
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
        subspace_distribution: ``uniform`` (U[0,1) columns, unit norm) or ``gaussian``.
        bn_modes: BatchNorm modes for sharpness; the first is the headline (``batch``
            matches the paper's magnitudes; ``eval`` is shown beside it).
        maxiter: L-BFGS-B iterations (the paper: 10).
        chunk_size: Samples per forward pass inside the loss (BN statistics per chunk).
        hessian_samples: Samples for the Hessian view (top eigenvalue and trace).
        trace_samples: Hutchinson probes.
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
    """

    name: str
    nets: tuple[str, ...] = ("f1",)
    trials: int = 5
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
    maxiter: int = 10
    chunk_size: int = 1000
    hessian_samples: int = 10_000
    trace_samples: int = 50
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
    "fig4",
    "fig5",
    "fig6",
)

QUICK = Preset(
    name="quick",
    nets=("f1",),
    trials=2,
    stop="epochs",
    sb_epochs=5,
    lb_epochs=15,
    sharpness_samples=10_000,
    eps=(1e-3,),
    subspaces=("full", "random"),
    bn_modes=("batch", "eval"),
    hessian_samples=5_000,
    trace_samples=20,
    interp_samples=10_000,
    experiments=("table2", "sharpness", "fig2", "fig3", "distance", "hessian", "stopping"),
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
)

PRESETS = {p.name: p for p in (QUICK, PAPER)}


def get_preset(name: str, **overrides: Any) -> Preset:
    """Return a named preset with some fields replaced.

    Raises:
        ConfigError: For an unknown preset or field name.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(Preset)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ConfigError(f"unknown preset fields {bad}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
