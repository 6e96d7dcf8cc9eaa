"""The one look of every figure, and how figures are written to disk.

A top-level module that imports nothing of sharpminima but :mod:`sharpminima.atomic` and
:mod:`sharpminima.errors`, so that every layer can draw in it: the reports
(:mod:`sharpminima.report`, which re-exports it as :mod:`sharpminima.report.style`), the
landscape's own plots (:func:`sharpminima.landscape.epsilon.plot_epsilon_study`) and the
CLI's quick plots.

Sizes are those of a two-column paper: a single panel is :data:`SINGLE_COLUMN` inches wide
(one column), a row of panels :data:`DOUBLE_COLUMN` inches (the text width); every text is
at least :data:`MIN_FONT_PT` points at that size, so a figure can go into a paper unscaled.
Each figure function builds its figure inside :func:`styled` (a ``matplotlib.rc_context``
of :data:`RC`) from :func:`new_figure`, a bare :class:`~matplotlib.figure.Figure` that
pyplot never tracks (nothing leaks between figures, any backend works).

:func:`save_figure` writes a figure as PNG (:data:`PNG_DPI` dpi, for the HTML page), PDF
and SVG (vector, for papers), each atomically (a temporary file renamed into place) and
reproducibly (no creation date in the PDF or SVG, fixed SVG ids). Nothing is cut off at the
edges: a title that would run past the canvas is broken at spaces (:func:`fit_titles`), and
a figure whose text still would is saved with its tight box (:func:`runs_off_the_canvas`);
any other figure keeps its nominal size.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from sharpminima.atomic import atomic_target
from sharpminima.errors import ConfigError, SharpMinimaError

#: Width of a one-column figure of a two-column paper (inches).
SINGLE_COLUMN = 3.4
#: Width of a figure across both columns (inches).
DOUBLE_COLUMN = 7.0
#: Smallest font size of any text in a figure (points).
MIN_FONT_PT = 8.0
#: Resolution of the PNG files and of the images embedded in the HTML reports (at least 200 dpi;
#: 220 so that the pHYs chunk, in whole dots per metre, still reads above 200).
PNG_DPI = 220
#: Every file format a figure can be written in.
FIGURE_FORMATS = ("png", "pdf", "svg")
#: What ``--figure-format`` gives by default: all three.
DEFAULT_FIGURE_FORMATS = FIGURE_FORMATS

#: Regime colours (Okabe-Ito: distinguishable with the common colour-vision deficiencies
#: and in greyscale by their markers).
REGIME_COLORS = {"sb": "#0072B2", "lb": "#D55E00"}
REGIME_MARKERS = {"sb": "o", "lb": "s"}
REGIME_LABELS = {"sb": "SB", "lb": "LB"}
#: Further qualitative colours (Okabe-Ito, without the two regime colours).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")

#: The rcParams every figure is drawn with.
RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 9,
    "mathtext.default": "regular",
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "axes.grid.which": "major",
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "errorbar.capsize": 2,
    "legend.frameon": True,
    "legend.framealpha": 0.85,
    "legend.edgecolor": "0.8",
    "legend.handlelength": 2.4,  # long enough to tell solid from dashed
    "figure.dpi": 100,
    "savefig.dpi": PNG_DPI,
    "savefig.bbox": "standard",  # a figure keeps its size unless render() needs its tight box
    "pdf.fonttype": 42,  # TrueType: text stays text in the PDF (journals ask for it)
    "ps.fonttype": 42,
    "svg.fonttype": "path",  # looks the same without the fonts installed
    "svg.hashsalt": "sharpminima",  # the same figure gives the same SVG
}

_P = ParamSpec("_P")
_R = TypeVar("_R")


def styled(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a figure function with :data:`RC` in force (the style is read as artists are made)."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with matplotlib.rc_context(RC):
            return func(*args, **kwargs)

    return wrapper


def new_figure(
    width: float = SINGLE_COLUMN, height: float = 2.6, nrows: int = 1, ncols: int = 1, **subplots: Any
) -> tuple[Figure, Any]:
    """A constrained-layout figure ``width`` x ``height`` inches and its axes.

    Call it inside :func:`styled`. Extra keyword arguments go to ``Figure.subplots``.

    Returns:
        ``(figure, axes)``: one ``Axes`` for 1x1, else an array (as ``Figure.subplots``).
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, **subplots)


def net_name(net: str) -> str:
    """``f1`` -> ``F1`` for the paper's networks; anything else (a run id, a path) as given."""
    return net.upper() if len(net) == 2 and net[0] in "fcFC" and net[1].isdigit() else net


def parse_figure_formats(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"png,pdf"`` -> ``("png", "pdf")``: the figure formats asked for, validated.

    Args:
        spec: Comma-separated formats, or a sequence of them (each may itself hold commas).

    Returns:
        The formats, lower-case, in the order given, without repeats.

    Raises:
        ConfigError: If a format is unknown or none is given.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            fmt = part.strip().lower().lstrip(".")
            if not fmt:
                continue
            if fmt not in FIGURE_FORMATS:
                raise ConfigError(
                    f"unknown figure format {part.strip()!r}; use a comma-separated list of "
                    f"{', '.join(FIGURE_FORMATS)}"
                )
            if fmt not in out:
                out.append(fmt)
    if not out:
        raise ConfigError(
            f"no figure format given; use a comma-separated list of {', '.join(FIGURE_FORMATS)}"
        )
    return tuple(out)


@contextlib.contextmanager
def _laid_out(fig: Figure) -> Iterator[Any]:
    """Lay ``fig`` out as when it is saved (:data:`RC`, Agg) and yield the renderer.

    The figure's own canvas (a pyplot window's, say) is put back afterwards.
    """
    before = fig.canvas
    with matplotlib.rc_context(RC):
        canvas = before if isinstance(before, FigureCanvasAgg) else FigureCanvasAgg(fig)
        try:
            canvas.draw()
            yield canvas.get_renderer()
        finally:
            if fig.canvas is not before:
                fig.set_canvas(before)


def _settle(fig: Figure, renderer: Any) -> None:
    """Draw until constrained layout stops moving the axes (it may take a few passes)."""
    for _ in range(5):
        before = [ax.get_position().bounds for ax in fig.axes]
        fig.draw(renderer)
        if [ax.get_position().bounds for ax in fig.axes] == before:
            return


def _break_to_width(title: Text, room: float, renderer: Any) -> bool:
    """Break each line of ``title`` wider than ``room`` pixels at spaces; whether it changed.

    A line with mathtext (``$...$``) is kept whole.
    """
    text = title.get_text()

    def width(line: str) -> float:
        title.set_text(line)
        return float(title.get_window_extent(renderer).width)

    lines: list[str] = []
    for line in text.split("\n"):
        if "$" in line or width(line) <= room:
            lines.append(line)
            continue
        current = ""
        for word in line.split(" "):
            longer = f"{current} {word}" if current else word
            if current and width(longer) > room:
                lines.append(current)
                current = word
            else:
                current = longer
        lines.append(current)
    title.set_text("\n".join(lines))
    return title.get_text() != text


def _titles(fig: Figure) -> list[tuple[Text, Any]]:
    """Each centred axes title with its axes, and the figure's suptitle (with ``None``)."""
    out: list[tuple[Text, Any]] = [(ax.title, ax) for ax in fig.axes]
    suptitle = fig.get_suptitle()
    out += [(t, None) for t in fig.texts if suptitle and t.get_text() == suptitle and t.get_rotation() == 0]
    return [(t, ax) for t, ax in out if t.get_visible() and t.get_text().strip()]


def fit_titles(fig: Figure) -> None:
    """Break, at spaces, every title that runs past the canvas or far past its own axes.

    Constrained layout counts an axes title as if it were no wider than its axes, so a title
    built from a user's names (a run id, a path, a run's settings) can run off the canvas or
    over the next panel's title. After the layout, each axes title is kept within the canvas
    (centred where it is) and within 1.15 times its axes' width, and the suptitle within
    the canvas; a title that is not is broken so that each line fits. The figure is then laid
    out again until it settles, so that rendering it twice gives the same bytes.
    :func:`render` calls it before saving; a mathtext line is never broken.
    """
    with _laid_out(fig) as renderer:
        width = fig.bbox.width
        for _ in range(3):  # a broken title is taller, the axes shorter: the layout may shift
            changed = False
            for title, ax in _titles(fig):
                box = title.get_window_extent(renderer)
                centre = (box.x0 + box.x1) / 2
                room = 2 * min(centre, width - centre) - 6
                if ax is not None:
                    room = min(room, 1.15 * ax.get_window_extent(renderer).width)
                if box.width > room + 1:
                    changed |= _break_to_width(title, max(room, 0.2 * width), renderer)
            _settle(fig, renderer)
            if not changed:
                break


def runs_off_the_canvas(fig: Figure) -> bool:
    """Whether anything of ``fig``, laid out as when saved, reaches past its canvas.

    Constrained layout gives an axes title or axis label no more room than its axes, so a long
    one (a user's run id in a title, long method names beside a panel) runs off the edge.
    :func:`render` then saves the figure's tight box, a little larger than its nominal size,
    rather than cut the text off; a figure that fits keeps its exact column width.
    """
    with _laid_out(fig) as renderer:
        box = fig.get_tightbbox(renderer)
    width, height = fig.get_size_inches()
    slack = 1.0 / fig.dpi  # one pixel of the layout
    return bool(box.x0 < -slack or box.y0 < -slack or box.x1 > width + slack or box.y1 > height + slack)


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as the bytes of a ``png`` (:data:`PNG_DPI` dpi), ``pdf`` or ``svg`` file.

    Titles that would run past the canvas are broken first (:func:`fit_titles`); if any text
    still would, the file holds the figure's tight box (:func:`runs_off_the_canvas`).

    Raises:
        ConfigError: If ``fmt`` is not one of :data:`FIGURE_FORMATS`.
    """
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"unknown figure format {fmt!r}; use one of {', '.join(FIGURE_FORMATS)}")
    metadata: dict[str, Any] = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fit_titles(fig)
        box = "tight" if runs_off_the_canvas(fig) else None
        fig.savefig(buf, format=fmt, dpi=PNG_DPI, metadata=metadata, bbox_inches=box, pad_inches=0.03)
    return buf.getvalue()


def _write_error(path: Path, exc: OSError) -> SharpMinimaError:
    return SharpMinimaError(f"cannot write the figure {path} ({exc.strerror or exc}); check the folder")


def figure_format(path: Path, option: str = "the figure file") -> str:
    """The format a figure file's name asks for: ``out.pdf`` -> ``"pdf"`` (suffix in any case).

    Args:
        path: The file name the user gave.
        option: What to call it in the error (a CLI passes its option, ``--plot``).

    Returns:
        One of :data:`FIGURE_FORMATS`.

    Raises:
        ConfigError: If the suffix is not ``.png``, ``.pdf`` or ``.svg``.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"{option} must end in .png, .pdf or .svg, got {path}")
    return fmt


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = DEFAULT_FIGURE_FORMATS) -> bytes:
    """Write ``fig`` as ``stem.png``, ``stem.pdf``, ``stem.svg`` (those in ``formats``), atomically.

    Args:
        fig: The figure.
        stem: Path without suffix; its folder is created if missing.
        formats: Formats to write (see :func:`parse_figure_formats`).

    Returns:
        The PNG bytes (rendered even when ``png`` is not in ``formats``: the HTML embeds them).

    Raises:
        SharpMinimaError: If a file cannot be written.
    """
    png = render(fig, "png")
    for fmt in formats:
        _write(stem.with_name(f"{stem.name}.{fmt}"), png if fmt == "png" else render(fig, fmt))
    return png


def save_figure_as(fig: Figure, path: Path, option: str = "the figure file") -> Path:
    """Write ``fig`` to exactly ``path``, atomically, in the format its suffix names.

    The one-file counterpart of :func:`save_figure`, for a file name a user chose
    (``--plot out.pdf`` writes a PDF; a PNG is :data:`PNG_DPI` dpi).

    Args:
        fig: The figure.
        path: The file; its folder is created if missing.
        option: What to call ``path`` in an error (see :func:`figure_format`).

    Returns:
        ``path``.

    Raises:
        ConfigError: If the suffix is not ``.png``, ``.pdf`` or ``.svg``.
        SharpMinimaError: If the file cannot be written.
    """
    _write(path, render(fig, figure_format(path, option)))
    return path


def _write(path: Path, data: bytes) -> None:
    with atomic_target(path, _write_error) as fh:
        fh.write(data)


__all__ = [
    "DEFAULT_FIGURE_FORMATS",
    "DOUBLE_COLUMN",
    "FIGURE_FORMATS",
    "MIN_FONT_PT",
    "PALETTE",
    "PNG_DPI",
    "RC",
    "REGIME_COLORS",
    "REGIME_LABELS",
    "REGIME_MARKERS",
    "SINGLE_COLUMN",
    "figure_format",
    "fit_titles",
    "net_name",
    "new_figure",
    "parse_figure_formats",
    "render",
    "runs_off_the_canvas",
    "save_figure",
    "save_figure_as",
    "styled",
]
