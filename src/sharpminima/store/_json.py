"""Canonical JSON for the store: one spelling per value, strict JSON on disk.

Every JSON document the store writes (configs, metrics, summaries, measurement params,
checkpoint sidecars) goes through :func:`dumps`: keys sorted, no spaces, UTF-8, tuples
written as lists. The same value therefore always hashes the same
(:func:`hash_json`), whatever the order its dict was built in.

Non-finite floats. Standard JSON has no NaN or infinity, and metrics of a diverged run
are NaN or inf, so the store writes ``float("nan")``, ``float("inf")`` and
``float("-inf")`` as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the
spellings of JavaScript and of Python's own non-standard JSON), and :func:`loads` turns
exactly those three strings back into floats. The documents stay strict JSON (SQLite's
``json_extract`` and ``jq`` read them); the price is that a *string* value spelled
``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` comes back as a float. Dict keys are never
converted.
"""

# ruff: noqa: D413  (Google style: no blank line closes a docstring; pyproject lacks convention)

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from sharpminima.errors import StoreError

__all__ = [
    "MAX_CHARS",
    "MAX_DEPTH",
    "decode_nonfinite",
    "dumps",
    "encode_nonfinite",
    "hash_json",
    "loads",
    "parse",
]

#: Longest JSON document the store reads (characters): far above any config, summary or
#: sidecar it writes (a sidecar describes tensors, it does not hold them).
MAX_CHARS = 64 * 2**20
#: Deepest nesting the store reads; its documents nest a few levels (an optimizer's
#: state description about ten).
MAX_DEPTH = 100

_TO_STRING = {math.inf: "Infinity", -math.inf: "-Infinity"}
_FROM_STRING = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_nonfinite(value: Any) -> Any:
    """Return ``value`` with non-finite floats replaced by their string spellings.

    Containers are rebuilt (dicts stay dicts, lists and tuples become lists); every other
    value is returned as is. Scalars with an ``item()`` method (numpy and 0-d torch
    scalars) become Python numbers first.

    Args:
        value: A JSON-like value.

    Returns:
        The same value with NaN/inf written as ``"NaN"``/``"Infinity"``/``"-Infinity"``.
    """
    if isinstance(value, dict):
        return {key: encode_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_nonfinite(item) for item in value]
    if not isinstance(value, str | int | float | type(None)) and hasattr(value, "item"):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):  # a multi-element array stays put
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _TO_STRING[value]
    return value


def decode_nonfinite(value: Any) -> Any:
    """Undo :func:`encode_nonfinite` on a parsed JSON value (dict keys are left alone).

    Args:
        value: A value parsed from JSON.

    Returns:
        The value with ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` turned into floats.
    """
    if isinstance(value, dict):
        return {key: decode_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_nonfinite(item) for item in value]
    if isinstance(value, str):
        return _FROM_STRING.get(value, value)
    return value


def dumps(value: Any, *, what: str = "value") -> str:
    """Serialise ``value`` as canonical strict JSON (sorted keys, compact, UTF-8).

    Args:
        value: A JSON-like value: dicts with string keys, lists, tuples, str, int, float,
            bool, None. NaN and infinities are written as strings (see module docstring).
        what: What the value is, for the error message (``"config"``, ``"metrics"``...).

    Returns:
        The JSON text.

    Raises:
        StoreError: The value holds something JSON cannot represent (a tensor, a set,
            a non-string dict key...).
    """
    try:
        return json.dumps(
            encode_nonfinite(value),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"{what} is not JSON-serialisable ({exc}); pass only dicts with string keys, "
            "lists, str, int, float, bool and None"
        ) from None


def parse(text: str | bytes, *, what: str = "JSON") -> Any:
    """Parse strict JSON read from a file or a column, within :data:`MAX_CHARS` and :data:`MAX_DEPTH`.

    The store's own documents are small and shallow; a tampered or hostile one (a sidecar
    nested 200,000 levels deep, a gigabyte of text) ends in one error instead of a
    ``RecursionError`` or all of memory. Non-finite spellings are left as strings.

    Args:
        text: The JSON text.
        what: What it is, for the error message.

    Returns:
        The parsed value.

    Raises:
        StoreError: Too long, nested too deeply, or not JSON.
    """
    if len(text) > MAX_CHARS:
        raise StoreError(
            f"{what} is {len(text)} characters long, over the {MAX_CHARS} a store document may be"
        )
    too_deep = f"{what} is nested deeper than {MAX_DEPTH} levels; it was not written by sharpminima"
    try:
        value = json.loads(text)
    except RecursionError:
        raise StoreError(too_deep) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise StoreError(f"{what} is not valid JSON ({exc})") from None
    # Measure the depth without recursion (the parser's own limit is far above ours).
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise StoreError(too_deep)
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return value


def loads(text: str | None, *, default: Any = None, what: str = "JSON") -> Any:
    """Parse JSON written by :func:`dumps`, turning non-finite spellings back into floats.

    Args:
        text: The JSON text, or None (a NULL column).
        default: What to return for None.
        what: What it is, for the error message.

    Returns:
        The parsed value.

    Raises:
        StoreError: As :func:`parse`.
    """
    if text is None:
        return default
    return decode_nonfinite(parse(text, what=what))


def hash_json(value: Any, *, what: str = "value") -> str:
    """Return the hex SHA-256 of the canonical JSON of ``value``.

    Dict order does not matter; ``1`` and ``1.0`` hash differently, as do a list and a
    string. Tuples hash like lists.

    Args:
        value: A JSON-like value.
        what: What the value is, for the error message.

    Returns:
        64 lowercase hex digits.

    Raises:
        StoreError: The value is not JSON-serialisable.
    """
    return hashlib.sha256(dumps(value, what=what).encode("utf-8")).hexdigest()
