"""The measure registry: every landscape measure defined once, and one cached way to run it.

A :class:`Measure` is a name, a frozen typed parameters dataclass (a
:class:`MeasureParams`), a ``compute(inputs, params) -> Result`` function, what it needs
besides an objective and a point (:class:`Needs`) and a rough cost for progress bars. Each
measure module registers its measures with :func:`register_measure` at import; the
command line (``sharpminima measure --what NAME``, its ``--help`` generated from here),
``reproduce``, the studies and the training callbacks all reach them through
:func:`get_measure` and :func:`cached_measure`, so a new measure is one file plus its
registration, and nobody invents a second name for it.

A measurement's identity in the store (:meth:`Request.key`) is the measure's canonical
parameters (fields a setting makes irrelevant are dropped: the subspace seed of a
full-space sharpness, say), the data it averages over (:class:`DataSpec`: split, the
actual number of samples, so "all samples" and their count are one key, batch size, BN
mode, loss) and the point (``"final"`` weights, ``"epoch=5"``...).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from torch import Tensor, nn

from sharpminima.errors import ConfigError
from sharpminima.store.provenance import note_measurement

#: Modules whose import registers the built-in measures.
BUILTIN_MODULES = (
    "sharpminima.landscape.sharpness",
    "sharpminima.landscape.eigen",
    "sharpminima.landscape.trace",
    "sharpminima.landscape.density",
    "sharpminima.landscape.curvature",
    "sharpminima.landscape.flatness",
    "sharpminima.landscape.noise",
    "sharpminima.landscape.norms",
    "sharpminima.landscape.surface",
    "sharpminima.landscape.epsilon",
    "sharpminima.landscape.interpolate",
    "sharpminima.landscape.evaluation",
    "sharpminima.landscape.pacbayes",
    "sharpminima.landscape.relative_flatness",
)

#: Renamed parameters: old name -> new name (accepted with a DeprecationWarning).
RENAMED = {
    "maxiter": "max_iters",
    "samples": "num_probes",
    "trace_samples": "num_probes",
    "probes": "num_probes",
}


# --------------------------------------------------------------------------- parameters
def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Fit ``value`` to the type ``hint`` (ints to floats, lists to tuples) or raise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name} cannot be {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = (value,)
        inner = args[0] if args else Any
        return tuple(_coerce(name, v, inner) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value


@dataclass(frozen=True)
class MeasureParams:
    """Base of every measure's parameters: frozen, typed and validated on construction.

    Values are fitted to the annotated types (an int given for a float field becomes a
    float, so ``eps=1`` and ``eps=1.0`` are one key); subclasses check ranges in
    :meth:`validate` and drop settings that do not matter in :meth:`canonical`.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~sharpminima.errors.ConfigError` for values out of range."""

    def canonical(self) -> dict[str, Any]:
        """The parameters as they identify a measurement: those that do not matter here None."""
        return dataclasses.asdict(self)

    def key(self) -> dict[str, Any]:
        """The canonical parameters as a JSON-friendly dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.canonical().items()}


def positive(name: str, value: float | int | None, *, integer: bool = False) -> None:
    """Raise a ConfigError unless ``value`` is None or positive.

    Raises:
        ConfigError: For a value <= 0.
    """
    if value is not None and not value > 0:
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


# --------------------------------------------------------------------------- measures
@dataclass(frozen=True)
class Needs:
    """What a measure needs besides its parameters.

    Attributes:
        data: An objective over data (False: the point alone, e.g. a weight norm).
        network: A network objective (names, model, per-sample data...).
        initial: The initial weights ``x0``.
        other: A second point (an interpolation's other end).
        test: A test-set objective (optional when not strictly needed).
    """

    data: bool = True
    network: bool = False
    initial: bool = False
    other: bool = False
    test: bool = False


@dataclass
class Inputs:
    """What a measure computes on.

    Attributes:
        objective: The objective (a network's mean loss over its data), or None when the
            measure needs no data.
        x: The point, flat ``(n,)``.
        x0: Initial weights (measures of distance from the start).
        other: A second point (interpolation).
        test: A test-set objective (interpolation's test curve).
        models: The two endpoint networks (interpolation with interpolated BN buffers).
        model: The network holding ``x`` (measures of its layers).
    """

    objective: Any
    x: Tensor
    x0: Tensor | None = None
    other: Tensor | None = None
    test: Any = None
    models: tuple[nn.Module, nn.Module] | None = None
    model: nn.Module | None = None


@dataclass(frozen=True)
class Measure:
    """One registered measure.

    Attributes:
        name: Its one name (also the store's measurement kind).
        params: Its parameters dataclass (a :class:`MeasureParams` subclass).
        compute: ``compute(inputs, params) -> Result`` (a frozen result with ``value``).
        summary: One line for ``--help`` and the docs.
        needs: What it needs besides the parameters.
        aliases: Other names accepted on the command line (earlier names).
        bn_mode: A BatchNorm mode the measure must use whatever was asked (per-example
            gradients need ``"eval"``), as a function of its parameters, or None.
        passes: Rough cost in gradient passes over the data (for progress estimates).
    """

    name: str
    params: type[MeasureParams]
    compute: Callable[[Inputs, Any], Any]
    summary: str
    needs: Needs = field(default_factory=Needs)
    aliases: tuple[str, ...] = ()
    bn_mode: Callable[[Any], str | None] = field(default=lambda params: None, repr=False)
    passes: Callable[[Any], float] = field(default=lambda params: 1.0, repr=False)

    def make_params(self, values: dict[str, Any] | None = None, **more: Any) -> MeasureParams:
        """Build this measure's parameters from ``values`` (unknown names are an error).

        Old parameter names (``maxiter``, ``samples``) are accepted with a warning.

        Raises:
            ConfigError: For an unknown name or a bad value.
        """
        given = {**(values or {}), **more}
        names = {f.name for f in dataclasses.fields(self.params)}
        for old, new in RENAMED.items():
            if old in given and old not in names and new in names:
                if new in given:
                    raise ConfigError(f"measure {self.name}: give {new} only ({old} is its old name)")
                warnings.warn(
                    f"measure {self.name}: {old} is deprecated, use {new}", DeprecationWarning, stacklevel=2
                )
                given[new] = given.pop(old)
        unknown = sorted(set(given) - names)
        if unknown:
            raise ConfigError(
                f"measure {self.name} has no parameter {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(names)) or 'none'}"
            )
        try:
            return self.params(**given)
        except TypeError as exc:  # a required field left out
            raise ConfigError(f"measure {self.name}: {exc}") from None

    def parameter_help(self) -> str:
        """``name=default`` for every parameter, for help texts."""
        out = []
        for f in dataclasses.fields(self.params):
            default = f.default if f.default is not dataclasses.MISSING else "required"
            out.append(f"{f.name}={default}")
        return ", ".join(out)


_REGISTRY: dict[str, Measure] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register_measure(measure: Measure) -> Measure:
    """Add ``measure`` to the registry (replacing one of the same name) and return it.

    Raises:
        ConfigError: If a parameter name clashes with the data fields of a key, or an alias
            names another measure.
    """
    clash = {f.name for f in dataclasses.fields(measure.params)} & DATA_FIELDS
    if clash:
        raise ConfigError(
            f"measure {measure.name}: parameter names {sorted(clash)} are data fields of the key"
        )
    for alias in measure.aliases:
        if _ALIASES.get(alias, measure.name) != measure.name:
            raise ConfigError(f"alias {alias!r} already names measure {_ALIASES[alias]!r}")
    _REGISTRY[measure.name] = measure
    for alias in (*measure.aliases, measure.name.replace("_", "-")):
        _ALIASES[alias] = measure.name
    return measure


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def get_measure(name: str) -> Measure:
    """The measure called ``name`` (or one of its aliases).

    Raises:
        ConfigError: For an unknown name (the message lists the known ones).
    """
    _load_builtins()
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown measure {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def all_measures() -> list[Measure]:
    """Every registered measure, by name."""
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def compute(
    name: str, objective: Any, x: Tensor, params: MeasureParams | dict[str, Any] | None = None, **inputs: Any
) -> Any:
    """Compute measure ``name`` at ``x`` on ``objective`` (no cache).

    Args:
        name: A measure name or alias.
        objective: The objective (None for measures that need no data).
        x: The point ``(n,)``.
        params: Its parameters (an instance, a dict, or None for the defaults).
        **inputs: ``x0``, ``other``, ``test``, ``models``, ``model`` (see :class:`Inputs`).

    Returns:
        The measure's result.

    Raises:
        ConfigError: For an unknown measure, bad parameters or missing inputs.
    """
    measure = get_measure(name)
    if not isinstance(params, MeasureParams):
        params = measure.make_params(params)
    return run(measure, Inputs(objective, x, **inputs), params)


def run(measure: Measure, inputs: Inputs, params: MeasureParams) -> Any:
    """Check ``inputs`` against the measure's needs, then compute it.

    Raises:
        ConfigError: For a missing input or a point that is not finite.
    """
    from sharpminima.landscape.objective import is_network

    needs = measure.needs
    if needs.data and inputs.objective is None:
        raise ConfigError(f"measure {measure.name} needs an objective (a model and its data)")
    if needs.network and not is_network(inputs.objective):
        raise ConfigError(f"measure {measure.name} needs a network objective (a model and its data)")
    if needs.initial and inputs.x0 is None:
        raise ConfigError(f"measure {measure.name} needs the initial weights (x0)")
    if needs.other and inputs.other is None:
        raise ConfigError(f"measure {measure.name} needs a second point (other)")
    if not bool(inputs.x.isfinite().all()):
        raise ConfigError(
            f"the weights are not finite (NaN or infinite entries), so {measure.name} is not defined; "
            "the run probably diverged"
        )
    return measure.compute(inputs, params)


# --------------------------------------------------------------------------- identity
@dataclass(frozen=True)
class DataSpec:
    """The data a measurement averages over, as part of its store key.

    Attributes:
        split: ``"train"`` or ``"test"`` (or another name of the caller's).
        num_samples: The actual number of samples (so "all" and its count are one key).
        chunk_size: Samples per batch (BatchNorm statistics per batch in batch mode).
        bn_mode: ``"batch"`` or ``"eval"``.
        loss: The loss adapter's spec.
        source: An identity of external data (a factory and a hash), or None.
    """

    split: str = "train"
    num_samples: int | None = None
    chunk_size: int | None = None
    bn_mode: str = "batch"
    loss: str = "cross_entropy"
    source: str | None = None

    def key(self) -> dict[str, Any]:
        """As a dict (None fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


DATA_FIELDS = frozenset(f.name for f in dataclasses.fields(DataSpec)) | {"point"}


@dataclass(frozen=True)
class Request:
    """One measurement: a measure, its parameters, the data and the point.

    Attributes:
        measure: The measure's name.
        params: Its parameters.
        data: The data (None for measures that need none).
        point: Which weights: ``"final"``, ``"epoch=5"``, ``"init"``...
    """

    measure: str
    params: MeasureParams
    data: DataSpec | None = None
    point: str = "final"

    @classmethod
    def of(
        cls,
        name: str,
        data: DataSpec | None = None,
        point: str = "final",
        params: dict[str, Any] | MeasureParams | None = None,
        **values: Any,
    ) -> Request:
        """Build a request by measure name; the data spec takes the measure's fixed BN mode.

        Raises:
            ConfigError: For an unknown measure or bad parameters.
        """
        measure = get_measure(name)
        p = params if isinstance(params, MeasureParams) else measure.make_params(params, **values)
        if not measure.needs.data:
            data = None
        elif data is not None:
            fixed = measure.bn_mode(p)
            if fixed is not None and fixed != data.bn_mode:
                data = dataclasses.replace(data, bn_mode=fixed)
        return cls(measure.name, p, data, point)

    def key(self) -> dict[str, Any]:
        """The store key: canonical parameters, data fields and the point."""
        out = self.params.key()
        if self.data is not None:
            out.update(self.data.key())
        out["point"] = self.point
        return out


class MeasurementCache(Protocol):
    """Where measurements are kept (a :class:`~sharpminima.store.Store` is one)."""

    def get_measurement(self, run_id: str, kind: str, params: dict) -> dict[str, Any] | None:
        """The stored measurement, or None."""
        ...

    def add_measurement(
        self, run_id: str, kind: str, params: dict, value: float, cost: dict, result: dict
    ) -> int:
        """Store a measurement."""
        ...


@dataclass(frozen=True)
class Record:
    """A measurement as stored: value, cost and the whole result, and whether it was reused.

    Attributes:
        value: The headline number.
        cost: Evaluations and seconds (those of the computation that made it).
        result: The result's JSON record.
        reused: Whether it came from the cache.
        request: What was measured.
    """

    value: float
    cost: dict[str, Any]
    result: dict[str, Any]
    reused: bool
    request: Request

    def __getitem__(self, key: str) -> Any:
        """``record["value"]``, ``record["cost"]``, ``record["result"]`` (dict-like reads)."""
        return getattr(self, key)


def cached_measure(
    cache: MeasurementCache | None,
    owner: str,
    request: Request,
    build: Callable[[], Inputs],
) -> Record:
    """Return the stored measurement of ``request``, or compute, store and return it.

    Args:
        cache: The store (None: compute, keep nothing).
        owner: The run the measurement belongs to.
        request: What to measure.
        build: Makes the inputs (objective, point...), called only when computing.

    Returns:
        The :class:`Record`.

    Raises:
        ConfigError: As the measure does.
    """
    key = request.key()
    found = cache.get_measurement(owner, request.measure, key) if cache is not None else None
    if found is not None:
        note_measurement(owner, request.measure, key, reused=True)
        return Record(float(found["value"]), found["cost"] or {}, found["result"], True, request)
    measure = get_measure(request.measure)
    result = run(measure, build(), request.params)
    note_measurement(owner, request.measure, key, reused=False)
    record = result.to_record() if hasattr(result, "to_record") else dict(result)
    value = float(record.get("value", math.nan))
    cost = dict(record.get("cost", {}) or {})
    if cache is None:
        return Record(value, cost, record, False, request)
    cache.add_measurement(owner, request.measure, key, value, cost, record)
    stored = cache.get_measurement(owner, request.measure, key)
    assert stored is not None
    return Record(float(stored["value"]), stored["cost"] or {}, stored["result"], False, request)
