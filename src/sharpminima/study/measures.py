"""The measures a correlation study computes at each run's final weights.

Each family expands into one or more :class:`StudyMeasure` (Keskar sharpness at two eps
and two BatchNorm modes is four measures), each a registered landscape measure
(:mod:`sharpminima.landscape.registry`) with its parameters and BatchNorm mode, so the
study stores and reuses them under the same keys as ``sharpminima measure`` and
``reproduce``. Besides the landscape measures, the cheap baselines of Jiang et al.
("Fantastic Generalization Measures and Where to Find Them", ICLR 2020) that need no
parameter count: the log products of Frobenius and spectral norms, the PAC-Bayesian
flatness measures, the final training loss, and each numeric grid axis itself (their
"canonical ordering" reference: does a measure rank the runs better than the batch size
alone?).

Path norm is left out: with BatchNorm it is only defined after folding the normalisation
into the weights, which F1's structure would allow but other nets would not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sharpminima.landscape.registry import get_measure

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


@dataclass(frozen=True)
class StudyMeasure:
    """One measure of the study.

    Attributes:
        name: Unique name in tables and plots (``"keskar full eps=1e-3 BN batch"``).
        family: Its family in :data:`FAMILIES`.
        measure: The registered measure's name (empty for values read from the run record:
            the final training loss, a grid axis).
        params: The measure's parameters.
        bn_mode: BatchNorm mode of its objective.
        passes: Rough cost in gradient passes over the measure samples (for the ETA).
        field: For record-derived values: ``"train_loss"`` or ``"hparam:<axis>"``.
    """

    name: str
    family: str
    measure: str
    params: dict[str, Any] = field(default_factory=dict)
    bn_mode: str = "eval"
    passes: float = 0.0
    field: str = ""

    @property
    def kind(self) -> str:
        """The store kind (the registered measure's name)."""
        return self.measure


#: Older name of :class:`StudyMeasure`.
MeasureSpec = StudyMeasure


def _spec(name: str, family: str, measure: str, bn: str, **params: Any) -> StudyMeasure:
    registered = get_measure(measure)
    passes = float(registered.passes(registered.make_params(params)))
    return StudyMeasure(name, family, measure, params, bn, passes)


def specs(preset: Any, numeric_axes: tuple[str, ...] = ()) -> list[StudyMeasure]:
    """Expand the preset's measure families into :class:`StudyMeasure` objects.

    Args:
        preset: A :class:`~sharpminima.study.grid.StudyPreset`.
        numeric_axes: Numeric grid axes for the ``hparam`` baseline.

    Returns:
        The measures, in :data:`FAMILIES` order.
    """
    p = preset
    out: list[StudyMeasure] = []
    chosen = set(p.measures)
    for family in FAMILIES:
        if family not in chosen:
            continue
        if family in ("keskar_full", "keskar_random"):
            sub = family.removeprefix("keskar_")
            extra = {"p": p.subspace_dim, "seed": 0, "distribution": "uniform"} if sub == "random" else {}
            for bn in p.bn_modes:
                for eps in p.eps:
                    out.append(_spec(f"keskar {sub} eps={eps:g} BN {bn}", family, "keskar_sharpness", bn,
                                     eps=eps, subspace=sub, max_iters=p.max_iters, **extra))
        elif family == "hessian_top":
            out.append(_spec("Hessian top eigenvalue", family, "hessian_eigenvalues", p.hessian_bn, k=1,
                             seed=0, tol=p.hessian_tol, max_iters=p.hessian_max_iters))
        elif family == "hessian_trace":
            out.append(_spec("Hessian trace", family, "hessian_trace", p.hessian_bn,
                             num_probes=p.trace_probes, seed=0))
        elif family == "average_sharpness":
            out.append(_spec(f"average sharpness sigma={p.average_sigma:g}", family, "average_sharpness",
                             p.hessian_bn, sigma=p.average_sigma, num_draws=p.average_draws, seed=0))
        elif family == "adaptive_sharpness":
            out.append(_spec(f"adaptive sharpness eps={p.adaptive_eps:g}", family, "adaptive_sharpness",
                             p.hessian_bn, eps=p.adaptive_eps, max_iters=p.max_iters))
        elif family in ("pacbayes_flatness", "pacbayes_mag_flatness"):
            mag = family == "pacbayes_mag_flatness"
            out.append(_spec("PAC-Bayes flatness" + (" (magnitude-aware)" if mag else ""), family,
                             "pacbayes_flatness", "eval", magnitude=mag, target=p.flatness_target,
                             num_draws=p.flatness_draws, seed=0))
        elif family == "noise_scale":
            num = min(p.noise_examples, p.measure_samples)
            out.append(_spec("gradient noise scale", family, "gradient_noise_scale", "eval",
                             num_examples=num, seed=0))
        elif family == "weight_norm":
            out.append(_spec("weight norm", family, "weight_norm", "eval"))
        elif family == "distance_init":
            out.append(_spec("distance from init", family, "distance_from_init", "eval"))
        elif family == "log_prod_frob":
            out.append(_spec("log prod Frobenius^2", family, "log_prod_frobenius", "eval"))
        elif family == "log_prod_spec":
            out.append(_spec("log prod spectral^2", family, "log_prod_spectral", "eval"))
        elif family == "train_loss":
            out.append(StudyMeasure("final train loss", family, "", field="train_loss"))
        elif family == "hparam":
            for axis in numeric_axes:
                out.append(StudyMeasure(f"hparam: {axis}", family, "", field=f"hparam:{axis}"))
    return out
