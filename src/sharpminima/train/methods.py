"""Training methods: how one step turns a batch into an update.

A method is a factory ``make(config) -> StepFn`` where
``step(model, optimizer, inputs, targets) -> loss`` performs one update and returns the
batch's mean loss at the step's starting weights as a detached 0-dim tensor (no host
synchronisation). The training loop calls only this interface, so every method below
plugs in without a branch in the loop. Options come from ``config.method_args`` (sorted
``(name, value)`` pairs); an unknown option or a bad value is a one-line ``ConfigError``.
Every method except ``plain`` and ``ghost_bn`` also takes ``ghost_batch_size`` (ghost
BatchNorm in all its forward passes, see :func:`batch_loss`), so e.g. SAM + ghost BN is
``method="sam", method_args=(("ghost_batch_size", 256), ("rho", 0.05))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.train.noise_methods import batch_noise
from sharpminima.train.perf import compiled
from sharpminima.train.remedy_steps import adversarial, conservative, ghost_bn, grad_noise, iterate_noise
from sharpminima.train.sam import asam, sam
from sharpminima.train.step_parts import (
    BOOL,
    MethodFactory,
    StepFn,
    batch_loss,
    method_options,
    training_loss,
)

__all__ = ["METHODS", "MethodFactory", "StepFn", "batch_loss", "make_step", "plain", "register_method"]


#: Options of the ``plain`` method (``config.method_args``) and their defaults.
PLAIN_ARGS: dict[str, object] = {"compile": False, "autocast": "none"}

#: ``autocast`` values of the ``plain`` method and the dtype each runs the forward pass in.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16}


def plain(config: TrainConfig) -> StepFn:
    """One optimizer step on the batch's mean loss (``config.loss``; cross-entropy by default).

    ``config.method_args`` may set ``("compile", True)`` to run forward, loss and backward
    through ``torch.compile`` (see :mod:`sharpminima.train.perf` for what it costs and
    gains), and ``("autocast", "bf16")`` to run the forward pass under
    :func:`torch.autocast` in bfloat16 (products and convolutions in bf16, reductions,
    normalisation and the loss in float32, as autocast does; weights, gradients and the
    optimizer stay float32). bf16 is opt-in: it is fast on recent GPUs but slow on CPUs
    without bf16 units, and its 8-bit mantissa is a real change to the training run.
    Being config fields, both choices are part of the run's identity, as they should be:
    they round differently from eager float32.

    Raises:
        ConfigError: For an unknown option, a non-boolean ``compile`` or an unknown
            ``autocast``.
    """
    autocast_check = (
        lambda v: isinstance(v, str) and v in AUTOCAST_DTYPES, f"one of {sorted(AUTOCAST_DTYPES)}"
    )
    args = method_options(config, "plain", PLAIN_ARGS, {"compile": BOOL, "autocast": autocast_check})
    criterion = training_loss(config)

    def batch_mean(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        """The batch's mean loss (cross-entropy: ``(1/B) sum_i -log softmax(model(x_i))[y_i]``)."""
        return criterion(model, (xb, yb))

    loss_fn = compiled(batch_mean) if args["compile"] else batch_mean
    dtype = AUTOCAST_DTYPES[args["autocast"]]

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(xb.device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model, xb, yb)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


#: Registered methods, with their options and defaults (``config.method_args``):
#:
#: * ``plain``: ``compile`` (False), ``autocast`` ("none" or "bf16").
#: * ``sam``: ``rho`` (0.05), ``ghost_batch_size`` (None). Foret et al. 2021.
#: * ``asam``: ``rho`` (0.5), ``eta`` (0.01), ``ghost_batch_size``. Kwon et al. 2021.
#: * ``conservative``: ``lam`` (1e-3), ``inner_iters`` (3), ``ghost_batch_size``. The
#:   paper's Appendix E proximal step; the config's optimizer runs the inner iterations.
#: * ``adversarial``: ``eps`` (0.1), ``alpha`` (0.5), ``clip`` ("auto", "none" or
#:   [lo, hi]), ``ghost_batch_size``. Fast gradient sign, Goodfellow et al. 2015.
#: * ``grad_noise``: ``eta`` (0.01), ``gamma`` (0.55), ``ghost_batch_size``. Variance
#:   ``eta/(1+t)^gamma``, Neelakantan et al. 2015.
#: * ``iterate_noise``: ``std`` (1e-4), ``gamma`` (0), ``ghost_batch_size``.
#: * ``ghost_bn``: ``ghost_batch_size`` (256). Hoffer et al. 2017.
#: * ``batch_noise``: ``noise_batch_size`` (256), ``structure`` ("anisotropic" or
#:   "isotropic"), ``scale`` (1). A small batch's gradient noise injected into a large
#:   batch's step, see :mod:`sharpminima.train.noise_methods`; Zhu et al. 2019.
#:
#: SAM, ASAM, adversarial and the noise methods wrap whatever ``config.optimizer`` names.
METHODS: dict[str, MethodFactory] = {
    "plain": plain,
    "sam": sam,
    "asam": asam,
    "conservative": conservative,
    "adversarial": adversarial,
    "grad_noise": grad_noise,
    "iterate_noise": iterate_noise,
    "ghost_bn": ghost_bn,
    "batch_noise": batch_noise,
}


#: Which methods' steps vectorised trials can take, as a test of the config: a plain
#: step without options (compile and autocast change how the step runs).
VECTORIZABLE: dict[str, Callable[[TrainConfig], bool]] = {
    "plain": lambda config: not config.method_args,
}


def register_method(name: str, factory: MethodFactory,
                    vectorizable: Callable[[TrainConfig], bool] | None = None) -> None:
    """Make ``factory`` available as ``TrainConfig(method=name)``.

    Args:
        name: The method's name.
        factory: ``make(config) -> step``.
        vectorizable: For which configs the step is a plain loss-gradient-update that
            vectorised trials can take themselves (None: never).
    """
    METHODS[name] = factory
    if vectorizable is None:
        VECTORIZABLE.pop(name, None)
    else:
        VECTORIZABLE[name] = vectorizable


def is_vectorizable(config: TrainConfig) -> bool:
    """Whether ``config.method``'s step can be taken by vectorised trials."""
    test = VECTORIZABLE.get(config.method)
    return bool(test is not None and test(config))


def make_step(config: TrainConfig) -> StepFn:
    """Return the step function of ``config.method``.

    Raises:
        ConfigError: For an unknown method name.
    """
    try:
        factory = METHODS[config.method]
    except KeyError:
        raise ConfigError(
            f"unknown training method {config.method!r}; choose one of {', '.join(sorted(METHODS))}"
        ) from None
    return factory(config)
