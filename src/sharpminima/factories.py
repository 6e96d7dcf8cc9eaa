"""User factories named ``module:function``: imported and called inside one guard.

Networks (``--net``, ``--model``), data (``--dataset``/``--data``) and losses
(``--loss``) can be a user's function. Whatever goes wrong, a module that does not import
(a syntax error, an exception at import), a missing name, a function with the wrong
signature or one that raises, ends as one :class:`~sharpminima.errors.ConfigError`
line naming the factory.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from sharpminima.errors import ConfigError, SharpMinimaError


def import_object(spec: str, what: str) -> Any:
    """Import ``"package.module:attribute"`` (a factory, a loss), with one clear error.

    Raises:
        ConfigError: If ``spec`` is malformed, the module fails to import (any exception,
            a syntax error included) or has no such attribute.
    """
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ConfigError(f"{what} {spec!r} must be written module:attribute (e.g. mypkg.nets:build)")
    try:
        module = importlib.import_module(module_name.strip())
    except (Exception, SystemExit) as exc:  # a user module may raise anything at import
        raise ConfigError(f"cannot import {what} {spec!r}: {type(exc).__name__}: {exc}") from None
    try:
        obj = module
        for part in attr.strip().split("."):
            obj = getattr(obj, part)
    except Exception:  # AttributeError, or whatever a module's __getattr__ raises
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r} ({what} {spec!r})") from None
    return obj


def call_factory(spec: str, what: str, check: Callable[[Any], bool], expected: str, *args: Any) -> Any:
    """Import ``module:function``, call it with ``args`` and check what it returns.

    Raises:
        ConfigError: If it does not import, is not callable, does not take ``args``,
            raises, or returns something ``check`` rejects (the message names the factory
            and what it should return).
    """
    factory = import_object(spec, what)
    if not callable(factory):
        raise ConfigError(f"{what} {spec!r} is a {type(factory).__name__}, not a function")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none: the call below decides
        signature = None
    if signature is not None:
        try:
            signature.bind(*args)
        except TypeError as exc:  # never called: a wrong signature runs none of its code
            raise ConfigError(
                f"{what} {spec!r} cannot be called with {len(args)} argument(s) ({exc}); "
                f"it must take {len(args)}"
            ) from None
    try:
        out = factory(*args)
    except SharpMinimaError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{what} {spec!r} cannot be called with {len(args)} argument(s): {exc}") from None
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"{what} {spec!r} raised {type(exc).__name__}: {exc}") from None
    try:
        ok = check(out)
    except Exception:  # a hostile return value whose checks themselves fail
        ok = False
    if not ok:
        raise ConfigError(f"{what} {spec!r} returned a {type(out).__name__}; it must return {expected}")
    return out
