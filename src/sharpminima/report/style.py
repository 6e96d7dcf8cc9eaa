"""The figure style, under its former name: everything here is :mod:`sharpminima.figstyle`.

The style moved to the top level so that :mod:`sharpminima.landscape` and the CLI can draw
in it without importing :mod:`sharpminima.report` (which imports the landscape). New code
imports :mod:`sharpminima.figstyle`.
"""

from __future__ import annotations

from sharpminima.figstyle import *  # noqa: F403  (its whole public API, as before the move)
from sharpminima.figstyle import __all__ as __all__
