"""Reports: figures (data -> Figure), tables and the Markdown/HTML writer."""

from sharpminima.report.build import load_results, write_report

__all__ = ["load_results", "write_report"]
