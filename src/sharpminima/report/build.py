"""Assemble the report (Markdown + self-contained HTML) from a reproduction's results."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sharpminima.errors import SharpMinimaError
from sharpminima.report import figures, paper

RESULTS_FILE = "results.json"


@dataclass
class Doc:
    """A report as a list of blocks; rendered to Markdown and HTML."""

    out: Path
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: int = 0

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
        """Save a figure as PNG beside the report and add it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        png = buf.getvalue()
        from sharpminima.store.checkpoints import atomic_write_bytes

        atomic_write_bytes(self.out / f"{name}.png", png)
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
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                lines.append("")
            elif kind == "fig":
                name, caption, _ = item
                lines += [f"![{caption}]({name}.png)", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self, title: str) -> str:
        """Render as one self-contained HTML page (figures embedded as base64 PNG)."""
        parts = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em "
            "auto;padding:0 1em;line-height:1.45}table{border-collapse:collapse;margin:1em 0;"
            "font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
            "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%}figcaption{font-style:italic;color:#444}code{background:#f4f4f4;"
            "padding:0 .2em}</style></head><body>"
        ]
        for kind, item in self.blocks:
            if kind == "h":
                parts.append(f"<h{item[0]}>{html.escape(item[1])}</h{item[0]}>")
            elif kind == "p":
                parts.append(f"<p>{_inline(item)}</p>")
            elif kind == "table":
                header, rows = item
                parts.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows]
                parts.append("</table>")
            elif kind == "fig":
                name, caption, png = item
                data = base64.b64encode(png).decode()
                parts.append(
                    f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                    f"{data}'><figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)


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


def pm(stats: dict[str, Any] | None, digits: int = 2) -> str:
    """Format ``mean +- std (n)``."""
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "-"
    n = stats.get("n")
    mean, std = stats["mean"], stats["std"] or 0.0
    if 0 < abs(mean) < 10 ** (1 - digits):  # too small for fixed decimals: significant figures
        text = f"{mean:.3g} ± {std:.2g}"
    else:
        text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text + (f" (n={n})" if n else "")


def pm_paper(value: tuple[float, float] | None, digits: int = 2) -> str:
    """Format a paper ``(mean, std)``."""
    return "-" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def load_results(out: Path) -> dict[str, Any]:
    """Read ``out/results.json``.

    Raises:
        SharpMinimaError: If the folder holds no results.
    """
    path = out / RESULTS_FILE
    if not path.exists():
        raise SharpMinimaError(f"no {RESULTS_FILE} in {out}; run `sharpminima reproduce --out {out}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SharpMinimaError(f"{path} is not valid JSON ({exc}); rerun reproduce") from exc


def write_report(out: Path, results: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the figures' PNGs into ``out``.

    Args:
        out: The reproduction's output folder.
        results: The results dict (read from ``out/results.json`` if None).

    Returns:
        Paths of the Markdown and HTML files.
    """
    from sharpminima.report.sections import build_document
    from sharpminima.store import atomic_write_text

    res = results if results is not None else load_results(out)
    doc = Doc(out)
    title = build_document(doc, res)
    md, page = out / "report.md", out / "report.html"
    atomic_write_text(md, doc.markdown())
    atomic_write_text(page, doc.html(title))
    return md, page


__all__ = ["Doc", "figures", "load_results", "paper", "pm", "pm_paper", "write_report"]
