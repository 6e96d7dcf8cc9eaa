"""Renamed keyword arguments: the old names keep working for one release, with a warning.

One name per concept across the code and the command line: ``max_iters`` (iterations of an
optimiser), ``num_probes`` (random probe vectors of a stochastic estimator),
``num_samples`` (training samples a loss averages over) and ``num_draws`` (random
perturbations averaged). :func:`renamed` maps the older names (``maxiter``, ``samples``,
``num_samples`` for draws...) onto them and warns with :class:`DeprecationWarning`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from sharpminima.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Decorate a function so that ``old=value`` is accepted as ``new=value`` (with a warning).

    Args:
        **old_to_new: Old keyword name -> new keyword name.

    Raises:
        ConfigError: (from the wrapped call) When both the old and the new name are given.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigError(f"{fn.__name__}: give {new}= only ({old}= is its old name)")
                    warnings.warn(
                        f"{fn.__name__}: the keyword {old}= is deprecated, use {new}=",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__renamed__ = dict(old_to_new)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
