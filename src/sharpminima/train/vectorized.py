"""Vectorised trials: K seeds of one configuration trained as one batched computation.

The paper's protocol is many small runs (5 trials per network and regime). Trained one at
a time, a small network leaves a GPU idle; here the K trials' parameters are stacked
(:func:`torch.func.stack_module_state`, shape ``(K, ...)`` per tensor) and one step runs

.. code-block:: text

    losses = vmap(cross_entropy(functional_call(net, (params_k, buffers_k), x_k), y_k))  # (K,)
    losses.sum().backward()       # d(sum)/d(params_k) = d(loss_k)/d(params_k): trials stay independent
    optimizer.step()              # one optimizer over the stacked tensors

The trials go through the one training loop (:func:`~sharpminima.train.loop.run_epochs`):
setup, resume, the epoch, evaluation, metrics, divergence and stopping rules and
checkpoints are the sequential run's own code; this module supplies only the step and the
state layout (:class:`VectorizedEngine`). Each trial keeps everything a sequential
:func:`~sharpminima.train.loop.train` run has:

* its initial weights: every network is built by the loop's own setup
  (:func:`~sharpminima.train.loop.open_trial`, warm starts included), then stacked;
* its data order and augmentation: the loop's ``batch_indices(n, batch_size, seed,
  epoch)`` and augmentation per trial, the K batches stacked into ``(K, B, ...)``;
* its optimizer state: the registry's optimizer over the stacked tensors. Adam, AdamW, SGD
  (with momentum, also Nesterov's) and Adagrad update every entry independently, with one step count per
  tensor that all trials share (they step together), so the stacked update of trial k is
  the update its own optimizer would make (tested: bit for bit, fused Adam with weight
  decay within an ulp);
* its BatchNorm running statistics: buffers are stacked too and updated in place under
  ``vmap`` (training-mode batch statistics per trial; ``replace_all_batch_norm_modules_``
  is not used, as it drops the running statistics);
* its dropout masks: a sequential run draws them from the global generator seeded with
  ``epoch_seed(seed, epoch)`` at each epoch's start; here each trial keeps its own
  generator state, seeded the same way, and before each step draws its masks with the same
  ``F.dropout`` calls in the same order (see :class:`_Dropouts`), and the masks enter the
  batched forward pass as buffers, so every trial drops exactly the units its sequential
  run drops (tested on CPU; on CUDA the masks are drawn on tensors of the sequential
  run's memory format, not yet checked on a GPU);
* its record in the store: same config and hash as the sequential run, with epoch rows,
  ``last_*`` checkpoints (the per-trial slice of the optimizer state) and final weights
  through :class:`~sharpminima.train.checkpointing.RunFiles`, so ``train_trials`` and
  ``reproduce`` reuse vectorised runs and vice versa, and an interrupted group resumes.
  Evaluation uses the loop's :func:`~sharpminima.train.evaluate.evaluate` on each trial's
  own network. ``seconds`` of an epoch is the trial's share (wall time / K) of the batched
  epoch, so the runs' seconds add up to the time spent.

**How equal to sequential runs.** ``vmap`` turns each matrix product into a batched one,
which rounds differently from the sequential kernel (both are equally accurate against a
float64 reference). Where training does not amplify rounding the trials match sequential
runs to float32 precision (tests: weights within ``1e-5`` relative after 2 epochs for SGD,
and for Adam on a BatchNorm MLP except the biases feeding a BatchNorm and those BatchNorms'
running means, which carry no signal and random-walk on rounding noise under Adam in any
implementation; see ``tests/train/test_perf_equivalence.py``). Adam on a deep BatchNorm net
such as F1 *does* amplify rounding: weights with a ~1e-9 true gradient take steps of size
``lr`` whose sign is set by rounding noise, and after 2 epochs weights differ by a few
percent. The sequential loop itself differs by the same amount between 1 and 2 CPU
threads, so this is the reproducibility floor of float32 Adam on such nets, not a defect
of the batched path; the trials' metrics agree statistically, not bit for bit.

**Speed.** On the project's 2-core CPU vectorised trials are *slower* than sequential ones
(5 F1 trials: 1.30x the time at batch 256, 2.21x at 6000; ``benchmarks/RESULTS.md``):
the steps are GEMM-bound and torch's CPU batched matmul runs below its plain one. They are
meant for GPUs, where one small network leaves the device idle
(``benchmarks/bench_gpu.py``; not yet run on a GPU).

**What falls back to sequential training** (with a logged note), each asked of the
component itself: distributed (``torchrun``) sessions; a method whose step is not a plain
loss-gradient-update (:func:`~sharpminima.train.methods.is_vectorizable`: ``plain``
without ``compile`` or ``autocast``); an optimizer that is not elementwise
(:func:`~sharpminima.train.optim.is_elementwise`); a batch schedule whose plan reads the
run's own state (:func:`~sharpminima.train.schedules.shared_across_trials`); a loss that
does not run under ``vmap`` (:attr:`~sharpminima.losses.Loss.vmappable`); networks with
dropout modules other than ``nn.Dropout`` (``Dropout2d``, ``AlphaDropout``...) or an
``nn.Dropout`` called more than once per forward pass (their masks are not drawn here;
functional ``F.dropout`` inside a custom ``forward`` is not detected and fails under
``vmap``). Learning-rate schedules, batch schedules of the epoch alone, augmentation,
initialisation options and warm starts need nothing here: they are the loop's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from sharpminima.config import TrainConfig
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError
from sharpminima.losses import Loss
from sharpminima.train.evaluate import evaluate
from sharpminima.train.loop import (
    Progress,
    Trial,
    fixed_threads,
    open_trial,
    prepare_data,
    run_epochs,
    train,
)
from sharpminima.train.methods import is_vectorizable
from sharpminima.train.optim import is_elementwise, make_optimizer
from sharpminima.train.perf import cuda_flags_restored, set_cuda_flags
from sharpminima.train.run import Run
from sharpminima.train.schedules import set_lr, shared_across_trials
from sharpminima.train.setup import check_options, epoch_seed, fresh_model
from sharpminima.train.step_parts import training_loss

log = logging.getLogger(__name__)


def fallback_reason(
    config: TrainConfig, model: nn.Module, input_shape: Sequence[int] | None = None
) -> str | None:
    """Say why ``config`` cannot be trained vectorised, or return None if it can.

    Each component is asked whether it can be vectorised (see the module docstring).

    Args:
        config: The shared configuration of the trials.
        model: One trial's network (only inspected).
        input_shape: One sample's shape; if given, a network with dropout is also run once
            on the meta device to check that each ``nn.Dropout`` is called once per forward.

    Returns:
        A short reason, or None.
    """
    from sharpminima import distributed

    if distributed.is_active():
        return "distributed (torchrun) training shards each run over the ranks instead"
    if not is_vectorizable(config):
        return f"method {config.method!r} with options {list(config.method_args)} is not vectorised"
    if not is_elementwise(config.optimizer):
        return f"optimizer {config.optimizer!r} is not known to update elementwise"
    if not shared_across_trials(config):
        return f"batch schedule {config.batch_schedule!r} plans each run from its own state"
    if not training_loss(config).vmappable:
        return f"loss {config.loss!r} is not known to run under vmap"
    other = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)
                    and type(m) is not nn.Dropout and m.p > 0})
    if other:
        return f"the network has {', '.join(other)}, whose masks the vectorised path does not draw"
    if input_shape is not None and any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        try:
            _dropout_calls(copy.deepcopy(model).to("meta"), (2, *input_shape))
        except ConfigError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure to trace means "train sequentially"
            return f"the forward pass could not be traced on the meta device ({type(exc).__name__}: {exc})"
    if not any(p.requires_grad for p in model.parameters()):
        return "the network has no trainable parameters"
    return None


class _MaskDropout(nn.Module):
    """Dropout by a given mask: ``x * mask`` in training mode, where ``mask`` is a buffer.

    Stands in for ``nn.Dropout`` in the vectorised group's architecture; each trial's mask
    (drawn by :class:`_Dropouts` exactly as its sequential run's ``F.dropout`` would) comes
    in through ``functional_call``'s buffers, batched over trials by ``vmap``.
    """

    def __init__(self, p: float, inplace: bool = False) -> None:
        super().__init__()
        self.p, self.inplace = p, inplace
        self.register_buffer("mask", torch.ones((), device="meta"), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask if self.training else x


#: One dropout call of a forward pass: module name, input shape, p, in place.
DropoutCall = tuple[str, torch.Size, float, bool]


def _dropout_calls(base: nn.Module, batch_shape: tuple[int, ...]) -> list[DropoutCall]:
    """Run ``base`` (on the meta device) once in training mode and list its dropout calls.

    Returns ``(module name, input shape, p, inplace)`` per ``nn.Dropout`` with ``p > 0``,
    in call order.

    Raises:
        ConfigError: If such a module is not called exactly once per forward pass.
    """
    calls: list[DropoutCall] = []
    modules = {n: m for n, m in base.named_modules() if isinstance(m, nn.Dropout | _MaskDropout) and m.p > 0}

    def record(name: str, mod: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        calls.append((name, x.shape, mod.p, bool(getattr(mod, "inplace", False))))

    hooks = [m.register_forward_pre_hook(lambda mod, args, kwargs, n=n: record(n, mod, args, kwargs),
                                         with_kwargs=True)
             for n, m in modules.items()]
    was_training = base.training
    try:
        with torch.no_grad():
            base.train()(torch.empty(batch_shape, device="meta"))
    finally:
        base.train(was_training)
        for h in hooks:
            h.remove()
    names = [call[0] for call in calls]
    if sorted(names) != sorted(modules):
        raise ConfigError(
            "every nn.Dropout must be called once per forward pass to be vectorised; "
            f"called: {names}, modules: {sorted(modules)}"
        )
    return calls


def _rng_state(dev: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(dev) if dev.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: Tensor, dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.set_rng_state(state, dev)
    else:
        torch.set_rng_state(state)


class _Dropouts:
    """Each trial's dropout masks, drawn from that trial's own random stream.

    A sequential run seeds the global generator with ``epoch_seed(seed, epoch)`` at each
    epoch's start, and each step's forward pass then draws its masks from it, one
    ``F.dropout`` per ``nn.Dropout`` in call order. Here every trial keeps its generator
    state, and before each batched step its masks are drawn in that order by the same
    ``F.dropout`` call on a tensor of ones of the input's shape, dtype and memory format
    (channels_last where the sequential CUDA run's conv activations are) and the same
    ``inplace`` flag: the same random numbers, and ``x * mask`` is bit for bit the
    sequential ``F.dropout(x)`` on CPU (forward ``x * (bernoulli / (1 - p))``, backward the
    gradient times the same factor); on CUDA the backward's scale ``1/(1-p)`` is rounded
    from double and can differ by one ulp for some ``p`` (not 0.3, 0.4 or 0.5).

    The memory-format rule (4-D inputs channels_last on CUDA for conv nets, everything else
    contiguous) is what ``perf.prepare`` gives C1-C4; a network whose dropout inputs have
    another layout in its sequential CUDA run (a permuted or reshaped tensor) would draw
    other masks there. On CPU layouts do not matter for the paper's networks.
    """

    def __init__(self, base: nn.Module, dev: torch.device, dtype: torch.dtype, channels_last: bool) -> None:
        self.base, self.dev, self.dtype, self.channels_last = base, dev, dtype, channels_last
        self.names = [n for n, m in base.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]
        for name in self.names:  # the architecture copy only; trial networks keep nn.Dropout
            parent, _, child = name.rpartition(".")
            old = base.get_submodule(name)
            setattr(base.get_submodule(parent), child, _MaskDropout(old.p, old.inplace))
        self.calls: dict[tuple[int, ...], list[DropoutCall]] = {}
        self.states: list[Tensor] = []

    def start_epoch(self, seeds: list[int], epoch: int) -> None:
        """Seed every trial's stream as its sequential run does at this epoch's start.

        Called every epoch with the seeds of the trials still training, so trials that
        stopped need no bookkeeping here.
        """
        self.states = []
        for seed in seeds:
            torch.manual_seed(epoch_seed(seed, epoch))
            self.states.append(_rng_state(self.dev))

    def masks(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """The ``(K, ...)`` masks of one step, as buffers named ``<module>.mask``."""
        if not self.names:
            return {}
        if batch_shape not in self.calls:
            self.calls[batch_shape] = _dropout_calls(self.base, batch_shape)
        calls = self.calls[batch_shape]
        drawn: dict[str, list[Tensor]] = {call[0]: [] for call in calls}
        for k, state in enumerate(self.states):
            _set_rng_state(state, self.dev)
            for name, shape, p, inplace in calls:
                last = self.channels_last and len(shape) == 4
                fmt = torch.channels_last if last else torch.contiguous_format
                ones = torch.ones(shape, device=self.dev, dtype=self.dtype).contiguous(memory_format=fmt)
                # in place, torch always takes the bernoulli_ path; out of place on CUDA, the
                # fused kernel: draw as the sequential call does
                drawn[name].append(F.dropout(ones, p, training=True, inplace=inplace))
            self.states[k] = _rng_state(self.dev)
        return {f"{name}.mask": torch.stack(ms) for name, ms in drawn.items()}


def _slice_state(state: dict[str, Any], shapes: list[torch.Size], index: int | Tensor) -> dict[str, Any]:
    """Select trials from a stacked optimizer ``state_dict`` (``index``: one int, or indices).

    Entries shaped like their stacked parameter ``(K, ...)`` are indexed; step counts are
    shared by all trials (they step together) and copied.
    """
    out: dict[str, Any] = {"param_groups": copy.deepcopy(state["param_groups"]), "state": {}}
    for i, entry in state["state"].items():
        out["state"][i] = {
            k: (v[index].clone() if k != "step" and isinstance(v, Tensor) and v.shape == shapes[i] else v)
            for k, v in entry.items()
        }
    return out


def _stack_state(states: list[dict[str, Any]], shapes: list[torch.Size]) -> dict[str, Any]:
    """Stack per-trial optimizer ``state_dict`` s (same steps taken) into one."""
    first = states[0]
    out: dict[str, Any] = {"param_groups": copy.deepcopy(first["param_groups"]), "state": {}}
    for i, entry in first["state"].items():
        out["state"][i] = {
            k: (torch.stack([s["state"][i][k] for s in states])
                if k != "step" and isinstance(v, Tensor) and v.shape == shapes[i][1:] else v)
            for k, v in entry.items()
        }
    return out


class _TrialOptimizerView:
    """The slice of the stacked optimizer that belongs to one trial (for checkpoints)."""

    def __init__(self, engine: VectorizedEngine, k: int) -> None:
        self.engine, self.k = engine, k

    def state_dict(self) -> dict[str, Any]:
        """Return the trial's optimizer state in its sequential optimizer's format."""
        return _slice_state(self.engine.opt.state_dict(), self.engine.shapes, self.k)


class _Loss(nn.Module):
    """``criterion(model, (x, y))`` as a module, so ``functional_call`` can stack its state."""

    def __init__(self, model: nn.Module, criterion: Loss) -> None:
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, xb: Tensor, yb: Tensor) -> Tensor:
        return self.criterion(self.model, (xb, yb))


class VectorizedEngine:
    """K trials' stacked parameters, buffers and optimizer, stepped by one ``vmap``.

    The :class:`~sharpminima.train.loop.Engine` of vectorised trials: the loop hands it
    each trial's batch, it stacks them into ``(K, B, ...)`` and takes one batched step.

    Args:
        trials: The trials (their networks built, resumed to the same epoch).
        config: Their shared config.
        dev: The training device.
        channels_last: Whether the sequential CUDA run would train channels_last (the
            dropout masks' memory layout follows it).
    """

    def __init__(
        self, trials: list[Trial], config: TrainConfig, dev: torch.device, channels_last: bool
    ) -> None:
        self.trials = trials
        self.config = config
        self.criterion = training_loss(config)
        models = [t.model for t in trials]
        params, buffers = stack_module_state(models)  # {name: (K, ...)}
        self.names = [n for n, p in models[0].named_parameters() if p.requires_grad]
        self.params = {n: params[n] for n in self.names}
        self.frozen = {n: v for n, v in params.items() if n not in self.params}
        self.buffers = buffers
        self.shapes = [self.params[n].shape for n in self.names]
        self.opt = make_optimizer(list(self.params.values()), config)
        states = [t.opt.state_dict() for t in trials if t.opt is not None]
        if states and states[0]["state"]:  # resumed: carry each trial's optimizer state over
            self.opt.load_state_dict(_stack_state(states, self.shapes))
        self.base = copy.deepcopy(models[0]).to("meta")  # architecture only
        dtype = next(iter(self.params.values())).dtype
        self.dropouts = _Dropouts(self.base, dev, dtype, channels_last)
        self.dev = dev
        loss_module = _Loss(self.base, self.criterion)

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
            state = {**{f"model.{n}": v for n, v in p.items()}, **{f"model.{n}": v for n, v in b.items()}}
            return functional_call(loss_module, state, (xb, yb))

        self._losses = vmap(one)

    def begin_epoch(self, seeds: list[int], epoch: int) -> None:
        """Training mode; every trial's dropout stream seeded as its sequential run's."""
        self.base.train()
        self.dropouts.start_epoch(seeds, epoch)

    def zeros(self) -> Tensor:
        """A ``(K,)`` accumulator."""
        return torch.zeros(len(self.trials), device=self.dev)

    def set_lr(self, lr: float, lr0: float) -> None:
        """Set the stacked optimizer's learning rate."""
        set_lr(self.opt, lr, lr0)

    def step(self, xs: list[Tensor], ys: list[Tensor]) -> Tensor:
        """One update of every trial on its batch; returns the ``(K,)`` batch losses."""
        xb, yb = torch.stack(xs), torch.stack(ys)  # (K, B, ...)
        self.opt.zero_grad(set_to_none=True)
        masks = self.dropouts.masks(tuple(xb.shape[1:]))  # each trial's, as its own run draws them
        losses = self._losses({**self.params, **self.frozen}, {**self.buffers, **masks}, xb, yb)  # (K,)
        losses.sum().backward()  # d(sum)/d(params_k) = d(loss_k)/d(params_k): trials stay independent
        self.opt.step()
        return losses.detach()

    def epoch_losses(self, loss_sum: Tensor, num_train: int) -> list[float]:
        """Each trial's ``sum / N``."""
        return (loss_sum / num_train).tolist()

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Copy every trial's slice into its own network (for evaluation and checkpoints)."""
        for k, t in enumerate(self.trials):
            state = {n: v[k] for n, v in {**self.params, **self.frozen, **self.buffers}.items()}
            t.model.load_state_dict(state)

    def lr(self) -> float:
        """The stacked optimizer's learning rate."""
        return float(self.opt.param_groups[0]["lr"])

    def optimizer(self, k: int) -> _TrialOptimizerView:
        """Trial ``k``'s slice of the optimizer state."""
        return _TrialOptimizerView(self, k)

    def evaluate(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int
    ) -> tuple[float, float | None]:
        """A trial's metrics on its own network."""
        return evaluate(model, inputs, targets, chunk, self.criterion)

    def keep(self, ks: list[int]) -> None:
        """Drop the trials not in ``ks`` (they stopped); the rest keep their state."""
        if not ks:
            self.trials = []
            return
        index = torch.tensor(ks, dtype=torch.long, device=next(iter(self.params.values())).device)
        state = _slice_state(self.opt.state_dict(), self.shapes, index)
        self.trials = [self.trials[k] for k in ks]
        self.params = {n: v.detach()[index].clone().requires_grad_(True) for n, v in self.params.items()}
        self.frozen = {n: v[index].clone() for n, v in self.frozen.items()}
        self.buffers = {n: v[index].clone() for n, v in self.buffers.items()}
        self.opt = make_optimizer(list(self.params.values()), self.config)
        self.opt.load_state_dict(state)


def train_vectorized(
    config: TrainConfig,
    seeds: Sequence[int] = range(5),
    *,
    dataset: Dataset | None = None,
    store: Any = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
) -> list[Run]:
    """Train one run of ``config`` per seed as one batched computation; return the runs.

    Each trial is the run :func:`~sharpminima.train.loop.train` would make for
    ``config.replace(seed=s)`` (same store record and hash; see the module docstring for
    how equal the weights are). Runs the store already holds as finished are loaded, not
    retrained; interrupted ones resume from their checkpoints (trials at the same epoch
    resume together). Configurations the vectorised path does not implement are trained
    one at a time by ``train`` instead, with a logged note saying why.

    Args:
        config: The shared configuration; its ``seed`` is replaced by each of ``seeds``.
        seeds: One seed per trial, all different.
        dataset: The data; loaded from ``config.dataset`` if None.
        store: A :class:`sharpminima.store.Store`, or None to train in memory only.
        device: Where to train (default: CUDA if available, else CPU).
        progress: Optional callback (see :data:`~sharpminima.train.loop.Progress`); a
            ``"step"`` is one batched step of all trials, ``"epoch"`` comes once per trial.
        model_factory: Builds the network instead of the registry, called after seeding.

    Returns:
        One :class:`Run` per seed, in the order of ``seeds``.

    Raises:
        ConfigError: For no seeds, repeated seeds, or a batch larger than the training set.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("train_vectorized needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"the trials' seeds must differ, got {seeds}")
    configs = [config.replace(seed=s) for s in seeds]
    dev, data = prepare_data(config, dataset, device)
    check_options(config, data)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), cuda_flags_restored(), fixed_threads(config.num_threads):
        reason = fallback_reason(config, fresh_model(configs[0], data, model_factory), data.input_shape)
        if reason is not None:
            log.info("training %d trials one at a time: %s", len(seeds), reason)
            return [train(c, dataset=data, store=store, device=dev, progress=progress,
                          model_factory=model_factory) for c in configs]
        if dev.type == "cuda":
            set_cuda_flags()  # the TF32 part of the loop's CUDA fast path (sharpminima.train.perf)
        runs: dict[int, Run] = {}
        groups: dict[int, list[tuple[int, Trial]]] = {}
        for k, cfg in enumerate(configs):
            trial = open_trial(cfg, data, dev, store, model_factory)
            if isinstance(trial, Run):
                runs[k] = trial
                continue
            trial.opt = make_optimizer(trial.model.parameters(), cfg)  # to resume its state
            groups.setdefault(trial.resume(), []).append((k, trial))
        # where the sequential CUDA run would train channels_last (perf.prepare), its 4-D
        # dropout inputs are channels_last too, and so are the ones tensors the masks are drawn on
        for start, members in sorted(groups.items()):
            trials = [t for _, t in members]
            channels_last = (dev.type == "cuda" and data.x_train.ndim == 4
                             and any(isinstance(m, nn.Conv2d) for m in trials[0].model.modules()))
            engine = VectorizedEngine(trials, config, dev, channels_last)
            run_epochs(trials, engine, data, start, dev, progress)
            for k, t in members:
                runs[k] = t.run()
    return [runs[k] for k in range(len(configs))]
