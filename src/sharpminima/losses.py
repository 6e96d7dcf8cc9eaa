"""Loss adapters: how a model and a batch give a batch's mean loss, its weight and metrics.

An objective (:mod:`sharpminima.landscape`) and the training loop (:mod:`sharpminima.train`)
never touch raw ``(inputs, targets)`` or assume cross-entropy: they hand a model and a
batch to a :class:`Loss`, which knows

* the batch's **mean loss** as a differentiable scalar (``loss(model, batch)``);
* the batch's **weight** (``count(batch)``): the number of terms that mean averages over,
  read from the batch alone (samples, or target tokens for a language model), so that a
  mean over many batches is ``sum_b count_b * mean_b / sum_b count_b``: the mean over all
  samples (or tokens), however the data are batched;
* **metrics** from one forward pass (``metrics(model, batch)``): the summed loss and, where
  accuracy is defined (classification, next-token prediction), the number correct;
* for the Gauss-Newton matrix, the network **outputs** the loss is a function of and the
  product of the loss's Hessian with respect to them (cross-entropy and MSE only).

The adapters:

* :class:`CrossEntropy` (``"cross_entropy"``): batches ``(inputs, targets, ...)``; logits
  ``(B, C)`` against labels ``(B,)``, or per-token logits ``(B, T, V)`` against token ids
  ``(B, T)`` (positions labelled ``ignore_index``, -100, left out; the mean is per token);
* :class:`MeanSquaredError` (``"mse"``): ``mean((model(x) - y)^2)`` over every element, as
  :func:`torch.nn.functional.mse_loss` (a regression batch is weighted by its samples);
* :class:`ModelOutputLoss` (``"output"``, the default for dict batches): ``model(**batch)``
  returns the loss itself (``.loss`` or ``["loss"]``), as Hugging Face models do when the
  batch has ``labels``. A classifier's loss is a mean per sequence; a causal language
  model's (``*ForCausalLM``, ``*LMHeadModel``) a mean per predicted token (labels shifted
  by one, -100 left out), so its batches are weighted by their predicted tokens
  (``per="auto"``; ``per="sequence"`` or ``"token"`` force one);
* :class:`CallableLoss`: a user function ``fn(model, batch) -> mean loss`` (a scalar
  tensor); a batch is weighted by its leading dimension unless ``weight(batch)`` says
  otherwise;
* :class:`OutputLoss`: a function ``fn(outputs, targets)`` of the outputs of
  ``model(inputs)`` (the older ``loss_fn`` argument).

Every adapter's ``__call__``, ``metrics`` and ``outputs`` call ``model(...)`` itself, so an
objective evaluates them at any flat parameter vector through
:func:`torch.func.functional_call` on a wrapper module (tied weights are tied there too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sharpminima.data.sources import Batch, leading_size, tree_leaves
from sharpminima.errors import ConfigError
from sharpminima.factories import import_object

IGNORE_INDEX = -100
Per = Literal["auto", "sequence", "token"]


class Loss:
    """Base of the loss adapters (see the module docstring).

    Attributes:
        name: Short name, recorded in settings and store keys.
        has_accuracy: Whether :meth:`metrics` counts correct predictions.
        has_ggn: Whether :meth:`outputs` and :meth:`output_hvp` give the Gauss-Newton form.
        vmappable: Whether it runs under ``torch.func.vmap`` (vectorised trials).
    """

    name = "loss"
    has_accuracy = False
    has_ggn = False
    vmappable = False

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        """The batch's mean loss, a differentiable 0-dim tensor."""
        raise NotImplementedError

    def count(self, batch: Batch) -> int:
        """How many terms the batch's mean averages over (its weight)."""
        return leading_size(batch)

    def metrics(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """``(mean loss, number correct or None)`` from one forward pass."""
        return self(model, batch), None

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """``(summed loss, number correct or None)``: training's evaluation metrics."""
        mean, correct = self.metrics(model, batch)
        return mean * self.count(batch), correct

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """The network outputs the loss depends on (for Gauss-Newton products).

        Raises:
            ConfigError: Where the loss has no Gauss-Newton form here.
        """
        raise ConfigError(
            f"the Gauss-Newton matrix is defined here for cross-entropy and MSE losses, not for "
            f"{self.name!r}; measure the Hessian instead"
        )

    def output_hvp(self, outputs: Tensor, batch: Batch, v: Tensor) -> Tensor:
        """``d^2 mean_loss / d outputs^2 @ v`` (same shape as ``outputs``)."""
        raise ConfigError(f"the Gauss-Newton matrix is not defined for the loss {self.name!r}")

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """One forward pass (for BatchNorm statistics); by default the loss itself."""
        return self(model, batch)

    def spec(self) -> str:
        """The adapter's identity in store keys and settings."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _pair(batch: Batch, what: str) -> tuple[Any, Tensor]:
    """``(inputs, targets)`` of a sequence batch."""
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ConfigError(
        f"the {what} loss reads batches of (inputs, targets), got a {type(batch).__name__}; "
        "pass loss=fn(model, batch) for other batches"
    )


def _ce_hvp(logits: Tensor, v: Tensor) -> Tensor:
    """``(diag(p_i) - p_i p_i^T) v_i`` for every row ``i`` of ``logits`` ``(M, C)``."""
    prob = torch.softmax(logits, dim=-1)  # (M, C)
    return prob * v - prob * (prob * v).sum(dim=-1, keepdim=True)


def _ce_rows_hvp(logits: Tensor, keep: Tensor, v: Tensor) -> Tensor:
    """``(1/M) sum`` of :func:`_ce_hvp` over the rows where ``keep`` (``M`` of them)."""
    flat = logits.reshape(-1, logits.shape[-1])
    mask = keep.reshape(-1, 1).to(flat.dtype)
    return (_ce_hvp(flat, v.reshape(flat.shape)) * mask / mask.sum()).reshape(logits.shape)


class CrossEntropy(Loss):
    """Mean cross-entropy of ``model(inputs)`` against integer targets.

    ``(B, C)`` logits and ``(B,)`` labels: the mean over the batch's samples, weight ``B``.
    ``(B, T, V)`` logits and ``(B, T)`` token ids: the mean over tokens whose label is not
    ``ignore_index``; weight = that token count.

    Args:
        ignore_index: Target value left out of per-token losses.
    """

    name = "cross_entropy"
    has_accuracy = True
    has_ggn = True
    vmappable = True

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean cross-entropy of the batch."""
        x, y = _pair(batch, "cross-entropy")
        return self._mean(model(x), y)

    def _mean(self, logits: Tensor, y: Tensor) -> Tensor:
        if logits.ndim == 2 and y.ndim == 1:
            return F.cross_entropy(logits, y)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=self.ignore_index
        )

    def count(self, batch: Batch) -> int:
        """Samples, or target tokens other than ``ignore_index``."""
        _, y = _pair(batch, "cross-entropy")
        if y.ndim <= 1:
            return int(y.shape[0])
        return int((y != self.ignore_index).sum())

    def metrics(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Mean loss and the number of correct argmax predictions (samples or tokens)."""
        x, y = _pair(batch, "cross-entropy")
        logits = model(x)
        if logits.ndim == 2 and y.ndim == 1:
            return F.cross_entropy(logits, y), (logits.argmax(dim=1) == y).sum()
        keep = y != self.ignore_index
        return self._mean(logits, y), ((logits.argmax(dim=-1) == y) & keep).sum()

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy and the number correct."""
        x, y = _pair(batch, "cross-entropy")
        logits = model(x)  # (B, classes) or (B, T, V)
        if logits.ndim == 2 and y.ndim == 1:
            return F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(dim=1) == y).sum()
        flat_y = y.reshape(-1)
        total = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), flat_y, reduction="sum", ignore_index=self.ignore_index
        )
        return total, ((logits.argmax(dim=-1) == y) & (y != self.ignore_index)).sum()

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """The logits."""
        x, _ = _pair(batch, "cross-entropy")
        return model(x)

    def output_hvp(self, outputs: Tensor, batch: Batch, v: Tensor) -> Tensor:
        """``(1/M) blockdiag_i(diag(p_i) - p_i p_i^T) v`` over the ``M`` counted rows."""
        _, y = _pair(batch, "cross-entropy")
        if outputs.ndim == 2 and y.ndim == 1:
            return _ce_hvp(outputs, v) / outputs.shape[0]  # (B, C)
        return _ce_rows_hvp(outputs, y != self.ignore_index, v)

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """``model(inputs)``."""
        return model(_pair(batch, "cross-entropy")[0])


class MeanSquaredError(Loss):
    """``mean((model(x) - y)^2)`` over every element (:func:`torch.nn.functional.mse_loss`).

    A batch is weighted by its samples (every sample has the same number of elements).
    """

    name = "mse"
    has_ggn = True
    vmappable = True

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean squared error of the batch."""
        x, y = _pair(batch, "MSE")
        out = model(x)
        return F.mse_loss(out, y.reshape(out.shape).to(out.dtype))

    def count(self, batch: Batch) -> int:
        """The batch's samples."""
        _, y = _pair(batch, "MSE")
        return int(y.shape[0])

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """The predictions."""
        x, _ = _pair(batch, "MSE")
        return model(x)

    def output_hvp(self, outputs: Tensor, batch: Batch, v: Tensor) -> Tensor:
        """``2 v / numel``: the Hessian of a mean of squares."""
        return 2.0 * v / outputs.numel()

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """``model(inputs)``."""
        return model(_pair(batch, "MSE")[0])


def _is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a causal LM whose loss shifts its labels (by its class name)."""
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


class ModelOutputLoss(Loss):
    """The loss a model returns itself: ``model(**batch).loss`` (Hugging Face style).

    The batch is a mapping of the model's keyword arguments and must hold ``labels``. How
    the model averages, and so how batches are weighted:

    * a sequence classifier (labels ``(B,)``): per sequence, weight ``B``;
    * a causal language model (``*ForCausalLM``, ``*LMHeadModel``): per predicted token,
      ``labels`` shifted by one inside the model; weight = ``labels[:, 1:] != -100``
      counted (the tokens the model's mean runs over);
    * other token-labelled models (masked LM, token classification): per labelled token,
      weight = ``labels != -100`` counted.

    ``per="sequence"`` weights every batch by its sequences whatever the model, ``"token"``
    by its labelled tokens (shifted when the model is a causal LM).

    Args:
        per: ``"auto"``, ``"sequence"`` or ``"token"``.

    Raises:
        ConfigError: For another ``per``.
    """

    name = "output"
    has_accuracy = True
    has_ggn = True

    def __init__(self, per: Per = "auto") -> None:
        if per not in ("auto", "sequence", "token"):
            raise ConfigError(f"per must be 'auto', 'sequence' or 'token', got {per!r}")
        self.per = per
        self._causal: bool | None = None

    def bind(self, model: nn.Module) -> ModelOutputLoss:
        """Record whether ``model`` is a causal LM (its labels are shifted)."""
        self._causal = _is_causal_lm(model)
        return self

    def _batch(self, batch: Batch) -> Mapping[str, Any]:
        if not isinstance(batch, Mapping):
            raise ConfigError(
                f"loss 'output' calls model(**batch) and needs dict batches, got a {type(batch).__name__}"
            )
        if batch.get("labels") is None:
            raise ConfigError(
                "the batch has no 'labels', so the model returns no loss; add labels to the batch "
                "or pass loss=fn(model, batch)"
            )
        return batch

    def _out(self, model: nn.Module, batch: Batch) -> Any:
        if self._causal is None:
            self.bind(model)
        return model(**self._batch(batch))

    @staticmethod
    def _loss_of(out: Any) -> Tensor:
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise ConfigError(
                f"the model returned {type(out).__name__} without a loss; give the batch labels "
                "or pass loss=fn(model, batch)"
            )
        return loss

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        """``model(**batch).loss``."""
        return self._loss_of(self._out(model, batch))

    def _token_labels(self, labels: Tensor) -> Tensor | None:
        """Labels the model's mean runs over per token (shifted for a causal LM), or None."""
        token = labels.ndim >= 2 and not labels.is_floating_point()
        if self.per == "sequence" or (self.per == "auto" and not token):
            return None
        return labels[..., 1:] if self._causal else labels

    def count(self, batch: Batch) -> int:
        """Sequences, or counted tokens (see the class docstring)."""
        labels = self._batch(batch)["labels"]
        token = self._token_labels(labels)
        if token is None:
            return int(labels.shape[0])
        return int((token != IGNORE_INDEX).sum())

    def metrics(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """The model's loss and its correct argmax predictions (sequences or tokens)."""
        out = self._out(model, batch)
        loss = self._loss_of(out)
        logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
        labels = batch["labels"]
        if logits is None or labels.is_floating_point():
            return loss, None
        if labels.ndim == 1 and logits.ndim == 2:
            return loss, (logits.argmax(dim=-1) == labels).sum()
        if labels.ndim >= 2 and logits.ndim == labels.ndim + 1:
            if self._causal:
                logits, labels = logits[..., :-1, :], labels[..., 1:]
            return loss, ((logits.argmax(dim=-1) == labels) & (labels != IGNORE_INDEX)).sum()
        return loss, None

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """The model's logits (its loss must be a cross-entropy over them)."""
        out = self._out(model, batch)
        logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
        if logits is None:
            raise ConfigError("the model's output has no logits; the Gauss-Newton matrix needs them")
        if batch["labels"].is_floating_point():
            raise ConfigError(
                "float labels (regression or multi-label): the Gauss-Newton form is not known here"
            )
        return logits

    def output_hvp(self, outputs: Tensor, batch: Batch, v: Tensor) -> Tensor:
        """The cross-entropy Hessian over the rows the model's mean runs over."""
        labels = batch["labels"]
        if labels.ndim == 1:
            return _ce_hvp(outputs, v) / outputs.shape[0]
        if not self._causal:
            return _ce_rows_hvp(outputs, labels != IGNORE_INDEX, v)
        out = torch.zeros_like(v)
        out[..., :-1, :] = _ce_rows_hvp(outputs[..., :-1, :], labels[..., 1:] != IGNORE_INDEX, v[..., :-1, :])
        return out

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """``model(**batch)``."""
        return self._out(model, batch)

    def spec(self) -> str:
        """``output`` with its weighting."""
        return "output" if self.per == "auto" else f"output-per-{self.per}"


class CallableLoss(Loss):
    """A user loss ``fn(model, batch) -> mean loss`` (a 0-dim tensor).

    The model passed to ``fn`` holds the parameters being evaluated (any call of it, or of
    its submodules, sees them). Each batch is weighted by ``weight(batch)``, default its
    leading dimension (the number of samples of its first tensor): give ``weight`` when the
    mean runs over something else (tokens, say). Accuracy is not defined.

    Args:
        fn: The loss function.
        weight: The batch's weight.
        name: Label in settings (default: the function's qualified name).

    Raises:
        ConfigError: If ``fn`` or ``weight`` is not callable.
    """

    def __init__(
        self,
        fn: Callable[[nn.Module, Batch], Tensor],
        weight: Callable[[Batch], int | float] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(fn) or (weight is not None and not callable(weight)):
            raise ConfigError("loss must be a callable fn(model, batch) and weight a callable weight(batch)")
        self.fn = fn
        self.weight = weight
        self.name = name or _qualname(fn)

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        """``fn(model, batch)``."""
        return self.fn(model, batch)

    def count(self, batch: Batch) -> int | float:  # type: ignore[override]
        """``weight(batch)``, or the batch's leading size."""
        if self.weight is None:
            return leading_size(batch)
        w = self.weight(batch)
        w = float(w) if isinstance(w, Tensor) else w
        if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
            raise ConfigError(f"weight(batch) must return a positive number, got {w!r}")
        return w


class OutputLoss(Loss):
    """``fn(model(inputs), targets)`` for ``(inputs, targets)`` batches (the older ``loss_fn``).

    Args:
        fn: Mean loss of a batch's outputs against its targets.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(fn):
            raise ConfigError(f"loss_fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = _qualname(fn)

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        """``fn(model(inputs), targets)``."""
        x, y = _pair(batch, self.name)
        return self.fn(model(x), y)

    def count(self, batch: Batch) -> int:
        """The batch's samples."""
        _, y = _pair(batch, self.name)
        return int(y.shape[0])


def _qualname(fn: Any) -> str:
    module = getattr(fn, "__module__", "") or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}:{name}" if module and module != "builtins" else str(name)


#: Named adapters (``TrainConfig.loss``, ``--loss`` on the command line).
LOSSES: dict[str, Callable[[], Loss]] = {
    "cross_entropy": CrossEntropy,
    "mse": MeanSquaredError,
    "output": ModelOutputLoss,
}


def register_loss(name: str, factory: Callable[[], Loss]) -> None:
    """Make ``factory()`` available as ``loss=name``."""
    LOSSES[name] = factory


def resolve_loss(
    loss: Any = None,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    example: Batch | None = None,
) -> Loss:
    """Turn what a user gives as the loss into a :class:`Loss`.

    Args:
        loss: ``None`` (pick from ``example``: dict batches use the model's own loss, others
            cross-entropy), a :class:`Loss`, a name in :data:`LOSSES`, ``"module:function"``
            naming ``fn(model, batch)``, or a callable ``fn(model, batch)``.
        loss_fn: The older ``loss_fn(outputs, targets)``; cross-entropy and MSE map to their
            adapters.
        example: A batch, to pick the default.

    Raises:
        ConfigError: For an unknown name, an unimportable function, or both arguments.
    """
    if loss is not None and loss_fn is not None:
        raise ConfigError(
            "give either loss (fn(model, batch) or a name) or loss_fn(outputs, targets), not both"
        )
    if loss_fn is not None:
        if loss_fn is F.cross_entropy:
            return CrossEntropy()
        if loss_fn is F.mse_loss:
            return MeanSquaredError()
        return OutputLoss(loss_fn)
    if loss is None:
        return ModelOutputLoss() if isinstance(example, Mapping) else CrossEntropy()
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss in LOSSES:
            return LOSSES[loss]()
        if ":" in loss:
            return CallableLoss(import_object(loss, "loss"), name=loss)
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or give module:function")
    if callable(loss):
        return CallableLoss(loss)
    raise ConfigError(
        f"loss must be a name, a Loss or a callable fn(model, batch), got {type(loss).__name__}"
    )


def describe_loss(loss: Loss) -> str:
    """A loss's identity for settings (its :meth:`Loss.spec`)."""
    return loss.spec()


def first_tensor_device(batch: Batch) -> torch.device | None:
    """Device of a batch's first tensor, or None."""
    leaves = tree_leaves(batch)
    return leaves[0].device if leaves else None
