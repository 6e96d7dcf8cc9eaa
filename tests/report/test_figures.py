"""Every figure of the reports, built from small synthetic results and walked through matplotlib's API.

The epsilon study that ``measure --plot`` draws is walked here too; the CLI's own plots are
walked in ``tests/cli``. No pixels are compared: each figure is checked for what a reader
needs (``sm_testing.check_figure``: axis labels with units, a title, a legend wherever there
is more than one series, fonts of at least 8 pt at a two-column paper's widths, no interval
below zero on a log axis, bars only from zero), and the files are checked for their formats
and the PNG for its resolution.
"""

from __future__ import annotations

import inspect
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from sharpminima import figstyle, intervals
from sharpminima.errors import ConfigError, SharpMinimaError
from sharpminima.landscape import epsilon
from sharpminima.report import figures, study_figures, style
from sharpminima.report.build import Doc, write_report
from sharpminima.reproduce import get_preset
from sharpminima.reproduce.presets import ALL_REMEDIES
from sm_testing import (
    check_figure,
    labels_over_the_frame,
    legend_texts,
    outside_the_canvas,
    overlapping_titles,
    png_dpi,
)

# -- synthetic results, shaped as the experiments write them --------------------------------
RNG = np.random.default_rng(0)


def _history(epochs: int, first: float, last: float, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    acc = np.linspace(first, last, epochs) + rng.normal(0, 0.1, epochs)
    return [{"epoch": e + 1, "train_acc": min(100.0, a + 1.0), "test_acc": a,
             "train_loss": 0.5 / (e + 1), "test_loss": 0.6 / (e + 1)} for e, a in enumerate(acc)]


FIG2 = {"sb": [_history(5, 96.0, 98.0, s) for s in range(3)],
        "lb": [_history(9, 70.0, 98.3, s) for s in range(3)]}


def _sharpness_row(subspace: str, bn: str, sb: list[float], lb: list[float]) -> dict[str, Any]:
    return {"subspace": subspace, "eps": 1e-3, "bn_mode": bn,
            "sb": intervals.summary(sb), "lb": intervals.summary(lb), "ratio": intervals.ratio(sb, lb)}


SHARPNESS = [
    _sharpness_row("full", "batch", [22.8, 10.4, 28.6], [413.1, 236.7, 208.4]),
    # spread larger than the mean: a symmetric sd bar would run below zero on the log axis
    _sharpness_row("full", "eval", [0.5, 40.0, 3.0], [900.0, 20.0, 3000.0]),
    _sharpness_row("random", "batch", [0.009], [0.002]),  # one trial: no interval
]

ALPHAS = np.linspace(-1.0, 2.0, 25)
FIG3 = {"alphas": ALPHAS.tolist(), "train_loss": (0.01 + (ALPHAS - 0.5) ** 4).tolist(),
        "test_loss": (0.05 + (ALPHAS - 0.5) ** 4).tolist(),
        "train_acc": (100 - 20 * np.clip(np.abs(ALPHAS - 0.5) - 0.6, 0, None) ** 2).tolist(),
        "test_acc": (98 - 20 * np.clip(np.abs(ALPHAS - 0.5) - 0.6, 0, None) ** 2).tolist()}


def _stopping_rules() -> list[dict[str, Any]]:
    rules = []
    for e_sb in (1, 2, 5):
        for e_lb in (1, 2, 5, 10):
            sb = [96.0 + e_sb * 0.3 + d for d in (0.0, 0.2, -0.1)]
            lb = [98.0 - 30.0 / e_lb**2 + d for d in (0.1, -0.2, 0.3)]
            rules.append({"rule": f"SB {e_sb} ep / LB {e_lb} ep", "sb": intervals.summary(sb),
                          "lb": intervals.summary(lb), "gap": intervals.difference(sb, lb)})
    for patience in (1, 2, 3):
        sb, lb = [97.5, 97.7, 97.6], [97.9 - 0.1 * patience, 98.0, 97.8]
        rules.append({"rule": f"plateau, patience {patience}", "sb": intervals.summary(sb),
                      "lb": intervals.summary(lb), "gap": intervals.difference(sb, lb)})
    rules.append({"rule": "plateau, patience 5", "sb": {"mean": 97.6, "std": 0.1, "n": 3},
                  "lb": {"mean": 97.7, "std": 0.1, "n": 3}, "gap": {"mean": -0.1, "se": 0.05}})  # old results
    return rules


STOPPING = _stopping_rules()
FIG4 = [{"batch_size": b, "test_acc": 98.4 - 0.05 * k, "train_acc": 100.0, "epochs": 20,
         "sharpness": 1.0 * 3**k} for k, b in enumerate((256, 1000, 6000, 20000))]
FIG4.append({"batch_size": 40000, "test_acc": None, "train_acc": None, "epochs": 0})  # a failed run
FIG5 = {"sb_run": "abc", "rows": [{"sb_epochs": k, "test_acc": 98.4 + 0.02 * k, "train_acc": 100.0,
                                   "sharpness": 250.0 / (1 + k**2)} for k in (0, 1, 2, 5, 10)]}
FIG6 = {"sb": [{"epoch": e, "train_loss": 0.1 / e, "sharpness": 5.0 / e} for e in (1, 5, 10)],
        "lb": [{"epoch": e, "train_loss": 0.02 / e, "sharpness": 300.0 + e} for e in (1, 5, 10, 15)]}


def _method(name: str, regime: str, acc: list[float], sharp: list[float]) -> dict[str, Any]:
    return {"name": name, "label": name, "regime": regime, "test_acc": intervals.summary(acc),
            "train_acc": intervals.summary([100.0] * len(acc)),
            "train_loss": intervals.summary([0.01] * len(acc)), "sharpness": intervals.summary(sharp),
            "epochs": [5] * len(acc), "seconds": intervals.summary([20.0] * len(acc)),
            "runs": ["r"] * len(acc), "not_done": []}


REMEDIES = [
    _method("sb", "sb", [97.86, 97.97], [22.7, 10.4]),
    _method("lb", "lb", [98.42, 98.22], [413.0, 236.0]),
    _method("sam", "lb", [98.3], [300.0]),
    _method("sam", "sb", [98.1], [12.0]),
    {"name": "lars", "label": "LARS", "regime": "lb", "skipped": "needs a GPU"},
]
#: Every method of the catalogue, at LB and (for some) at SB, with values over five decades: the
#: remedies preset's figure, whose long tick labels once pushed the right panel's title off the
#: canvas.
ALL_REMEDY_ROWS = [_method("sb", "sb", [97.86, 97.97, 98.01], [22.7, 10.4, 28.0]),
                   _method("lb", "lb", [98.42, 98.22, 98.24], [413.0, 236.0, 209.0])] + [
    _method(name, regime, [94.4 + 0.2 * k], [0.27 * 1.5**k])
    for k, name in enumerate(ALL_REMEDIES) for regime in (("lb", "sb") if k % 3 == 0 else ("lb",))
]
CONSERVATIVE = {
    "rows": [_method("conservative", "lb", [98.5 + 0.01 * k], [340.0 * (1 + k)]) | {"lambda": lam,
                                                                                 "inner_iters": inner}
             for k, (lam, inner) in enumerate(((1e-4, 2), (1e-3, 2), (1e-2, 2), (1e-3, 3)))],
    "sb": _method("sb", "sb", [97.86, 97.97], [22.7, 10.4]),
    "lb": _method("lb", "lb", [98.42, 98.22], [413.0, 236.0]),
}


def _dynamics_run(optimizer: str, regime: str, batch: int, line: float | None) -> dict[str, Any]:
    return {"run": "r", "optimizer": optimizer, "lr": 1e-3, "regime": regime, "batch_size": batch,
            "status": "done", "stability_line": line,
            "points": [{"epoch": e, "train_loss": 0.1 / e, "test_acc": 97.0, "top_eigenvalue": 2.0 + e,
                        "noise_scale": 400.0 * e, "sharpness": 100.0 / e} for e in (1, 5, 10)]}


DYNAMICS = {f"{opt}/{regime}": _dynamics_run(opt, regime, 256 if regime == "sb" else 6000, line)
            for opt, line in (("adam", None), ("sgd", 40.0)) for regime in ("sb", "lb")}

STUDY_MEASURES = ["keskar full eps=0.001 BN batch", "keskar random eps=0.0005 BN eval",
                  "Hessian top eigenvalue", "Hessian trace", "average sharpness sigma=0.001",
                  "PAC-Bayes flatness (magnitude-aware)",
                  "gradient noise scale", "weight norm", "distance from init", "final train loss",
                  "hparam: batch_size", "hparam: lr"]


def _study_runs() -> list[dict[str, Any]]:
    runs = []
    for k, (b, lr, seed) in enumerate((b, lr, s) for b in (256, 1000) for lr in (1e-3, 3e-3) for s in (0, 1)):
        values = {m: float(abs(RNG.lognormal(0, 2))) for m in STUDY_MEASURES}
        values.update({"hparam: batch_size": float(b), "hparam: lr": lr,
                       "keskar full eps=0.001 BN batch": 10.0**k})  # spans decades: a log axis
        runs.append({"hparams": {"batch_size": b, "lr": lr, "seed": seed}, "converged": k != 3,
                     "gap_error": 5.0 + 0.1 * k, "gap_loss": 0.2 + 0.01 * k,
                     "measures": {m: {"value": v} for m, v in values.items()}})
    return runs


STUDY_RUNS = _study_runs()


def _estimate(value: float | None) -> dict[str, Any]:
    return {"value": value, "low": None if value is None else max(-1.0, value - 0.4),
            "high": None if value is None else min(1.0, value + 0.4)}


CORRELATIONS = [{"measure": m, "gap": gap, "kendall": _estimate(math.sin(k) if k != 2 else None),
                 "granulated_mean": _estimate(math.cos(k))}
                for gap in ("error", "loss") for k, m in enumerate(STUDY_MEASURES)]

#: Every figure the reports build: (name, figure function, arguments).
FIGURES: list[tuple[str, Callable[..., Figure], tuple[Any, ...]]] = [
    ("fig2", figures.accuracy_per_epoch, ("f1", FIG2)),
    ("test_acc", figures.test_accuracy_bands, ("f1", FIG2)),
    ("fig3", figures.parametric, ("f1", FIG3, "linear")),
    ("fig7", figures.parametric, ("f1", FIG3, "curvilinear")),
    ("sharpness", figures.sharpness_by_setting, ("f1", SHARPNESS)),
    ("stopping", figures.stopping_study, ("f1", STOPPING)),
    ("fig4", figures.versus, ("f1", FIG4, "batch_size")),
    ("fig5", figures.versus, ("f1", FIG5["rows"], "sb_epochs")),
    ("fig6", figures.sharpness_vs_loss, ("f1", FIG6)),
    ("remedies", figures.remedy_comparison, ("f1", REMEDIES)),
    ("remedies_all", figures.remedy_comparison, ("f1", ALL_REMEDY_ROWS)),
    ("conservative", figures.conservative_sweep, ("f1", CONSERVATIVE)),
    ("dynamics", figures.dynamics, ("f1", DYNAMICS)),
    ("study_tau_error", study_figures.correlation_bars, (CORRELATIONS, "error")),
    ("study_tau_loss", study_figures.correlation_bars, (CORRELATIONS, "loss")),
]
SCATTERS = [(f"study_scatter_{gap}", gap) for gap in ("error", "loss")]
EPS = (1e-5, 1e-4, 1e-3, 1e-2)
#: An epsilon study as ``measure --what epsilon_study --plot`` draws it (its first point at zero:
#: a sharpness of 0 must not reach the log axis).
EPSILON = epsilon.EpsilonStudyResult(
    value=1.6, eps_values=EPS, sharpness=(0.0, 2e-4, 1.5e-2, 1.1), linear_term=tuple(2 * e for e in EPS),
    quadratic_term=tuple(5e3 * e**2 for e in EPS), bound=tuple(2 * e + 5e3 * e**2 for e in EPS),
    f0=0.3, lambda_max=12.0)
#: Figures drawn outside the reports, in the same figstyle.
OTHER_FIGURES: list[tuple[str, Callable[..., Figure], tuple[Any, ...]]] = [
    ("epsilon_study", epsilon.plot_epsilon_study, (EPSILON,)),
]


def _scatter(gap: str) -> Figure:
    taus = {m: math.sin(k) for k, m in enumerate(STUDY_MEASURES)}
    return study_figures.measure_scatter(STUDY_RUNS, STUDY_MEASURES, gap, color_by="batch_size",
                                         marker_by="lr", taus=taus)


def _all_figures() -> list[tuple[str, Callable[[], Figure]]]:
    built: list[tuple[str, Callable[[], Figure]]] = [
        (name, lambda f=func, a=args: f(*a)) for name, func, args in FIGURES + OTHER_FIGURES
    ]
    return built + [(name, lambda g=gap: _scatter(g)) for name, gap in SCATTERS]


@pytest.mark.parametrize(("name", "build"), _all_figures(), ids=[n for n, _ in _all_figures()])
def test_figure_is_labelled_for_a_paper(name: str, build: Callable[[], Figure]) -> None:
    check_figure(build())


def test_every_figure_function_is_walked() -> None:
    tested = {func.__name__ for _, func, _ in FIGURES + OTHER_FIGURES} | {"measure_scatter"}
    for module in (figures, study_figures, epsilon):
        for name, func in inspect.getmembers(module, inspect.isfunction):
            if func.__module__ == module.__name__ and not name.startswith("_"):
                if inspect.signature(func).return_annotation in ("Figure", Figure):
                    assert name in tested, f"{module.__name__}.{name} builds a figure no test walks"


def test_sharpness_intervals_are_geometric_and_positive() -> None:
    fig = figures.sharpness_by_setting("f1", SHARPNESS)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "Keskar sharpness (%)"
    center, lo, hi = figures.center_and_interval([0.5, 40.0, 3.0], log=True)
    assert center == pytest.approx((0.5 * 40.0 * 3.0) ** (1 / 3))
    assert 0 < lo < center < hi  # the arithmetic mean +- sd would give 14.5 - 21.8 < 0
    assert figures.center_and_interval([7.0], log=True) == (pytest.approx(7.0), None, None)


def test_center_and_interval_needs_a_value() -> None:
    with pytest.raises(ValueError, match="none is positive"):
        figures.center_and_interval([0.0, -1.0], log=True)
    with pytest.raises(ValueError, match="no value to summarise"):
        figures.center_and_interval([], log=False)


def test_stopping_study_is_a_heat_map_of_sb_by_lb_epochs() -> None:
    fig = figures.stopping_study("f1", STOPPING)
    heat = next(ax for ax in fig.axes if ax.images)
    assert heat.images[0].get_array().shape == (3, 4)  # SB {1, 2, 5} x LB {1, 2, 5, 10}
    assert [t.get_text() for t in heat.get_xticklabels()] == ["1", "2", "5", "10"]
    assert "SB" in heat.get_ylabel() and "LB" in heat.get_xlabel()
    # the colour scale is not stretched by the cells where LB barely trained
    norm = heat.images[0].norm
    assert norm.vmax < max(abs(r["gap"]["mean"]) for r in STOPPING)
    plateau = next(ax for ax in fig.axes if ax is not heat and ax.get_label() != "<colorbar>")
    assert [t.get_text() for t in plateau.get_yticklabels()] == ["1", "2", "3", "5"]


def test_twin_axes_figures_have_one_legend_for_both_axes() -> None:
    for fig in (figures.versus("f1", FIG4, "batch_size"), figures.parametric("f1", FIG3, "linear")):
        texts = legend_texts(fig)
        assert {"test accuracy"} <= texts or {"train loss", "train accuracy"} <= texts
        assert fig.axes[0].get_title().startswith("F1: ")


def test_parametric_names_its_ends_and_keeps_run_ids_as_given() -> None:
    fig = figures.parametric("f1: 3f2a9c -> 77be01", FIG3, "linear", ends=("B=256", "B=6000"))
    ax = fig.axes[0]
    assert "3f2a9c" in ax.get_title() and "B=256" in ax.get_xlabel() and "B=6000" in ax.get_xlabel()


def test_dynamics_legend_tells_optimizers_and_regimes_apart() -> None:
    fig = figures.dynamics("f1", DYNAMICS)
    assert len(fig.legends) == 1
    styles = {}
    for line in fig.axes[0].lines:
        if not line.get_label().startswith("_"):
            styles[line.get_label()] = (line.get_color(), line.get_linestyle(), line.get_marker())
    assert len(set(styles.values())) == len(styles) == 4
    assert "SGD stability line 2(1+β)/lr" in legend_texts(fig)


def test_accuracy_is_drawn_as_points_not_bars() -> None:
    fig = figures.remedy_comparison("f1", REMEDIES)
    assert not any(isinstance(c, BarContainer) for ax in fig.axes for c in ax.containers)
    assert fig.axes[1].get_xscale() == "log"


def test_fig6_epoch_labels_stay_inside_the_axes() -> None:
    # the published F1 run: LB's sharpness flat at the top of the axes, so its labels above
    # the points ran over the frame, and SB's last point near the left edge, labelled leftwards
    along = {"sb": [{"epoch": 10, "train_loss": 0.0119, "sharpness": 8.79},
                    {"epoch": 20, "train_loss": 0.00350, "sharpness": 0.298},
                    {"epoch": 25, "train_loss": 0.00486, "sharpness": 0.563}],
             "lb": [{"epoch": 10 * (k + 1), "train_loss": loss, "sharpness": s} for k, (loss, s) in enumerate(
                 [(1.86e-3, 389.0), (3.04e-4, 268.0), (1.63e-4, 360.0), (1.04e-4, 373.0), (7.26e-5, 357.0),
                  (5.47e-5, 225.0), (4.23e-5, 388.0), (3.37e-5, 352.0), (2.77e-5, 394.0), (2.31e-5, 404.0)])]}
    for data in (along, FIG6):
        fig = figures.sharpness_vs_loss("f1", data)
        assert sum(t.get_text().startswith("epoch") for t in fig.axes[0].texts) == 4
        figstyle.fit_titles(fig)
        assert not labels_over_the_frame(fig)


def test_labels_over_the_frame_sees_drawn_labels_only() -> None:
    fig, ax = figstyle.new_figure()
    ax.plot([0, 4], [0, 4])
    ax.set(xlim=(0, 4), ylim=(0, 4))
    ax.annotate("hidden", (10, 10))  # its point is out of view: matplotlib does not draw it
    ax.annotate("inside", (2, 2))
    assert labels_over_the_frame(fig) == []
    ax.annotate("a long label at the right edge", (3.9, 2))
    assert [m.split(" spans")[0] for m in labels_over_the_frame(fig)] == ["'a long label at the right edge'"]


def test_fig6_labels_a_lone_point_once_and_tolerates_missing_epochs() -> None:
    fig = figures.sharpness_vs_loss("f1", {"sb": [{"epoch": 3, "train_loss": 0.1, "sharpness": 2.0}],
                                           "lb": [{"train_loss": 0.01, "sharpness": 300.0}]})
    assert [t.get_text() for t in fig.axes[0].texts] == ["epoch 3"]


# -- files ------------------------------------------------------------------------------------
def test_save_figure_writes_each_format_atomically(tmp_path: Path) -> None:
    fig = figures.sharpness_vs_loss("f1", FIG6)
    png = figstyle.save_figure(fig, tmp_path / "fig6_f1", ("png", "pdf", "svg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig6_f1.pdf", "fig6_f1.png", "fig6_f1.svg"]
    assert (tmp_path / "fig6_f1.png").read_bytes() == png and png_dpi(png) >= 200
    assert (tmp_path / "fig6_f1.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "fig6_f1.svg").read_bytes()[:2000]
    width_px = struct.unpack(">I", png[16:20])[0]
    assert width_px == round(figstyle.SINGLE_COLUMN * figstyle.PNG_DPI)
    # reproducible vector files: the same figure gives the same bytes
    again = tmp_path / "again"
    figstyle.save_figure(figures.sharpness_vs_loss("f1", FIG6), again / "fig6_f1", ("pdf", "svg"))
    for fmt in ("pdf", "svg"):
        assert (again / f"fig6_f1.{fmt}").read_bytes() == (tmp_path / f"fig6_f1.{fmt}").read_bytes()


def test_save_figure_reports_a_folder_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SharpMinimaError, match="cannot write the figure"):
        figstyle.save_figure(figures.sharpness_vs_loss("f1", FIG6), blocker / "fig6", ("png",))


def test_save_figure_as_writes_the_format_its_suffix_names(tmp_path: Path) -> None:
    fig = epsilon.plot_epsilon_study(EPSILON)
    for name, magic in (("eps.png", b"\x89PNG"), ("eps.PDF", b"%PDF"), ("sub/eps.svg", b"<?xml")):
        path = figstyle.save_figure_as(fig, tmp_path / name, "--plot")
        assert path == tmp_path / name and path.read_bytes().startswith(magic)
    assert png_dpi((tmp_path / "eps.png").read_bytes()) >= 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eps.PDF", "eps.png", "sub"]  # no temporaries
    with pytest.raises(ConfigError, match=r"--plot must end in .png, .pdf or .svg, got .*eps\.jpg"):
        figstyle.save_figure_as(fig, tmp_path / "eps.jpg", "--plot")
    assert not (tmp_path / "eps.jpg").exists()


def test_report_style_is_the_figure_style_under_its_former_name() -> None:
    assert style.save_figure is figstyle.save_figure and style.RC is figstyle.RC
    assert set(style.__all__) == set(figstyle.__all__)


def _png_width(data: bytes) -> int:
    return struct.unpack(">I", data[16:20])[0]  # IHDR, the first chunk


@figstyle.styled
def _titled(title: str) -> Figure:
    fig, ax = figstyle.new_figure()
    ax.plot([1, 2], [3, 4])
    ax.set_title(title)
    return fig


def test_a_title_wider_than_the_figure_is_not_cut_off_in_the_file() -> None:
    nominal = round(figstyle.SINGLE_COLUMN * figstyle.PNG_DPI)
    fits = _titled("short")
    assert not outside_the_canvas(fits) and not figstyle.runs_off_the_canvas(fits)
    assert _png_width(figstyle.render(fits, "png")) == nominal  # a figure that fits keeps its width
    long = _titled("run_0123456789abcdef_a_title_far_wider_than_one_column_of_a_two_column_paper")
    assert outside_the_canvas(long) and figstyle.runs_off_the_canvas(long)  # no space to break at
    assert _png_width(figstyle.render(long, "png")) > nominal + 0.5 * figstyle.PNG_DPI
    assert figstyle.render(long, "pdf").startswith(b"%PDF")


@figstyle.styled
def _fitted(title: str, *, suptitle: bool = False) -> tuple[Figure, str]:
    fig, axes = figstyle.new_figure(figstyle.DOUBLE_COLUMN, 2.6, 1, 2) if suptitle else figstyle.new_figure()
    ax = axes[0] if suptitle else axes
    ax.plot([1, 2], [3, 4])
    ax.set_xlabel("x (samples)")
    ax.set_ylabel("y (samples)")
    title = fig.suptitle(title) if suptitle else ax.set_title(title)
    figstyle.fit_titles(fig)
    return fig, title.get_text()


@pytest.mark.parametrize("suptitle", [False, True])
def test_fit_titles_breaks_a_long_title_at_spaces_so_that_it_fits(suptitle: bool) -> None:
    words = "runs/0123456789ab and runs/ba9876543210: loss and accuracy along the linear path between them"
    long = words * 2 if suptitle else words
    fig, text = _fitted(long, suptitle=suptitle)
    assert "\n" in text and text.replace("\n", " ") == long  # broken at spaces, nothing lost
    assert not outside_the_canvas(fig)
    assert _png_width(figstyle.render(fig, "png")) == round(fig.get_size_inches()[0] * figstyle.PNG_DPI)
    fig, text = _fitted("F1: short\n(a second line)", suptitle=suptitle)
    assert text == "F1: short\n(a second line)"  # a title that fits is left alone
    term = r"f(\alpha\,x_{B=200} + (1-\alpha)\,x_{B=50})"
    math = "$" + " + ".join([term] * (8 if suptitle else 2)) + "$"
    fig, text = _fitted(math, suptitle=suptitle)
    assert text == math  # mathtext is never split; the tight box holds it instead
    assert _png_width(figstyle.render(fig, "png")) > round(fig.get_size_inches()[0] * figstyle.PNG_DPI)


@figstyle.styled
def _three_panels() -> Figure:
    fig, axes = figstyle.new_figure(figstyle.DOUBLE_COLUMN, 2.6, 1, 3)
    for k, ax in enumerate(axes):
        ax.plot([1, 2], [3, 4 + k])
        ax.set(xlabel="x (samples)", ylabel="y (samples)")
    axes[1].set_title("a middle title far wider than its own panel, which would print over both neighbours")
    fig.suptitle("runs/0123456789ab against runs/ba9876543210 " * 3)
    return fig


def test_fitted_figures_render_the_same_bytes_every_time() -> None:
    fig = _three_panels()
    first = {fmt: figstyle.render(fig, fmt) for fmt in ("svg", "pdf")}
    for fmt in ("svg", "pdf"):
        assert figstyle.render(fig, fmt) == first[fmt]  # rendering again changes nothing
        assert figstyle.render(_three_panels(), fmt) == first[fmt]  # nor does a fresh figure
    assert not overlapping_titles(fig) and not outside_the_canvas(fig)


def test_render_rejects_an_unknown_format() -> None:
    with pytest.raises(ConfigError, match="unknown figure format 'jpg'"):
        figstyle.render(figures.sharpness_vs_loss("f1", FIG6), "jpg")


def test_parse_figure_formats() -> None:
    assert figstyle.parse_figure_formats("png, PDF,svg,png") == ("png", "pdf", "svg")
    assert figstyle.parse_figure_formats(["svg", "pdf,.png"]) == ("svg", "pdf", "png")
    with pytest.raises(ConfigError, match="unknown figure format 'jpg'"):
        figstyle.parse_figure_formats("png,jpg")
    with pytest.raises(ConfigError, match="no figure format given"):
        figstyle.parse_figure_formats(" , ")


@given(st.text(max_size=30))
def test_parse_figure_formats_gives_formats_or_our_error(text: str) -> None:
    try:
        formats = figstyle.parse_figure_formats(text)
    except ConfigError:
        return
    assert formats and set(formats) <= set(figstyle.FIGURE_FORMATS)


def _results() -> dict[str, Any]:
    return {"preset": get_preset("quick").to_dict(), "experiments": {
        "fig2": {"f1": FIG2}, "sharpness": {"f1": SHARPNESS}, "fig3": {"f1": {"linear": FIG3}},
        "stopping": {"f1": STOPPING}, "fig4": {"f1": FIG4}, "fig5": {"f1": FIG5}, "fig6": {"f1": FIG6},
    }}


def test_report_writes_every_figure_in_every_format(tmp_path: Path) -> None:
    md, page = write_report(tmp_path, _results(), ("png", "pdf", "svg"))
    names = ["fig2_f1", "sharpness_f1", "fig3_f1", "stopping_f1", "test_acc_f1", "fig4_f1", "fig5_f1",
             "fig6_f1"]
    for name in names:
        for fmt in ("png", "pdf", "svg"):
            assert (tmp_path / f"{name}.{fmt}").stat().st_size > 1000, f"{name}.{fmt}"
        assert png_dpi((tmp_path / f"{name}.png").read_bytes()) >= 200
        assert f"({name}.png)" in md.read_text() and f"[PDF]({name}.pdf)" in md.read_text()
        assert f"href='{name}.svg'" in page.read_text()
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_report_with_only_vector_figures_links_them(tmp_path: Path) -> None:
    md, page = write_report(tmp_path, _results(), ("svg",))
    assert not list(tmp_path.glob("*.png")) and (tmp_path / "fig2_f1.svg").exists()
    assert "(fig2_f1.svg)" in md.read_text() and "data:image/png;base64," in page.read_text()


def test_doc_defaults_to_every_format(tmp_path: Path) -> None:
    doc = Doc(tmp_path)
    doc.fig(figures.sharpness_vs_loss("f1", FIG6), "fig6_f1", "caption")
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".svg"}


# -- the command line -------------------------------------------------------------------------
def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from sharpminima.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("command", [["report"], ["study", "report"], ["reproduce", "table2"]])
def test_figure_format_is_checked_before_any_work(capsys, tmp_path: Path, command: list[str]) -> None:
    # the folder holds no results: a command that read them first would complain about that instead
    code, err = _run_cli(capsys, *command, "--out", str(tmp_path / "none"), "--figure-format", "png,jpg")
    assert code == 2 and "unknown figure format 'jpg'" in err
    assert not (tmp_path / "none").exists()


def test_figure_format_help_states_the_png_resolution_written() -> None:
    from sharpminima.cli.reproduce_cmd import FigureFormatOpt

    help_text = FigureFormatOpt.__metadata__[0].help
    assert f"png ({figstyle.PNG_DPI} dpi" in help_text and figstyle.PNG_DPI >= 200


def test_report_command_writes_the_formats_asked_for(capsys, tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    code, _ = _run_cli(capsys, "report", "--out", str(tmp_path), "--figure-format", "pdf")
    assert code == 0
    assert (tmp_path / "fig2_f1.pdf").exists() and not (tmp_path / "fig2_f1.png").exists()


def _bad_sharpness_bars() -> Figure:
    """The old drawing: symmetric sd bars on a log axis."""
    fig, ax = figstyle.new_figure()
    ax.bar([0, 1], [10.0, 300.0], yerr=[15.0, 50.0], label="SB")
    ax.set_yscale("log")
    ax.set(xlabel="setting", ylabel="Keskar sharpness (%)", title="F1")
    ax.legend()
    return fig


def _bad_accuracy_bars() -> Figure:
    fig, ax = figstyle.new_figure()
    ax.bar([0, 1], [3.0, 4.0], bottom=94.0)
    ax.set(xlabel="method", ylabel="test accuracy (%)", title="F1", ylim=(94, 99))
    return fig


def _bad_twin_axes() -> Figure:
    fig, ax = figstyle.new_figure()
    ax.plot([1, 2], [98.0, 97.0], label="test accuracy")
    ax.set(xlabel="batch size (samples)", ylabel="test accuracy (%)", title="F1")
    ax2 = ax.twinx()
    ax2.plot([1, 2], [10.0, 300.0], label="sharpness")
    ax2.set_ylabel("Keskar sharpness (%)")
    return fig


@pytest.mark.parametrize(("build", "why"), [(_bad_sharpness_bars, "below zero on a log axis"),
                                           (_bad_accuracy_bars, "not at zero"),
                                           (_bad_twin_axes, "without a legend entry")])
def test_the_walk_catches_what_the_old_figures_got_wrong(build: Callable[[], Figure], why: str) -> None:
    with pytest.raises(AssertionError, match=why):
        check_figure(build())


def test_stopping_study_without_results_says_so() -> None:
    fig = figures.stopping_study("f1", [{"rule": "SB 1 ep / LB 1 ep", "gap": {"mean": None}}])
    assert any("no stopping rule has results" in t.get_text() for t in fig.axes[0].texts)
