"""Render the committed HTML reports in headless Chromium and fail on what a reader would see broken.

Usage: ``python scripts/report_check.py [PATH ...] [--width 1400] [--screenshots DIR]``
(default path: ``docs/results``; ``make report-check`` runs it).

For every ``*.html`` under the paths:

1. without a browser: every ``<img>`` is an embedded PNG that decodes (or a file beside the
   page that exists), and every link to a figure file (PDF, SVG) points at a file that exists;
2. in headless Chromium (the Debian package ``chromium``, or Google Chrome, or Python
   Playwright's Chromium), in a window ``--width`` pixels wide: no image is broken (loaded
   with a width of 0), no table cell reaches past the right edge of the window and the page
   does not scroll sideways, and no short cell (30 characters or fewer: a number with its
   interval, a verdict, a header) wraps onto a second line. Long prose in a cell may wrap.

Exits 1 if a check fails, 0 otherwise. Without a browser it runs the checks of step 1, says
that the rendering was skipped and exits 0: the target is optional, not part of ``make test``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MARK = "report-check-result"

# Runs in the page once everything has loaded; leaves its findings in a <pre id=MARK>.
PROBE = """
<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const out = {width: width, scroll_width: document.documentElement.scrollWidth,
               broken: [], wide: [], wrapped: []};
  document.querySelectorAll('img').forEach((img, i) => {
    if (!img.complete || img.naturalWidth === 0) out.broken.push(img.alt || ('image ' + (i + 1)));
  });
  document.querySelectorAll('td, th').forEach((cell) => {
    const box = cell.getBoundingClientRect();
    const text = cell.textContent.trim().slice(0, 60);
    if (box.right > width + 0.5 || cell.scrollWidth > cell.clientWidth + 1) {
      out.wide.push({text: text, right: Math.round(box.right)});
    }
    // lines of text: a box starting below the bottom of the line so far starts a new one
    // (boxes of one line, say a <code> beside plain text, overlap in height); long prose
    // may wrap, a short value (a number with its interval, a verdict) should not
    const range = document.createRange();
    range.selectNodeContents(cell);
    const boxes = Array.from(range.getClientRects()).filter((r) => r.width > 0 && r.height > 0)
      .sort((a, b) => a.top - b.top);
    let lines = 0, bottom = -Infinity;
    boxes.forEach((r) => {
      if (r.top >= bottom - 1) { lines += 1; bottom = r.bottom; }
      else { bottom = Math.max(bottom, r.bottom); }
    });
    if (text && text.length <= 30 && lines > 1) out.wrapped.push(text);
  });
  const pre = document.createElement('pre');
  pre.id = 'MARK';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
""".replace("'MARK'", f"'{MARK}'")


class _Refs(html.parser.HTMLParser):
    """Collects ``<img src>`` and ``<a href>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append((a.get("alt", ""), a.get("src", "")))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])


def static_problems(page: Path) -> list[str]:
    """Broken embedded images and missing figure files, found without a browser."""
    refs = _Refs()
    refs.feed(page.read_text(encoding="utf-8"))
    problems = []
    for k, (alt, src) in enumerate(refs.images, 1):
        name = alt[:60] or f"image {k}"
        if src.startswith("data:image/png;base64,"):
            try:
                data = base64.b64decode(src.split(",", 1)[1], validate=True)
            except (binascii.Error, ValueError):
                problems.append(f"image '{name}': its base64 does not decode")
                continue
            if not data.startswith(PNG_MAGIC):
                problems.append(f"image '{name}': not a PNG")
        elif src.startswith("data:"):
            continue
        elif not src or not (page.parent / src).is_file():
            problems.append(f"image '{name}': {src or 'no src'} does not exist")
    for href in refs.links:
        if re.match(r"^[\w./-]+\.(pdf|svg|png)$", href) and not (page.parent / href).is_file():
            problems.append(f"link to {href}: the file does not exist")
    return problems


def find_browser() -> list[str] | None:
    """The command of a headless Chromium, or ["playwright"], or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return [path]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return ["playwright"]


def render(browser: list[str], page: Path, width: int, screenshot: Path | None) -> dict[str, Any]:
    """Load ``page`` (with :data:`PROBE` appended) in the browser; return the probe's findings."""
    text = page.read_text(encoding="utf-8")
    probed = text.replace("</body>", PROBE + "</body>") if "</body>" in text else text + PROBE
    # beside the page, so that relative links and images resolve as they do for a reader
    fd, tmp_name = tempfile.mkstemp(prefix=".report-check-", suffix=".html", dir=page.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(probed)
        if browser == ["playwright"]:
            return _render_playwright(tmp, width, screenshot)
        flags = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                 f"--window-size={width},1000", "--virtual-time-budget=15000"]
        if screenshot is not None:
            subprocess.run([*browser, *flags, f"--screenshot={screenshot}", tmp.as_uri()],
                           capture_output=True, timeout=180, check=False)
        done = subprocess.run([*browser, *flags, "--dump-dom", tmp.as_uri()], capture_output=True,
                              text=True, timeout=180, check=False)
        match = re.search(rf'<pre id="{MARK}">(.*?)</pre>', done.stdout, re.S)
        if match is None:
            raise RuntimeError(f"{browser[0]} rendered no result for {page} "
                               f"(exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return json.loads(html.unescape(match.group(1)))
    finally:
        tmp.unlink(missing_ok=True)


def _render_playwright(page: Path, width: int, screenshot: Path | None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch()
        tab = browser.new_page(viewport={"width": width, "height": 1000})
        tab.goto(page.as_uri(), wait_until="load")
        tab.wait_for_selector(f"#{MARK}", state="attached", timeout=60_000)
        found = json.loads(tab.inner_text(f"#{MARK}"))
        if screenshot is not None:
            tab.evaluate(f"document.getElementById('{MARK}').remove()")
            tab.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return found


def main(argv: list[str] | None = None) -> int:
    """Check every HTML report under the given paths; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("docs/results")])
    parser.add_argument("--width", type=int, default=1400, help="window width in CSS pixels (1400)")
    parser.add_argument("--screenshots", type=Path, default=None, help="save a full-page PNG of each here")
    args = parser.parse_args(argv)
    pages = sorted({p for root in args.paths for p in ([root] if root.is_file() else root.rglob("*.html"))
                    if not p.name.startswith(".")})
    if not pages:
        print(f"report-check: no HTML report under {', '.join(map(str, args.paths))}")
        return 1
    browser = find_browser()
    failed = False
    for page in pages:
        problems = static_problems(page)
        if browser is not None:
            shot = None
            if args.screenshots is not None:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                shot = (args.screenshots / f"{page.parent.name}-{page.stem}.png").resolve()
            found = render(browser, page, args.width, shot)
            problems += [f"broken image: {alt}" for alt in found["broken"]]
            edge = found["width"]
            problems += [f"table cell past the right edge ({c['right']} px > {edge} px): {c['text']!r}"
                         for c in found["wide"]]
            if found["scroll_width"] > edge:
                problems.append(f"the page scrolls sideways ({found['scroll_width']} px > {edge} px)")
            wrapped = found["wrapped"]
            problems += [f"short cell wraps: {text!r}" for text in wrapped[:10]]
            if len(wrapped) > 10:
                problems.append(f"... and {len(wrapped) - 10} more short cells wrap")
        failed = failed or bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {page}")
        for line in problems:
            print(f"     {line}")
    if browser is None:
        print("report-check: rendering skipped, no headless Chromium found (install the Debian "
              "package `chromium`, or `pip install playwright && playwright install chromium`); "
              "the static checks ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
