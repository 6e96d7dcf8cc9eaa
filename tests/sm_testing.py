"""Test helpers shared across test folders (imported as `sm_testing`, never via conftest)."""

from __future__ import annotations

import math
import re
import struct

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection, LineCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text

from sharpminima import figstyle
from sharpminima.data.base import Dataset


def make_tiny(
    n_train: int = 600, n_test: int = 200, shape=(1, 8, 8), classes: int = 4, seed: int = 0
) -> Dataset:
    """A small learnable problem: labels from a fixed random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, *shape, generator=g)
    w = torch.randn(x[0].numel(), classes, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return Dataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, "test")



def small_mlp(in_features: int = 64, classes: int = 4) -> torch.nn.Module:
    """A fast BatchNorm MLP for loop tests (F1's structure, 32 units wide)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(in_features, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, classes),
    )


def mean_abs_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """A user loss ``fn(model, batch)``: mean absolute error of the logits to one-hot targets."""
    x, y = batch
    out = model(x)
    return (out - torch.nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)).abs().mean()


# -- what every figure must satisfy -----------------------------------------------------------
UNIT_RULES = [  # (word in a label, the unit it must carry)
    (re.compile(r"keskar", re.I), "(%)"),
    (re.compile(r"accuracy(?! gap)", re.I), "(%)"),
    (re.compile(r"cross-entropy|\bloss\b", re.I), "(nats)"),
    (re.compile(r"error gap|accuracy gap", re.I), "(points)"),
    (re.compile(r"batch size", re.I), "(samples)"),
]


def _has_data(ax: Axes) -> bool:
    return bool(ax.lines or ax.collections or ax.images or ax.patches or ax.containers)


def _twins(fig: Figure, ax: Axes) -> list[Axes]:
    """Axes drawn over ``ax`` (``twinx``), ``ax`` included."""
    return [o for o in fig.axes if o.get_position().bounds == ax.get_position().bounds]


def _label_of(fig: Figure, ax: Axes, which: str) -> str:
    """The axis label of ``ax``, or of an axes sharing that axis with it (a shared grid, a twin)."""
    shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    for other in [ax, *(o for o in fig.axes if o is not ax and shared.joined(ax, o))]:
        text = other.get_xlabel() if which == "x" else other.get_ylabel()
        if text:
            return text
    return ""


def legend_texts(fig: Figure) -> set[str]:
    """Every entry of every legend of ``fig`` (its axes' and its own)."""
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    return {t.get_text() for leg in legends for t in leg.get_texts()}


def _log_coordinates(ax: Axes, axis: int) -> list[float]:
    """Every data coordinate along ``axis`` (0: x, 1: y) of the collections and lines of ``ax``."""
    values: list[float] = []
    for coll in ax.collections:
        assert isinstance(coll, Collection)
        if isinstance(coll, LineCollection):
            for seg in coll.get_segments():
                values.extend(np.asarray(seg)[:, axis].tolist())
        else:
            for path in coll.get_paths():
                if coll.get_transform() == ax.transData:
                    values.extend(path.vertices[:, axis].tolist())
            offsets = np.asarray(coll.get_offsets())
            if offsets.size:
                values.extend(offsets[:, axis].tolist())
    for line in ax.lines:
        data = line.get_xdata() if axis == 0 else line.get_ydata()
        if line.get_transform() == ax.transData:
            values.extend(np.asarray(data, dtype=float).tolist())
    return [v for v in values if math.isfinite(v)]


def outside_the_canvas(fig: Figure) -> list[str]:
    """What of ``fig`` is drawn, wholly or partly, outside its canvas (and so cut off in a file).

    Each axes with everything it draws (title, axis labels, tick labels, its legend), the
    figure's legends, texts and title, laid out as when the figure is saved (in the figure
    style: ticks made outside it would take the default font size). Constrained layout counts
    an axes title or label as no wider than its axes, so a long one runs past the edge
    without any warning.
    """
    with matplotlib.rc_context(figstyle.RC):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        width, height = fig.bbox.width, fig.bbox.height
        parts = [(f"axes {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in fig.axes]
        parts += [("a figure legend", leg.get_window_extent(renderer)) for leg in fig.legends]
        parts += [(f"text {t.get_text()!r}", t.get_window_extent(renderer))
                  for t in fig.texts if t.get_visible() and t.get_text().strip()]
    out = []
    for what, box in parts:
        if box is not None and (box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1):
            out.append(f"{what} spans x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}..{box.y1:.0f}"
                       f" of a {width:.0f} x {height:.0f} canvas")
    return out


def overlapping_titles(fig: Figure) -> list[str]:
    """Pairs of axes titles of ``fig`` whose boxes overlap (one printed over the other)."""
    with matplotlib.rc_context(figstyle.RC):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        boxes = [(ax.title.get_text(), ax.title.get_window_extent(renderer)) for ax in fig.axes
                 if ax.title.get_visible() and ax.title.get_text().strip()]
    return [f"{a!r} over {b!r}" for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if box_a.overlaps(box_b)]


def labels_over_the_frame(fig: Figure) -> list[str]:
    """Texts placed in an axes (point labels, notes) that cross its frame or stick out of it."""
    with matplotlib.rc_context(figstyle.RC):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        out = []
        for ax in fig.axes:
            frame = ax.get_window_extent(renderer)
            for t in ax.texts:
                if not (t.get_visible() and t.get_text().strip()):
                    continue
                if isinstance(t, Annotation) and t.xycoords == "data":  # drawn only if its point is in view
                    fx, fy = ax.transAxes.inverted().transform(ax.transData.transform(t.xy))
                    if not (0 <= fx <= 1 and 0 <= fy <= 1):
                        continue
                box = t.get_window_extent(renderer)
                inside = (frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1
                          and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1)
                if not inside:
                    out.append(f"{t.get_text()!r} spans x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}.."
                               f"{box.y1:.0f} over the frame x {frame.x0:.0f}..{frame.x1:.0f}, y "
                               f"{frame.y0:.0f}..{frame.y1:.0f}")
    return out


def check_figure(fig: Figure) -> None:
    """Assert what a reader of a paper needs from ``fig``.

    Axis labels (with units where :data:`UNIT_RULES` asks), a title, a legend wherever there
    is more than one series, fonts of at least 8 pt at a two-column paper's widths, nothing
    at or below zero on a log axis, bars only from zero, and, once its titles are fitted as
    saving fits them (which changes ``fig``), nothing cut off at the edges and no title
    printed over another, nor a label placed in an axes over its frame.
    """
    width = fig.get_size_inches()[0]
    assert figstyle.SINGLE_COLUMN - 0.1 <= width <= figstyle.DOUBLE_COLUMN + 1e-6, f"width {width} in"
    small = {t.get_text(): t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and t.get_fontsize() < figstyle.MIN_FONT_PT}
    assert not small, f"text below {figstyle.MIN_FONT_PT} pt: {small}"
    texts = legend_texts(fig)
    drawn = [ax for ax in fig.axes if ax.axison and _has_data(ax) and ax.get_label() != "<colorbar>"]
    assert drawn, "a figure without data"
    for ax in drawn:
        xlabel, ylabel = _label_of(fig, ax, "x"), _label_of(fig, ax, "y")
        assert xlabel and ylabel, f"axes {ax.get_title()!r} lacks an axis label: {xlabel!r}, {ylabel!r}"
        assert any(o.get_title() for o in _twins(fig, ax)) or fig.get_suptitle(), "an axes without title"
        for label in (xlabel, ylabel):
            for word, unit in UNIT_RULES:
                if word.search(label) and "rank correlation" not in label:
                    assert unit in label, f"label {label!r} should carry the unit {unit}"
        labels = {lab for o in _twins(fig, ax) for lab in o.get_legend_handles_labels()[1]}
        if len(labels) > 1:
            assert labels <= texts, f"series without a legend entry: {labels - texts}"
        for axis, scale in ((0, ax.get_xscale()), (1, ax.get_yscale())):
            if scale == "log":
                coords = _log_coordinates(ax, axis)
                assert min(coords, default=1.0) > 0, "something is drawn at or below zero on a log axis"
        for container in ax.containers:
            if isinstance(container, BarContainer):
                assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear", "bars on a log axis"
                horizontal = container.orientation == "horizontal"
                for bar in container.patches:
                    base = bar.get_x() if horizontal else bar.get_y()
                    assert base == 0, f"a bar starting at {base}, not at zero"
                lo, hi = ax.get_xlim() if horizontal else ax.get_ylim()
                assert lo <= 0 <= hi, "bars whose origin (zero) is off the axis"
    assert fig.get_suptitle() or all(
        any(o.get_title() for o in _twins(fig, ax)) for ax in drawn
    ), "no title says what the figure shows"
    figstyle.fit_titles(fig)  # as saving does
    clipped = outside_the_canvas(fig)
    assert not clipped, f"cut off at the canvas edge: {clipped}"
    assert not overlapping_titles(fig), f"titles printed over each other: {overlapping_titles(fig)}"
    crossing = labels_over_the_frame(fig)
    assert not crossing, f"labels over the axes frame: {crossing}"


def png_dpi(data: bytes) -> float:
    """Dots per inch from the PNG's pHYs chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs":
            ppu_x, ppu_y, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            assert unit == 1  # metres
            return min(ppu_x, ppu_y) * 0.0254
        pos += 12 + length
    raise AssertionError("no pHYs chunk")
