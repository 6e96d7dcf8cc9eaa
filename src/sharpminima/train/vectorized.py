"""Vectorised trials: K seeds of one configuration trained as one batched computation.

The paper's protocol is many small runs (5 trials per network and regime). Trained one at
a time, a small network leaves a GPU idle; here the K trials' parameters are stacked
(:func:`torch.func.stack_module_state`, shape ``(K, ...)`` per tensor) and one step runs

.. code-block:: text

    losses = vmap(cross_entropy(functional_call(net, (params_k, buffers_k), x_k), y_k))  # (K,)
    losses.sum().backward()       # d(sum)/d(params_k) = d(loss_k)/d(params_k): trials stay independent
    optimizer.step()              # one optimizer over the stacked tensors

Each trial keeps everything a sequential :func:`~sharpminima.train.loop.train` run has:

* its initial weights: every network is built by the loop's own ``_fresh_model`` after
  ``torch.manual_seed(seed)``, then stacked;
* its data order: the loop's ``batch_indices(n, batch_size, seed, epoch)`` per trial, the
  K index sets gathered into a ``(K, B, ...)`` batch;
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

**What falls back to sequential training** (with a logged note): distributed
(``torchrun``) sessions, methods other than ``plain`` or with options (``compile``,
``autocast``), optimizers outside :data:`ELEMENTWISE_OPTIMIZERS`, networks with dropout
modules other than ``nn.Dropout`` (``Dropout2d``, ``AlphaDropout``...) or an
``nn.Dropout`` called more than once per forward pass (their masks are not drawn here;
functional ``F.dropout`` inside a custom ``forward`` is not detected and fails under
``vmap``), warm starts (``init_from``), batch-size schedules and augmentation, and any
config field this module does not know (:data:`SUPPORTED_FIELDS`), so a new option can
never be silently ignored. Learning-rate schedules (the loop's own
``schedules.make_schedule``, the same for every trial) and initialisation options (the
loop's ``_fresh_model``) are supported, and each epoch records the same metrics as the
loop (``batch_size``, ``steps``, ``lr_end``...).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from sharpminima.config import TrainConfig
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError
from sharpminima.train.checkpointing import RunFiles
from sharpminima.train.evaluate import evaluate
from sharpminima.train.loop import (
    Progress,
    StopState,
    _check_options,
    _fresh_model,
    batch_indices,
    epoch_seed,
    train,
)
from sharpminima.train.optim import make_optimizer
from sharpminima.train.perf import cuda_flags_restored, set_cuda_flags
from sharpminima.train.run import Run
from sharpminima.train.schedules import EpochContext, make_schedule, set_lr, steps_done

log = logging.getLogger(__name__)

#: Optimizers whose update is elementwise with a per-tensor step count, so one optimizer
#: over stacked ``(K, ...)`` tensors updates each trial exactly as its own would.
ELEMENTWISE_OPTIMIZERS = ("adam", "adamw", "sgd", "nesterov", "adagrad")

#: Config fields the vectorised path implements. A config that sets any other field to a
#: non-default value is trained sequentially.
SUPPORTED_FIELDS = frozenset({
    "net", "dataset", "batch_size", "optimizer", "lr", "momentum", "betas", "adam_eps",
    "weight_decay", "epochs", "stop", "patience", "min_improvement", "seed", "train_limit",
    "test_limit", "data_source", "save_every_epoch", "eval_chunk", "method", "tags",
    "init", "init_scale",  # applied by the loop's _fresh_model, which builds every trial
    "lr_schedule", "lr_schedule_args",  # a pure function of (step, epoch, batch size)
})


def fallback_reason(
    config: TrainConfig, model: nn.Module, input_shape: Sequence[int] | None = None
) -> str | None:
    """Say why ``config`` cannot be trained vectorised, or return None if it can.

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
    if config.method != "plain" or config.method_args:
        return f"method {config.method!r} with options {list(config.method_args)} is not vectorised"
    if config.optimizer not in ELEMENTWISE_OPTIMIZERS:
        return f"optimizer {config.optimizer!r} is not known to update elementwise"
    unknown = sorted(set(config.identity()) - SUPPORTED_FIELDS)
    if unknown:
        return f"config fields {unknown} are not implemented by the vectorised path"
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


@dataclass
class _Trial:
    """One trial's sequential-run state while it trains inside a vectorised group."""

    config: TrainConfig
    files: RunFiles
    model: nn.Module
    opt: torch.optim.Optimizer
    init_state: dict[str, Tensor]
    stop: StopState = field(default_factory=StopState)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"
    message: str | None = None


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

    def __init__(self, group: _Group, k: int) -> None:
        self.group, self.k = group, k

    def state_dict(self) -> dict[str, Any]:
        """Return the trial's optimizer state in its sequential optimizer's format."""
        return _slice_state(self.group.opt.state_dict(), self.group.shapes, self.k)


class _Group:
    """K trials' stacked parameters, buffers and optimizer."""

    def __init__(
        self, trials: list[_Trial], config: TrainConfig, dev: torch.device, channels_last: bool
    ) -> None:
        self.trials = trials
        self.config = config
        models = [t.model for t in trials]
        params, buffers = stack_module_state(models)  # {name: (K, ...)}
        self.names = [n for n, p in models[0].named_parameters() if p.requires_grad]
        self.params = {n: params[n] for n in self.names}
        self.frozen = {n: v for n, v in params.items() if n not in self.params}
        self.buffers = buffers
        self.shapes = [self.params[n].shape for n in self.names]
        self.opt = make_optimizer(list(self.params.values()), config)
        states = [t.opt.state_dict() for t in trials]
        if states[0]["state"]:  # resumed: carry each trial's optimizer state over
            self.opt.load_state_dict(_stack_state(states, self.shapes))
        self.base = copy.deepcopy(models[0]).to("meta")  # architecture only
        dtype = next(iter(self.params.values())).dtype
        self.dropouts = _Dropouts(self.base, dev, dtype, channels_last)

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(self.base, (p, b), (xb,)), yb)

        self._losses = vmap(one)

    def step(self, xb: Tensor, yb: Tensor) -> Tensor:
        """One update of every trial on its batch; ``xb`` is ``(K, B, ...)``; returns ``(K,)``."""
        self.opt.zero_grad(set_to_none=True)
        masks = self.dropouts.masks(tuple(xb.shape[1:]))  # each trial's, as its own run draws them
        losses = self._losses({**self.params, **self.frozen}, {**self.buffers, **masks}, xb, yb)  # (K,)
        losses.sum().backward()
        self.opt.step()
        return losses.detach()

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy every trial's slice into its own network (for evaluation and checkpoints)."""
        for k, t in enumerate(self.trials):
            state = {n: v[k] for n, v in {**self.params, **self.frozen, **self.buffers}.items()}
            t.model.load_state_dict(state)

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
    with cuda_flags_restored():
        return _train_vectorized(
            config, seeds, dataset=dataset, store=store, device=device, progress=progress,
            model_factory=model_factory,
        )


def _train_vectorized(
    config: TrainConfig,
    seeds: Sequence[int] = range(5),
    *,
    dataset: Dataset | None = None,
    store: Any = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
) -> list[Run]:
    """The implementation of :func:`train_vectorized` (CUDA flags are restored by the caller)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("train_vectorized needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"the trials' seeds must differ, got {seeds}")
    configs = [config.replace(seed=s) for s in seeds]
    kwargs: dict[str, Any] = {"dataset": dataset, "store": store, "device": device,
                              "progress": progress, "model_factory": model_factory}
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dataset is None:
        from sharpminima.data import load

        dataset = load(config.dataset, source=config.data_source)
        kwargs["dataset"] = dataset
    data = dataset.subset(config.train_limit, config.test_limit).to(dev)
    if config.batch_size > data.num_train:
        raise ConfigError(f"batch size {config.batch_size} exceeds the {data.num_train} training samples")
    _check_options(config, data)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    if dev.type == "cuda":
        set_cuda_flags()  # the TF32 part of the loop's CUDA fast path (sharpminima.train.perf)
    with torch.random.fork_rng(devices=devices):
        reason = fallback_reason(config, _fresh_model(configs[0], data, model_factory), data.input_shape)
    if reason is not None:
        log.info("training %d trials one at a time: %s", len(seeds), reason)
        return [train(c, **kwargs) for c in configs]

    runs: dict[int, Run] = {}
    groups: dict[int, list[tuple[int, _Trial]]] = {}
    with torch.random.fork_rng(devices=devices):
        for k, cfg in enumerate(configs):
            files = RunFiles.open(store, cfg)
            if files.finished():
                runs[k] = files.load_run(lambda c=cfg: _fresh_model(c, data, model_factory).to(dev))
                continue
            model = _fresh_model(cfg, data, model_factory).to(dev)
            init_state = files.initial_weights(model)
            trial = _Trial(cfg, files, model, make_optimizer(model.parameters(), cfg), init_state)
            start = files.resume(trial.model, trial.opt, trial.stop, trial.history)
            groups.setdefault(start, []).append((k, trial))
        for start, members in sorted(groups.items()):
            _train_group([t for _, t in members], start, data, dev, progress)
            for k, t in members:
                runs[k] = Run(t.files.run_id, t.config, t.status, t.message, t.history,
                              t.model, t.init_state, t.files.root)
    return [runs[k] for k in range(len(configs))]


def _finish(trial: _Trial, status: str, message: str | None) -> None:
    trial.files.finish(status, message, trial.model, trial.history)
    trial.status, trial.message = status, message


def _train_group(
    trials: list[_Trial], start_epoch: int, data: Dataset, dev: torch.device, progress: Progress | None
) -> None:
    """Train trials that all resume after ``start_epoch`` together, until each one ends."""
    config = trials[0].config
    # where the sequential CUDA run would train channels_last (perf.prepare), its 4-D dropout
    # inputs are channels_last too, and so are the ones tensors the masks are drawn on
    channels_last = (dev.type == "cuda" and data.x_train.ndim == 4
                     and any(isinstance(m, nn.Conv2d) for m in trials[0].model.modules()))
    group = _Group(trials, config, dev, channels_last)
    n = data.num_train
    schedule = make_schedule(config, n)  # constant batch size here; maybe an lr schedule
    num_steps = steps_done(trials[0].history, n, config.batch_size)  # the same for every trial
    steps_per_epoch = math.ceil(n / config.batch_size)
    if progress:
        progress("start", {"total_steps": steps_per_epoch * config.epochs, "done_steps": num_steps})
    for t in trials:
        t.files.mark_running()
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if not group.trials:
                break
            t0 = time.perf_counter()
            lead = group.trials[0]  # a constant batch rule plans the same epoch for every trial
            plan = schedule.plan(epoch, EpochContext(lead.model, data, lead.history))
            group.base.train()
            group.dropouts.start_epoch([t.config.seed for t in group.trials], epoch)
            loss_sum, first_step = torch.zeros(len(group.trials), device=dev), num_steps
            orders = [batch_indices(n, plan.batch_size, t.config.seed, epoch, dev) for t in group.trials]
            for step_idx in zip(*orders, strict=True):
                set_lr(group.opt, schedule.lr(num_steps, epoch, plan), config.lr)
                idx = torch.stack(step_idx)  # (K, B)
                loss_sum += group.step(data.x_train[idx], data.y_train[idx]) * idx.shape[1]
                num_steps += 1
                if progress:
                    progress("step", {})
            epoch_losses = (loss_sum / n).tolist()  # waits for the epoch's last step on a GPU
            seconds = (time.perf_counter() - t0) / len(group.trials)
            group.unstack()
            extra = {"batch_size": plan.batch_size, "batch_size_mean": n / (num_steps - first_step),
                     "steps": num_steps, "lr_end": float(group.opt.param_groups[0]["lr"]),
                     **plan.metrics}
            keep = []
            for k, t in enumerate(group.trials):
                if _end_epoch(t, epoch, epoch_losses[k], seconds, extra, data, group, k, progress):
                    keep.append(k)
            if len(keep) < len(group.trials):
                group.keep(keep)
    except BaseException as exc:
        for t in group.trials:
            if t.status == "pending":
                _finish(t, "failed", f"{type(exc).__name__}: {exc}")
        raise
    for t in group.trials:
        if t.status == "pending":
            _finish(t, "done", None)


def _end_epoch(
    t: _Trial, epoch: int, epoch_loss: float, seconds: float, extra: dict[str, Any], data: Dataset,
    group: _Group, k: int, progress: Progress | None,
) -> bool:
    """Evaluate, record and checkpoint one trial's epoch; return whether it trains on."""
    train_loss, train_acc = evaluate(t.model, data.x_train, data.y_train, t.config.eval_chunk)
    test_loss, test_acc = evaluate(t.model, data.x_test, data.y_test, t.config.eval_chunk)
    metrics = {"epoch": epoch, "epoch_loss": epoch_loss, "train_loss": train_loss,
               "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
               "seconds": seconds, **extra}
    t.history.append(metrics)
    opt_view = _TrialOptimizerView(group, k)
    if not (math.isfinite(epoch_loss) and math.isfinite(train_loss)):
        t.files.end_epoch(epoch, metrics, t.model, opt_view, t.stop, save=False)  # type: ignore[arg-type]
        _finish(t, "diverged", f"training loss became {epoch_loss} in epoch {epoch}; "
                               f"lower the learning rate (now {t.config.lr})")
        return False
    t.stop.update(train_loss, t.config.min_improvement)
    t.files.end_epoch(epoch, metrics, t.model, opt_view, t.stop, save=True)  # type: ignore[arg-type]
    if progress:
        progress("epoch", metrics)
    if t.config.stop == "plateau" and t.stop.bad_epochs >= t.config.patience:
        log.info("run %s: training loss plateaued after epoch %d", t.files.run_id, epoch)
        _finish(t, "done", None)
        return False
    return True
