"""``scripts/report_check.py`` (``make report-check``): broken images and overflowing tables."""

from __future__ import annotations

import base64
import importlib.util
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "report_check.py"
_spec = importlib.util.spec_from_file_location("report_check", SCRIPT)
assert _spec is not None and _spec.loader is not None
report_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_check)

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
                       "AAAABJRU5ErkJggg==")


def _page(folder: Path, body: str) -> Path:
    page = folder / "report.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{body}</body></html>")
    return page


def _img(alt: str, data: bytes) -> str:
    return f"<img alt='{alt}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def test_static_checks_find_broken_images_and_missing_figure_files(tmp_path: Path) -> None:
    (tmp_path / "fig2.pdf").write_bytes(b"%PDF")
    page = _page(tmp_path, _img("good", PNG) + _img("garbage", b"GIF89a") + "<img alt='gone' src='gone.png'>"
                 "<img alt='bad64' src='data:image/png;base64,@@@'>"
                 "<a href='fig2.pdf'>PDF</a><a href='fig2.svg'>SVG</a><a href='https://arxiv.org'>x</a>")
    problems = report_check.static_problems(page)
    assert problems == ["image 'garbage': not a PNG", "image 'gone': gone.png does not exist",
                        "image 'bad64': its base64 does not decode",
                        "link to fig2.svg: the file does not exist"]


def test_without_a_browser_it_says_it_skipped(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(report_check, "find_browser", lambda: None)
    _page(tmp_path, _img("good", PNG))
    assert report_check.main([str(tmp_path)]) == 0
    assert "rendering skipped" in capsys.readouterr().out
    _page(tmp_path, "<img alt='gone' src='gone.png'>")
    assert report_check.main([str(tmp_path)]) == 1


def test_no_report_is_a_failure(tmp_path: Path, capsys) -> None:
    assert report_check.main([str(tmp_path)]) == 1
    assert "no HTML report" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(b) for b in report_check.BROWSERS), reason="no headless Chromium")
def test_chromium_finds_a_table_wider_than_the_window(tmp_path: Path, capsys) -> None:
    wide = "<table><tr><td>" + "A" * 400 + "</td></tr></table>"
    _page(tmp_path, _img("good", PNG) + wide)
    assert report_check.main([str(tmp_path), "--width", "1400"]) == 1
    out = capsys.readouterr().out
    assert "table cell past the right edge" in out and "broken image" not in out
    _page(tmp_path, _img("good", PNG) + "<table><tr><td>98.51</td><td>± 0.02</td></tr></table>")
    assert report_check.main([str(tmp_path)]) == 0


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(b) for b in report_check.BROWSERS), reason="no headless Chromium")
def test_short_cells_may_not_wrap_and_doc_tables_keep_them_whole(tmp_path: Path, capsys) -> None:
    from sharpminima.report.doc import Doc

    # A narrow column squeezes a short verdict onto two lines: a failure.
    squeezed = ("<table style='width:300px'><tr><td>" + "a long claim " * 30
                + "</td><td style='width:2em'>did not hold</td></tr></table>")
    _page(tmp_path, squeezed)
    assert report_check.main([str(tmp_path)]) == 1
    assert "short cell wraps: 'did not hold'" in capsys.readouterr().out
    # Code and bold beside plain text sit on one line, though their boxes' tops differ.
    _page(tmp_path, "<table><tr><td>mode <code>eval</code> <b>held</b> <small>x</small></td></tr></table>")
    assert report_check.main([str(tmp_path)]) == 0, capsys.readouterr().out
    # The report's own table, wider than the 60em text column, with long claims beside short
    # cells: the short ones stay on one line, the long ones wrap, nothing passes the edge.
    doc = Doc(tmp_path)
    claim = "F1: LB tests worse than SB, with BatchNorm as the authors' code evaluated it " * 2
    measured = "gap SB - LB = -0.42 points, 95% interval [-0.65, -0.19] (Welch t, 3+3 trials)"
    doc.table(["claim", "paper", "measured here", "verdict"],
              [[claim, "gap SB - LB = +0.22 points", measured, v] for v in ("did not hold", "cannot say")])
    # the correlation study's per-run table: eleven columns
    doc.table(["batch_size", "lr", "seed", "run", "epochs", "train loss", "train acc", "test acc",
               "loss gap", "error gap", "included"],
              [["1000", "0.003", "1", "c8b4bd3bdb38", "12", "0.02088", "99.32", "94.2", "0.2515",
                "5.43", "train loss above threshold"]] * 3)
    # the remedies table: eight columns of values with their spread
    doc.table(["method", "regime", "test acc", "gap to SB", "gap to SB + method", "sharpness",
               "epochs", "s/run"],
              [["batch-exp", "LB", "98.32 ± 0.14", "+0.41", "-0.12", "324.879 ± 124.760",
                "15, 15, 15", "151.2"]] * 2)
    (tmp_path / "report.html").write_text(doc.html("t"))
    assert report_check.main([str(tmp_path), "--width", "1400"]) == 0, capsys.readouterr().out
