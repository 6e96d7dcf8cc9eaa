"""User-facing errors.

Every error a user can cause (bad file, bad checksum, bad option) is a
:class:`SharpMinimaError` whose message is one line saying what was wrong and what to do.
The CLI prints that line and exits with code 2; tracebacks only with ``--debug``.
"""


class SharpMinimaError(Exception):
    """An error caused by input the user can fix; its message is one actionable line."""


class DataError(SharpMinimaError):
    """A dataset file is missing, corrupt, has the wrong checksum or the wrong shape."""


class ConfigError(SharpMinimaError):
    """A configuration value is invalid (unknown network, bad batch size, ...)."""


class StoreError(SharpMinimaError):
    """The run store is missing a run or checkpoint, or cannot be written."""
