"""Shared CLI plumbing: global flags, output helpers, progress bars, the store."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sharpminima.errors import ConfigError


@dataclass
class State:
    """Global CLI flags."""

    debug: bool = False
    quiet: bool = False


STATE = State()


def is_root_process() -> bool:
    """False in the processes of rank > 0 under torchrun: only rank 0 prints."""
    return os.environ.get("RANK", "0") in ("", "0")


def echo(text: str = "") -> None:
    """Print a line to stdout (the CLI is the only place that prints; rank 0 only)."""
    if is_root_process():
        print(text, flush=True)


def echo_json(obj: Any) -> None:
    """Print one JSON document (NaN and infinity become null)."""
    if not is_root_process():
        return
    print(json.dumps(_finite(obj), indent=None, sort_keys=False), flush=True)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def progress_enabled(json_output: bool = False) -> bool:
    """Progress bars go to stderr, only on a terminal, and never with ``--quiet``."""
    return not STATE.quiet and sys.stderr.isatty() and is_root_process()


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class WorkProgress:
    """Progress over planned work units: a tqdm bar on a terminal, stage lines otherwise.

    Called as ``progress(units, label)`` by the reproduction and the study. On a terminal
    (:func:`progress_enabled`) it drives a tqdm bar. When stderr is not a terminal (a log
    file, CI) a bar would print nothing useful, so it writes one line per stage to stderr:
    the label (what runs, ``n/m`` of the experiments), the share of the work done, the
    elapsed time and an estimate of the time left; and a line every ``heartbeat`` seconds
    within a long stage. ``--quiet`` silences both.
    """

    def __init__(self, desc: str, total: float, *, heartbeat: float = 60.0) -> None:
        import time

        self.desc = desc
        self.total = max(float(total), 0.0)
        self.done = 0.0
        self.heartbeat = heartbeat
        self._clock = time.monotonic
        self._t0 = self._clock()
        self._last_line = -math.inf
        self._last_label: str | None = None
        self.lines = not STATE.quiet and is_root_process() and not sys.stderr.isatty()
        self.bar = tqdm(
            total=round(self.total, 1), desc=desc, unit="work", file=sys.stderr,
            disable=not progress_enabled(), dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {percentage:.0f}% [{elapsed}<{remaining}] {postfix}",
        )

    def __call__(self, units: float, label: str) -> None:
        """Record ``units`` of work done, now running ``label``."""
        step = min(units, self.total - self.done) if self.total else units
        self.done += max(step, 0.0)
        self.bar.update(step)
        self.bar.set_postfix_str(label[:60], refresh=False)
        if not self.lines:
            return
        now = self._clock()
        if label != self._last_label or now - self._last_line >= self.heartbeat:
            self._last_label, self._last_line = label, now
            print(self.stage_line(label, now - self._t0), file=sys.stderr, flush=True)

    def stage_line(self, label: str, elapsed: float) -> str:
        """``desc: label | 34% of the work, 2m10s elapsed, about 4m12s left``."""
        share = self.done / self.total if self.total else 0.0
        left = f", about {_clock(elapsed * (1 - share) / share)} left" if 0 < share < 1 else ""
        return f"{self.desc}: {label} | {share:.0%} of the work, {_clock(elapsed)} elapsed{left}"

    def close(self) -> None:
        """Close the bar; in line mode, say how long it all took."""
        self.bar.close()
        if self.lines:
            print(f"{self.desc}: done in {_clock(self._clock() - self._t0)}", file=sys.stderr,
                  flush=True)


def open_store(path: Path | None) -> Any:
    """Open the run store at ``path``, ``$SHARPMINIMA_STORE`` or ``./runs``."""
    from sharpminima.store import Store

    root = path or Path(os.environ.get("SHARPMINIMA_STORE", "runs"))
    return Store(root)


class TrainProgress:
    """A tqdm bar over training steps, fed by the training loop's progress events."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc = desc
        self.enabled = enabled
        self.bar: tqdm | None = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        """Handle one progress event of :func:`sharpminima.train.train`."""
        if not self.enabled:
            return
        if event == "start":
            self.close()
            self.bar = tqdm(
                total=info["total_steps"],
                initial=info["done_steps"],
                desc=self.desc,
                unit="step",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        elif event == "step" and self.bar is not None:
            self.bar.update(1)
        elif event == "epoch" and self.bar is not None:
            self.bar.set_postfix(
                epoch=info["epoch"], loss=f"{info['train_loss']:.4f}", test_acc=f"{info['test_acc']:.2f}"
            )

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Render rows as a plain aligned text table."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _option_value(text: str) -> Any:
    """``3`` -> 3, ``1e-3`` -> 0.001, ``true`` -> True, ``none`` -> None, ``a,b`` -> tuple."""
    if "," in text:
        return tuple(_option_value(part) for part in text.split(",") if part != "")
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(flag: str, specs: list[str] | None) -> tuple[tuple[str, Any], ...]:
    """Turn repeated ``NAME=VALUE`` options into sorted ``(name, value)`` pairs.

    Values are read as int, float, true/false, none, or a comma-separated tuple of those;
    anything else stays a string.

    Raises:
        ConfigError: For an entry without ``=`` or with an empty name.
    """
    out: dict[str, Any] = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{flag} takes NAME=VALUE (e.g. {flag} rho=0.05), got {spec!r}")
        out[name.strip().replace("-", "_")] = _option_value(value.strip())
    return tuple(sorted(out.items()))
