"""Typed, frozen run configurations and the paper's named setups.

A :class:`TrainConfig` fully determines a training run; its :meth:`TrainConfig.hash` is
the run's identity in the store. The hash covers only fields that differ from their
defaults, so adding a new option (with a default) later never changes the identity of runs
already stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from sharpminima.errors import ConfigError
from sharpminima.validation import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    UNIT_INTERVAL,
    Bound,
    check_number,
    check_text,
)

#: Small-batch size of the paper (Section 2.2).
SB_BATCH_SIZE = 256
#: Large-batch fraction of the training set (Section 2.2).
LB_FRACTION = 0.10

Regime = Literal["sb", "lb"]
StopRule = Literal["epochs", "plateau"]


def regime_batch_size(regime: str, num_train: int) -> int:
    """Return the paper's batch size for a regime: SB = 256, LB = 10% of the training set.

    Args:
        regime: ``"sb"`` or ``"lb"``.
        num_train: Number of training samples (after any ``train_limit``).

    Raises:
        ConfigError: For an unknown regime.
    """
    if regime == "sb":
        return min(SB_BATCH_SIZE, num_train)
    if regime == "lb":
        return max(1, round(LB_FRACTION * num_train))
    raise ConfigError(f"unknown regime {regime!r}; use 'sb' (batch 256) or 'lb' (10% of data)")


#: Config fields holding a component's options as ``(name, value)`` pairs; they are
#: normalised on construction (sorted by name, lists made tuples), so a config rebuilt
#: from JSON equals the original and has the same hash.
OPTION_FIELDS = (
    "method_args",
    "optimizer_args",
    "batch_schedule_args",
    "lr_schedule_args",
    "augment_args",
)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _option_pairs(field_name: str, pairs: Any) -> tuple[tuple[str, Any], ...]:
    """Return ``pairs`` as a name-sorted tuple of ``(str, value)`` pairs (lists -> tuples).

    Raises:
        ConfigError: If an entry is not a ``(name, value)`` pair or a name repeats.
    """
    out = []
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ConfigError(f"{field_name} must hold (name, value) pairs, got {pair!r}")
        out.append((pair[0], _freeze(pair[1])))
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{field_name} names an option twice: {names}")
    return tuple(sorted(out))


#: Default torch intra-op threads of training (see ``TrainConfig.num_threads``).
TRAIN_THREADS = 2

#: Ranges of the numeric fields (:mod:`sharpminima.validation`); every number is finite.
_BOUNDS: dict[str, Bound] = {
    "batch_size": POSITIVE_INT,
    "epochs": POSITIVE_INT,
    "patience": POSITIVE_INT,
    "seed": NON_NEGATIVE_INT,
    "train_limit": POSITIVE_INT,
    "test_limit": POSITIVE_INT,
    "eval_chunk": POSITIVE_INT,
    "num_threads": Bound(ge=1, le=1024, integer=True),
    "lr": POSITIVE,
    "momentum": UNIT_INTERVAL,
    "adam_eps": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "min_improvement": Bound(ge=0, lt=1),
    "init_scale": POSITIVE,
}
_OPTIONAL = ("train_limit", "test_limit")
_LABELS = {"batch_size": "batch size", "lr": "learning rate", "weight_decay": "weight decay"}
_TEXT_FIELDS = ("net", "dataset", "optimizer", "method", "batch_schedule", "lr_schedule", "augment",
                "init", "init_from", "loss", "data_source")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one training run.

    Attributes:
        net: Network name (``f1``...``c4``) or ``module:function``.
        dataset: ``mnist``, ``cifar10``, ``cifar100``, ``timit``, ``synthetic``, or
            ``module:function`` naming a data factory (see :func:`sharpminima.data.load`).
        batch_size: Samples per step (the last batch of an epoch may be smaller).
        optimizer: Name in :data:`sharpminima.train.optim.OPTIMIZERS`.
        optimizer_args: Optimizer-specific options as ``(name, value)`` pairs (e.g. LARS's
            ``trust_coefficient``), see :func:`sharpminima.train.optim.optimizer_options`.
        lr: Learning rate (the paper's code: Adam, 1e-3, not re-tuned for LB).
        momentum: Momentum for SGD.
        betas: Adam's (beta1, beta2).
        adam_eps: Adam's epsilon.
        weight_decay: L2 penalty (coupled, as in torch's Adam/SGD; decoupled for AdamW).
        epochs: Fixed number of epochs (``stop="epochs"``) or the cap (``stop="plateau"``).
        stop: ``"epochs"`` trains exactly ``epochs`` epochs; ``"plateau"`` stops when the
            full-pass training loss has not improved by a relative ``min_improvement`` for
            ``patience`` consecutive epochs (the paper trains "until the loss ceased to
            improve"), or at ``epochs``.
        patience: Epochs without improvement before a plateau stop.
        min_improvement: Relative decrease of the training loss that counts as improvement.
        seed: Seeds the initial weights, every epoch's shuffle and dropout.
        train_limit: Use only the first N training samples.
        test_limit: Use only the first N test samples.
        data_source: Path to user-supplied data (CIFAR archive, TIMIT npz, MNIST IDX dir).
        save_every_epoch: Keep every epoch's weights (for warm starts, Figure 5/6).
        eval_chunk: Samples per forward pass when evaluating.
        method: Training method (``"plain"``; later work adds more), see
            :mod:`sharpminima.train.methods`.
        method_args: Method options as sorted ``(name, value)`` pairs.
        batch_schedule: How the batch size changes over epochs, a name in
            :data:`sharpminima.train.schedules.BATCH_SCHEDULES` (``"constant"`` uses
            ``batch_size`` throughout; the others start from it).
        batch_schedule_args: Options of the batch schedule as ``(name, value)`` pairs.
        lr_schedule: How the learning rate follows the step, epoch and batch size, a name in
            :data:`sharpminima.train.schedules.LR_SCHEDULES` (``"constant"``: ``lr``).
        lr_schedule_args: Options of the learning-rate schedule as ``(name, value)`` pairs.
        augment: Data augmentation of training batches, a name in
            :data:`sharpminima.data.augment.AUGMENTS` (``"none"`` or ``"paper"``).
        augment_args: Options of the augmentation as ``(name, value)`` pairs.
        init: Weight initialisation, a name in :data:`sharpminima.models.init.INITS`
            (``"default"`` keeps PyTorch's).
        init_scale: Factor on the initial weights of every linear and conv layer.
        init_from: Start from stored weights: ``"RUN_ID"`` (final) or ``"RUN_ID@EPOCH"``.
        loss: The training loss: ``"cross_entropy"`` (classification, or per-token for
            sequence targets), ``"mse"`` (regression) or ``"module:function"`` naming
            ``fn(model, (inputs, targets)) -> mean loss`` (see :mod:`sharpminima.losses`).
        tags: Free labels that do not change the result but do change the identity
            (e.g. ``("trial", "3")``); keep empty normally.
        num_threads: Torch intra-op CPU threads while training. CPU reductions split
            their work by thread count, so weights differ at float rounding between
            thread counts; the count is therefore fixed per run (the same on any
            machine, from ``train``, ``sweep`` workers or ``reproduce``) and part of the
            run's identity when changed from the default, :data:`TRAIN_THREADS`.
    """

    net: str = "f1"
    dataset: str = "mnist"
    batch_size: int = SB_BATCH_SIZE
    optimizer: str = "adam"
    optimizer_args: tuple[tuple[str, Any], ...] = ()
    lr: float = 1e-3
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    epochs: int = 20
    stop: StopRule = "epochs"
    patience: int = 5
    min_improvement: float = 1e-3
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    data_source: str | None = None
    save_every_epoch: bool = False
    eval_chunk: int = 10_000
    method: str = "plain"
    method_args: tuple[tuple[str, Any], ...] = ()
    batch_schedule: str = "constant"
    batch_schedule_args: tuple[tuple[str, Any], ...] = ()
    lr_schedule: str = "constant"
    lr_schedule_args: tuple[tuple[str, Any], ...] = ()
    augment: str = "none"
    augment_args: tuple[tuple[str, Any], ...] = ()
    init: str = "default"
    init_scale: float = 1.0
    init_from: str | None = None
    loss: str = "cross_entropy"
    tags: tuple[str, ...] = field(default_factory=tuple)
    num_threads: int = TRAIN_THREADS

    def __post_init__(self) -> None:
        """Validate the values a user can get wrong."""
        for name, bound in _BOUNDS.items():
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL:
                check_number(_LABELS.get(name, name), value, bound)
        if not (isinstance(self.betas, tuple | list) and len(self.betas) == 2):
            raise ConfigError(f"betas must be two numbers (beta1, beta2), got {self.betas!r}")
        for beta in self.betas:
            check_number("betas", beta, Bound(ge=0, lt=1))
        if self.stop not in ("epochs", "plateau"):
            raise ConfigError(f"stop rule must be 'epochs' or 'plateau', got {self.stop!r}")
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str):
                    raise ConfigError(f"{name} must be text, got {value!r}")
                check_text(name, value)
        for name in OPTION_FIELDS:
            object.__setattr__(self, name, _option_pairs(name, getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Return all fields as a JSON-friendly dict."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def identity(self) -> dict[str, Any]:
        """Return the fields that differ from the defaults (plus ``net`` and ``dataset``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.default is not dataclasses.MISSING:
                default = f.default
            else:
                default = f.default_factory()  # type: ignore[misc]
            value = getattr(self, f.name)
            if f.name in ("net", "dataset") or value != default:
                out[f.name] = value
        return json.loads(json.dumps(out))

    def hash(self) -> str:
        """Return the sha256 hex digest of the canonical JSON of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` output (unknown keys are an error).

        Raises:
            ConfigError: If ``data`` is not a dict, has keys that are not config fields, or
                values of the wrong shape or range.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a dict of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; valid fields: {sorted(names)}")
        kw = dict(data)
        try:  # a config read back from a store anyone may edit: any shape at all
            if "betas" in kw:
                kw["betas"] = tuple(kw["betas"])
            if "tags" in kw:
                kw["tags"] = tuple(kw["tags"])
            if "method_args" in kw:
                kw["method_args"] = tuple(tuple(p) for p in kw["method_args"])
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config {str(data)[:200]} is malformed ({exc}); it was not written by "
                              "sharpminima or was edited") from None


#: The paper's F1 setup (Adam 1e-3, trained until the loss stops improving, at most 100
#: epochs). Use ``.replace(batch_size=...)`` for SB / LB.
PAPER_F1 = TrainConfig(net="f1", dataset="mnist", stop="plateau", epochs=100, patience=5)
