"""The report document: blocks rendered to Markdown and self-contained HTML, and cell formats.

The lowest layer of :mod:`sharpminima.report`: :mod:`.sections`, :mod:`.remedies_report`
and the studies' reports write into a :class:`Doc` and format numbers with the helpers
here; :mod:`.build` assembles a reproduction's report from them.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sharpminima.figstyle import DEFAULT_FIGURE_FORMATS, PNG_DPI, save_figure

SHORT_CELL = 30
"""Text cells of at most this many characters (a verdict, a setting, a header) never wrap."""

# Prose keeps a readable measure (60em); a table may use the width of the window, since its
# numbers and short cells never wrap (only long text does), and scrolls inside its own box
# when the window is narrower than the table.
PAGE_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:100em;margin:2em auto;padding:0 1em;"
    "line-height:1.45}p,h1,h2,h3,h4,ul,ol,figure{max-width:60em}"
    ".tw{overflow-x:auto;margin:1em 0}table{border-collapse:collapse;font-size:.9em}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".n,.s{white-space:nowrap}td:not(.n):not(.s){min-width:12em}"
    "img{max-width:100%}figcaption{font-style:italic;color:#444}"
    "code{background:#f4f4f4;padding:0 .2em}"
)


@dataclass
class Doc:
    """A report as a list of blocks; rendered to Markdown and HTML."""

    out: Path
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: int = 0
    figure_formats: tuple[str, ...] = DEFAULT_FIGURE_FORMATS

    def h(self, level: int, text: str) -> None:
        """Add a heading."""
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        """Add a paragraph (Markdown inline syntax: ** and ` only)."""
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        """Add a table."""
        self.blocks.append(("table", (header, [[_cell(c) for c in r] for r in rows])))

    def fig(self, fig: Figure, name: str, caption: str) -> None:
        """Save a figure beside the report in each of ``figure_formats`` and add it."""
        png = save_figure(fig, self.out / name, self.figure_formats)
        self.blocks.append(("fig", (name, caption, png)))
        self.figures += 1

    def markdown(self) -> str:
        """Render as Markdown (figures referenced as PNG files)."""
        lines: list[str] = []
        for kind, item in self.blocks:
            if kind == "h":
                lines += ["#" * item[0] + " " + item[1], ""]
            elif kind == "p":
                lines += [item, ""]
            elif kind == "table":
                header, rows = item
                lines.append("| " + " | ".join(header) + " |")
                aligns = numeric_columns(rows, len(header))
                lines.append("|" + "".join("---:|" if num else ":---|" for num in aligns))
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                lines.append("")
            elif kind == "fig":
                name, caption, _ = item
                shown, *others = self._figure_files(name)
                also = ", ".join(f"[{_fmt_name(f)}]({f})" for f in others)
                lines += [f"![{caption}]({shown})", "", f"*{caption}*" + (f" ({also})" if also else ""), ""]
        return "\n".join(lines)

    def html(self, title: str) -> str:
        """Render as one self-contained HTML page (figures embedded as base64 PNG)."""
        parts = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{PAGE_CSS}</style></head><body>"
        ]
        for kind, item in self.blocks:
            if kind == "h":
                parts.append(f"<h{item[0]}>{html.escape(item[1])}</h{item[0]}>")
            elif kind == "p":
                parts.append(f"<p>{_inline(item)}</p>")
            elif kind == "table":
                header, rows = item
                cols = numeric_columns(rows, len(header))
                parts.append("<div class='tw'><table><tr>" + "".join(
                    f"<th{_cell_class(h, num)}>{_inline(h)}</th>" for h, num in zip(header, cols, strict=True)
                ) + "</tr>")
                parts += ["<tr>" + "".join(
                    f"<td{_cell_class(c, is_number(c) or (c in ('', '-') and num))}>{_inline(c)}</td>"
                    for c, num in zip(r, cols, strict=True)
                ) + "</tr>" for r in rows]
                parts.append("</table></div>")
            elif kind == "fig":
                name, caption, png = item
                data = base64.b64encode(png).decode()
                vector = [f for f in self._figure_files(name) if not f.endswith(".png")]
                links = ", ".join(f"<a href='{html.escape(f)}'>{_fmt_name(f)}</a>" for f in vector)
                parts.append(
                    f"<figure><img alt='{html.escape(caption)}' width='{_css_width(png)}' "
                    f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}"
                    + (f" ({links})" if links else "") + "</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)

    def save(self, stem: str, title: str) -> tuple[Path, Path]:
        """Write ``out/stem.md`` (:meth:`markdown`) and ``out/stem.html`` (:meth:`html`), atomically.

        Args:
            stem: File name without suffix (``"report"``, ``"study"``).
            title: The HTML page's title.

        Returns:
            Paths of the Markdown and HTML files.

        Raises:
            StoreError: If a file cannot be written.
        """
        from sharpminima.store import atomic_write_text

        md, page = self.out / f"{stem}.md", self.out / f"{stem}.html"
        atomic_write_text(md, self.markdown())
        atomic_write_text(page, self.html(title))
        return md, page

    def _figure_files(self, name: str) -> list[str]:
        """The files written for figure ``name``: the one to show first (PNG, else SVG, else PDF)."""
        order = {"png": 0, "svg": 1, "pdf": 2}
        return [f"{name}.{fmt}" for fmt in sorted(self.figure_formats, key=order.__getitem__)]


def _fmt_name(path: str) -> str:
    return path.rsplit(".", 1)[1].upper()


def _css_width(png: bytes) -> int:
    """Display width (CSS px) showing a figure at 1.6x its size in print (8 pt text ~ 17 px)."""
    pixels = int.from_bytes(png[16:20], "big")  # IHDR width
    return round(pixels * 96 * 1.6 / PNG_DPI)


_NUMBER = re.compile(r"^[+\-\u2212]?\.?\d[\d.,eE+\-\u2212 x%±\[\]]*$")


def is_number(cell: str) -> bool:
    """Whether a table cell shows a number (``98.27 ± 0.17``, ``+0.12 [-0.30, +0.54]``, ``9.8x``).

    Outside parentheses it holds digits, signs, ``e``, ``x``, ``%``, ``±`` and brackets only:
    ``0.5 (s.e.)`` is a number, ``3 inner steps`` and a run id ``1ad39c80e120`` are text.
    """
    return bool(_NUMBER.match(re.sub(r"\s*\(.*?\)", "", cell).strip()))


def numeric_columns(rows: list[list[str]], width: int) -> list[bool]:
    """Per column, whether most of its filled cells are numbers (right-aligned)."""
    out = []
    for i in range(width):
        cells = [r[i] for r in rows if i < len(r) and r[i] not in ("", "-")]
        numbers = sum(is_number(c) for c in cells)
        out.append(bool(cells) and 2 * numbers >= len(cells))
    return out


def _cell_class(text: str, numeric: bool) -> str:
    """The class of a table cell: ``n`` numbers (right-aligned), ``s`` short text; neither wraps."""
    if numeric:
        return " class='n'"
    shown = text.replace("**", "").replace("`", "")  # as rendered: bold and code marks vanish
    return " class='s'" if len(shown) <= SHORT_CELL else ""


def environment_rows(env: dict[str, Any]) -> list[list[Any]]:
    """The rows of a report's "Machine, versions and time" table, from a results' ``environment``.

    The source files the job loaded (``code_files``) are counted, not listed: the list is
    in the results JSON, for ``make check-published``. The commits that trained the runs and
    how many measurements the last call computed or read from the run store
    (:func:`~sharpminima.store.provenance.inputs_provenance`) say whether the numbers were
    computed by the commit that wrote the folder or taken from a store that others filled.
    """
    rows = []
    for key, value in env.items():  # a value of another shape (an edited file) is shown as it is
        if key == "code_files" and isinstance(value, list):
            rows.append(["source files loaded (listed in the results JSON)", len(value)])
        elif key == "runs_trained_by" and isinstance(value, dict):
            shown = ", ".join(f"{commit} ({n} run{'s' if n != 1 else ''})" for commit, n in value.items())
            rows.append(["runs trained by (commit)", shown or "-"])
        elif key == "measurements_last_call" and isinstance(value, dict):
            rows.append(["measurements in the last call",
                         f"{value.get('computed', 0)} computed, {value.get('read_from_store', 0)} read "
                         "from the run store"])
        else:
            rows.append([key, value])
    return rows


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def decimals_for(value: float, sig: int = 3) -> int:
    """Decimal places that show ``value`` to ``sig`` significant figures (0 for large values)."""
    if value == 0 or not math.isfinite(value):
        return max(sig - 1, 0)
    return max(sig - 1 - math.floor(math.log10(abs(value))), 0)


def num(value: float | None, sig: int = 3) -> str:
    """``value`` to ``sig`` significant figures in fixed notation (``0.0412``, ``325``, ``1.2e+06``)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value != 0 and not 1e-4 <= abs(value) < 1e6:
        return f"{value:.{sig - 1}e}"
    return f"{value:.{decimals_for(value, sig)}f}"


def signed(value: float | None, decimals: int = 2) -> str:
    """A difference with its sign always shown, to a fixed number of decimals (``+0.08``, ``-0.37``)."""
    if value is None or not math.isfinite(value):
        return "-"
    if round(value, decimals) == 0:  # no "-0.00"
        value = 0.0
    return f"{value:+.{decimals}f}"


def ratio_num(value: float | None) -> str:
    """A ratio with enough significant figures that no small ratio reads ``0.0x``."""
    return "-" if value is None or not math.isfinite(value) else num(value, 3) + "x"


def pm(stats: dict[str, Any] | None, digits: int = 2, *, sig: int | None = None) -> str:
    """Format ``mean ± std`` over trials.

    Args:
        stats: ``{"mean", "std", "n"}`` (an :func:`sharpminima.intervals.summary`).
        digits: Decimal places of mean and std (accuracies: 2).
        sig: Instead, significant figures of the mean; the std gets the same decimal places
            (sharpness values that span decades: ``325 ± 125``, ``0.275 ± 0.031``).

    One trial prints the value alone: a single value has no spread to show. Tables say how
    many trials their cells average.
    """
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "-"
    n = stats.get("n")
    mean, std = stats["mean"], stats.get("std") or 0.0
    if sig is not None:
        places = decimals_for(mean, sig)
    elif 0 < abs(mean) < 10 ** (1 - digits):  # too small for fixed decimals: significant figures
        places = decimals_for(mean, 3)
    else:
        places = digits
    if n == 1:
        return f"{mean:.{places}f}"
    return f"{mean:.{places}f} ± {std:.{places}f}"


def pm_paper(value: tuple[float, float] | None, digits: int = 2) -> str:
    """Format a paper ``(mean, std)``."""
    return "-" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
