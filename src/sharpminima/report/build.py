"""Assemble the report (Markdown + self-contained HTML) from a reproduction's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sharpminima.errors import SharpMinimaError
from sharpminima.figstyle import DEFAULT_FIGURE_FORMATS
from sharpminima.report import figures, paper
from sharpminima.report.doc import (
    Doc,
    decimals_for,
    is_number,
    num,
    numeric_columns,
    pm,
    pm_paper,
    ratio_num,
    signed,
)
from sharpminima.report.sections import build_document

RESULTS_FILE = "results.json"


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


def write_report(
    out: Path,
    results: dict[str, Any] | None = None,
    figure_formats: tuple[str, ...] = DEFAULT_FIGURE_FORMATS,
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the figures (PNG, PDF, SVG) into ``out``.

    Args:
        out: The reproduction's output folder.
        results: The results dict (read from ``out/results.json`` if None).
        figure_formats: Files written per figure (see ``style.parse_figure_formats``); the
            HTML embeds a PNG whatever they are.

    Returns:
        Paths of the Markdown and HTML files.
    """
    res = results if results is not None else load_results(out)
    doc = Doc(out, figure_formats=figure_formats)
    title = build_document(doc, res)
    return doc.save("report", title)


__all__ = [
    "Doc",
    "decimals_for",
    "figures",
    "is_number",
    "load_results",
    "num",
    "numeric_columns",
    "paper",
    "pm",
    "pm_paper",
    "ratio_num",
    "signed",
    "write_report",
]
