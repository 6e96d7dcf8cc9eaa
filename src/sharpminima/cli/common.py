"""Shared CLI plumbing: global flags, output helpers, progress bars, the store."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.models
from tqdm import tqdm

from sharpminima.errors import ConfigError
from sharpminima.validation import (
    FINITE,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    UNIT_INTERVAL,
    Bound,
    check_device,
    check_number,
    check_output_file,
    check_text,
)


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


def open_store(path: Path | None, *, read_only: bool = False) -> Any:
    """Open the run store at ``path``, ``$SHARPMINIMA_STORE`` or ``./runs``.

    Commands that only read (``runs list``, ``runs show``) pass ``read_only``: nothing is
    created or written, and a store on read-only media can be listed.
    """
    from sharpminima.store import Store

    root = path or Path(os.environ.get("SHARPMINIMA_STORE", "runs"))
    return Store(root, read_only=read_only)


class TrainProgress:
    """A tqdm bar over training steps, fed by the training loop's progress events."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc = desc
        self.enabled = enabled
        self.bar: tqdm | None = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        """Handle one progress event of :func:`sharpminima.train.train`."""
        if event == "start" and info.get("start_epoch") and is_root_process():
            # Said even without a bar: a rerun tells where it picks up.
            ids = ", ".join(info.get("run_ids", ()))
            print(f"resuming run {ids} from epoch {info['start_epoch']}", file=sys.stderr, flush=True)
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
    """``3`` -> 3, ``1e-3`` -> 0.001, ``true`` -> True, ``none`` -> None, ``a,b`` -> tuple.

    Raises:
        ConfigError: For an empty item in a list (``1,,2``) or a NaN or infinite number.
    """
    if "," in text:
        parts = text.split(",")
        if any(not part.strip() for part in parts):
            raise ConfigError(f"value {text!r} has an empty item; write a,b,c without empty items")
        return tuple(_option_value(part) for part in parts)
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            number = cast(text)
        except ValueError:
            continue
        if cast is float and not math.isfinite(number):
            raise ConfigError(f"value {text!r} is not a finite number")
        return number
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
        try:
            out[name.strip().replace("-", "_")] = _option_value(value.strip())
        except ConfigError as exc:
            raise ConfigError(f"{flag} {spec!r}: {exc}") from None
    return tuple(sorted(out.items()))


# ----------------------------------------------------------------------------- validation at the edge
#: The range of every numeric option, by parameter name (``"command.name"`` for one
#: command only). Every number is finite; an int option not listed must be >= 0 and a
#: float option not listed only finite. Work sizes have caps, so a typo cannot ask for
#: petabytes (each cap is far above any real use).
OPTION_BOUNDS: dict[str, Bound] = {
    **dict.fromkeys(
        ("batch_size", "patience", "train_limit", "test_limit", "num_samples", "samples",
         "sharpness_samples", "measure_samples", "chunk_size", "time_limit"),
        POSITIVE_INT,
    ),
    **dict.fromkeys(("epochs", "sb_epochs", "lb_epochs", "max_iters", "maxiter"),
                    Bound(ge=1, le=10**6, integer=True)),
    **dict.fromkeys(("trials", "profile_steps", "lanczos_steps", "k"), Bound(ge=1, le=10**4, integer=True)),
    **dict.fromkeys(("num_probes", "trace_samples", "bootstrap"), Bound(ge=1, le=10**6, integer=True)),
    "p": Bound(ge=1, le=10**7, integer=True),
    "points": Bound(ge=1, le=10**4, integer=True),
    "workers": Bound(ge=1, le=1024, integer=True),
    "max_retries": Bound(ge=0, le=1000, integer=True),
    **dict.fromkeys(("lr", "init_scale", "stale_after", "heartbeat", "poll", "cpus_per_run"), POSITIVE),
    **dict.fromkeys(("weight_decay", "gpus_per_run", "loss_threshold"), NON_NEGATIVE),
    "momentum": UNIT_INTERVAL,
}
#: Options naming a file the command writes (with the suffixes it accepts).
OUTPUT_FILES: dict[str, tuple[str, ...]] = {
    "measure.plot": (".png", ".pdf", ".svg"),
    "interpolate.out": (".png", ".pdf", ".svg"),
    "train.profile": (),
    "runs.export.out": (),
}
#: Options naming a file the command reads whole (a regular file, not a device or FIFO).
INPUT_FILES = ("measure.weights",)
#: Options naming a folder (the store): it may be missing, but not be a file.
FOLDERS = ("store", "slurm_folder")


def check_named(flag: str, pairs: dict[str, Any]) -> dict[str, Any]:
    """Check ``NAME=VALUE`` options (``--param``) whose name has a rule in :data:`OPTION_BOUNDS`.

    ``--param num_probes=1e30`` meets the same bound as ``--num-probes``.

    Raises:
        ConfigError: For a value outside its option's range.
    """
    for name, value in pairs.items():
        if name in OPTION_BOUNDS and not isinstance(value, bool) and isinstance(value, int | float):
            check_number(f"{flag} {name}", value, OPTION_BOUNDS[name])
    return pairs


def _flag(name: str, info: Any) -> str:
    decls = [d for d in getattr(info, "param_decls", None) or () if d.startswith("--")]
    if decls:
        return decls[0]
    if isinstance(info, typer.models.ArgumentInfo):
        return name.upper()
    return "--" + name.replace("_", "-")


def _check_option(command: str, name: str, flag: str, value: Any) -> None:
    """Check one parsed option value against its rule (see :data:`OPTION_BOUNDS`)."""
    if value is None:
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_option(command, name, flag, item)
        return
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        default = NON_NEGATIVE_INT if isinstance(value, int) else FINITE
        bound = OPTION_BOUNDS.get(f"{command}.{name}", OPTION_BOUNDS.get(name, default))
        if isinstance(value, int) and not bound.integer:
            value = float(value)
        check_number(flag, value, bound)
        return
    if isinstance(value, str | Path):
        check_text(flag, str(value))
    key = f"{command}.{name}"
    if name == "device":
        check_device(flag, str(value))
    elif key in OUTPUT_FILES:
        check_output_file(flag, value, OUTPUT_FILES[key])
    elif key in INPUT_FILES:
        if not Path(value).is_file():
            raise ConfigError(
                f"{flag} {str(value)!r} does not exist or is not a regular file; check the path"
            )
    elif name in FOLDERS and Path(value).exists() and not Path(value).is_dir():
        raise ConfigError(f"{flag} {str(value)!r} is not a folder; give a folder (it is created if missing)")


def validated(command: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so every option is checked before its body runs (one place for all).

    Numbers must be finite and within :data:`OPTION_BOUNDS`; text has no NUL; ``--device``
    names a device this machine has; output files are not folders; input files are
    regular files; ``--store`` is a folder. So a command fails with one ``error:`` line
    before it reads data or writes a row.

    Args:
        command: The command's name (``"train"``, ``"study.correlation"``).
        func: The command function (typer reads its signature through ``__wrapped__``).

    Returns:
        The wrapped function.
    """
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # an annotation that does not resolve: flags fall back to --name
        hints = {}
    flags = {}
    for name in inspect.signature(func).parameters:
        hint = hints.get(name)
        extras = typing.get_args(hint)[1:] if typing.get_origin(hint) is Annotated else ()
        info = next((e for e in extras if isinstance(e, typer.models.ParameterInfo)), None)
        flags[name] = _flag(name, info)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            _check_option(command, name, flags.get(name, name), value)
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt as exc:  # typer would turn it into a silent exit 130
            raise Interrupted(str(exc)) from exc

    return wrapper


class Interrupted(Exception):  # noqa: N818 - it is the event, not an error of the user
    """Ctrl-C or SIGTERM stopped a command (its runs are recorded ``interrupted``)."""
