"""Which measure predicts the generalization gap? A rank-correlation study over a grid of runs.

``run_study(get_preset("quick"), store=Store("runs"))`` trains (or reuses from the store)
every run of a hyperparameter grid, computes landscape measures and cheap baselines at each
final model, and ranks them by Kendall's tau-b, the granulated tau of Jiang et al. (2020)
and Spearman's rho against the generalization gap, with bootstrap confidence intervals.
From the command line::

    sharpminima study correlation --preset quick --out reports/study-quick     # 2-core CPU
    sharpminima study correlation --preset full --device cuda --out reports/study-full
    sharpminima study correlation --net f1 --train-limit 10000 --grid batch_size=256,6000 \
        --grid lr=1e-3,1e-4 --grid optimizer=adam,sgd --grid seed=0,1 --plan
    sharpminima study report --out reports/study-quick                           # redraw

Modules: :mod:`.correlation` (the statistics), :mod:`.grid` (``--grid`` parsing and the
presets), :mod:`.measures` (what is measured), :mod:`.runner` (training and measuring
through the store), :mod:`.report` (the Markdown/HTML section).
"""

from sharpminima.study.correlation import (
    Correlation,
    Estimate,
    average_ranks,
    correlate,
    granulated_tau,
    kendall_tau,
    spearman_rho,
)
from sharpminima.study.grid import (
    FULL,
    PRESETS,
    QUICK,
    GridPoint,
    StudyPreset,
    expand,
    get_preset,
    parse_grid,
)
from sharpminima.study.runner import plan, run_study

__all__ = [
    "FULL", "PRESETS", "QUICK", "Correlation", "Estimate", "GridPoint", "StudyPreset", "average_ranks",
    "correlate", "expand", "get_preset", "granulated_tau", "kendall_tau", "parse_grid", "plan",
    "run_study", "spearman_rho",
]
