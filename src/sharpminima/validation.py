"""Typed, bounded checks of values a user gives: numbers, devices, output files.

One set of validators shared by the config dataclasses (``__post_init__``) and the
command line (:func:`sharpminima.cli.common.validated`), so a value is checked the same
way whichever edge it enters by. Every check raises :class:`~sharpminima.errors.ConfigError`
with one line naming the value, what it must be and what it was.

Numbers are finite (NaN and infinities are never a meaningful option) and integers fit
a signed 64-bit integer (what torch seeds and SQLite hold); each option adds its own
range (a positive learning rate, a momentum in [0, 1], at least one worker...).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharpminima.errors import ConfigError

__all__ = [
    "MAX_INT",
    "Bound",
    "check_device",
    "check_number",
    "check_output_file",
    "check_text",
]

#: Largest integer any option takes (a signed 64-bit integer: torch seeds, SQLite rows).
MAX_INT = 2**63 - 1

_DEVICE_RE = re.compile(r"(cpu|cuda|mps)(:\d{1,4})?")


@dataclass(frozen=True)
class Bound:
    """The range of one number: ``gt``/``ge`` below, ``lt``/``le`` above, ``integer``.

    Attributes:
        gt: Exclusive lower bound.
        ge: Inclusive lower bound.
        lt: Exclusive upper bound.
        le: Inclusive upper bound.
        integer: Whether the value must be an integer (bool is never one).
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    integer: bool = False

    def describe(self) -> str:
        """``"a positive integer"``, ``"a finite number in [0, 1]"``, ``"an integer >= 2"``..."""
        kind = "an integer" if self.integer else "a finite number"
        cap = "" if self.le is None else f" (at most {self.le:g})"
        if self.lt is None:
            if self.gt == 0 or (self.integer and self.ge == 1):
                return ("a positive integer" if self.integer else "a positive number") + cap
            if self.ge == 0 and (self.integer or self.le is None):
                return ("a non-negative integer" if self.integer else "a non-negative number") + cap
        low = f"> {self.gt:g}" if self.gt is not None else (f">= {self.ge:g}" if self.ge is not None else "")
        high = f"< {self.lt:g}" if self.lt is not None else (f"<= {self.le:g}" if self.le is not None else "")
        if low and high:
            left = "(" if self.gt is not None else "["
            right = ")" if self.lt is not None else "]"
            lo = self.gt if self.gt is not None else self.ge
            hi = self.lt if self.lt is not None else self.le
            return f"{kind} in {left}{lo:g}, {hi:g}{right}"
        return " ".join(part for part in (kind, low or high) if part)


#: Common ranges.
POSITIVE_INT = Bound(ge=1, integer=True)
NON_NEGATIVE_INT = Bound(ge=0, integer=True)
POSITIVE = Bound(gt=0)
NON_NEGATIVE = Bound(ge=0)
FINITE = Bound()
UNIT_INTERVAL = Bound(ge=0, le=1)


def check_number(name: str, value: Any, bound: Bound = FINITE) -> Any:
    """Return ``value`` if it is a finite number (an int if asked) within ``bound``.

    Args:
        name: What the value is, as the user wrote it (``"--lr"``, ``"learning rate"``).
        value: The value.
        bound: Its range.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: If it is not a number, not finite, not an integer when one is
            needed, outside the 64-bit integer range, or outside ``bound``.
    """
    want = bound.describe()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be {want}, got {value!r}")
    if bound.integer and not isinstance(value, int):
        raise ConfigError(f"{name} must be {want}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be {want}, got {value}")
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise ConfigError(f"{name} must be {want} of at most {MAX_INT}, got {value}")
    if (
        (bound.gt is not None and not value > bound.gt)
        or (bound.ge is not None and not value >= bound.ge)
        or (bound.lt is not None and not value < bound.lt)
        or (bound.le is not None and not value <= bound.le)
    ):
        raise ConfigError(f"{name} must be {want}, got {value}")
    return value


def check_text(name: str, value: str, *, max_length: int = 4096) -> str:
    """Return ``value`` if it has no NUL character and at most ``max_length`` characters.

    Raises:
        ConfigError: Otherwise (a NUL cannot be part of a path, a module name or a value).
    """
    if "\x00" in value:
        raise ConfigError(f"{name} contains a NUL character; give printable text")
    if len(value) > max_length:
        raise ConfigError(f"{name} is {len(value)} characters long; at most {max_length} are accepted")
    return value


def check_device(name: str, text: str | None) -> Any:
    """Return the ``torch.device`` named ``text`` (None: CUDA if available, else CPU).

    Args:
        name: What the value is (``"--device"``).
        text: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or None.

    Returns:
        The device.

    Raises:
        ConfigError: For another name, CUDA on a build or machine without it, a CUDA
            index past the visible devices, or MPS where it is unavailable.
    """
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = str(text).strip().lower()
    if not _DEVICE_RE.fullmatch(spec):
        raise ConfigError(f"{name} {text!r} is not a device; use cpu, cuda, cuda:N or mps")
    kind, _, index = spec.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{name} {text!r}: this PyTorch build or machine has no CUDA device; use --device cpu"
            )
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ConfigError(
                f"{name} {text!r}: only {count} CUDA device(s) are visible (cuda:0..{count - 1})"
            )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{name} {text!r}: MPS is not available here; use --device cpu")
    if index and kind != "cuda":
        raise ConfigError(f"{name} {text!r}: only cuda takes an index; use {kind}")
    return torch.device(spec)


def check_output_file(name: str, path: str | os.PathLike[str], suffixes: tuple[str, ...] = ()) -> Path:
    """Return ``path`` if a file can be written there: not a folder, its folder exists.

    Args:
        name: What the path is (``"--plot"``).
        path: The file to write.
        suffixes: Accepted suffixes (lower case, with the dot), or () for any.

    Returns:
        The path.

    Raises:
        ConfigError: If it names a folder or something else that is not a regular file,
            its folder is missing or is a file, or its suffix is not one of ``suffixes``.
    """
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        listed = ", ".join(suffixes[:-1]) + " or " + suffixes[-1] if len(suffixes) > 1 else suffixes[0]
        raise ConfigError(f"{name} must end in {listed}, got {str(path)!r}")
    if out.is_dir() or str(path).endswith(("/", os.sep)):
        raise ConfigError(f"{name} {str(path)!r} is a folder; give a file name inside it")
    if out.exists() and not out.is_file():
        raise ConfigError(f"{name} {str(path)!r} exists and is not a regular file; give another file name")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{name} {str(path)!r}: {parent} is not a folder")
    return out
