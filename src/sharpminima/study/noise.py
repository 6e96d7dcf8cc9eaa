"""Why large batches find sharp minima: a gradient-noise study, and how to choose the batch size.

``run_noise_study(get_noise_preset("quick"), store=Store("runs"))`` trains (or reuses from
the store) every run of five experiments and measures them; the report
(:mod:`sharpminima.study.noise_report`) answers, section by section:

1. **Critical batch size.** Steps to a training-loss target per batch size, each with its
   best learning rate from a small grid; the fit ``S(B) = S_min + E_min / B`` of McCandlish
   et al. 2018 (:mod:`.tradeoff`) gives ``B_crit = E_min / S_min`` with a bootstrap
   interval, beside the gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` measured along
   one of the same runs (registered measure ``gradient_noise_scale``).
2. **Temperature.** SGD over batch sizes and fixed ratios ``lr / B``, a few seeds: test
   accuracy, the generalization gap and Keskar sharpness against ``lr / B``.
3. **Noise structure.** From the LB minimum, LB training with no noise, with isotropic and
   with anisotropic noise of SB's magnitude (the ``batch_noise`` training method,
   :mod:`sharpminima.train.noise_methods`), and SB training, for the same number of
   steps; plus the alignment of SB's noise with the Hessian
   (``tr(H Sigma) / (tr(H) tr(Sigma) / P)``, 1 for isotropic noise).
4. **Escape.** SB from the LB minimum and LB from the SB minimum: loss, Keskar sharpness,
   top Hessian eigenvalue and distance travelled per epoch.
5. **Stability.** The top Hessian eigenvalue along SB and LB SGD training against
   ``2 (1 + beta) / lr``; for Adam the preconditioned sharpness at the end of training
   against ``(2 + 2 beta1) / ((1 - beta1) lr)`` (Cohen et al. 2022).

Every run is a :class:`~sharpminima.config.TrainConfig` trained by
:func:`sharpminima.train.train` through the store (warm starts by ``init_from``), every
measurement a registered measure through
:func:`~sharpminima.landscape.registry.cached_measure`: rerunning the study (after a kill,
too) retrains and remeasures nothing that is finished. Bad input (a batch size above the
training subset, a target some runs never reach) is recorded in ``warnings`` and the
report, not raised.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpminima.config import TRAIN_THREADS, TrainConfig
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError
from sharpminima.intervals import summary
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.objective import flatten_params
from sharpminima.landscape.registry import DataSpec, Inputs, Request, cached_measure
from sharpminima.store.provenance import count_measurements, inputs_provenance
from sharpminima.study.runner import Progress
from sharpminima.study.tradeoff import (
    adam_preconditioner,
    bootstrap_tradeoff,
    preconditioned_sharpness,
    stability_threshold,
    steps_to_target,
    tradeoff_curve,
)
from sharpminima.train import Run, train
from sharpminima.train.checkpointing import RunFiles
from sharpminima.train.setup import batch_indices
from sharpminima.train.step_parts import trainable

#: The paper's large batch for MNIST: 10% of 60,000 training images.
PAPER_LB_MNIST = 6000

#: Keys of the report's sections, in order.
SECTIONS = ("critical", "temperature", "structure", "escape", "stability")


@dataclass(frozen=True)
class NoisePreset:
    """Everything the noise study does, in one frozen record (written into the report).

    Attributes:
        name: ``quick``, ``full`` or a modified one.
        net: Network of every run.
        dataset: Dataset name.
        train_limit: First N training samples (None: all).
        test_limit: First N test samples (None: all).
        cb_batch_sizes: Section 1: the batch-size grid.
        cb_lrs: Section 1: the learning rates tried per batch size (the best is kept).
        cb_optimizer: Section 1's optimizer.
        cb_max_steps: Section 1: each run gets ``ceil(cb_max_steps / steps_per_epoch)``
            epochs, clipped to ``[cb_min_epochs, cb_max_epochs]``.
        cb_min_epochs: See ``cb_max_steps``.
        cb_max_epochs: See ``cb_max_steps``.
        loss_target: Section 1's training cross-entropy target (full pass, eval mode).
        noise_scale_batch: Section 1: ``B_simple`` is measured along the best run of this
            batch size (it saves every epoch).
        temp_batch_sizes: Section 2's batch sizes.
        temp_ratios: Section 2's ``lr / B`` ratios (lr = ratio x B).
        seeds: Section 2's trials.
        epochs: Epochs of the SB runs of sections 2-5 (SGD).
        momentum: SGD momentum of sections 2-5.
        sb: The small batch of sections 3-5 (the noise injected is this batch's).
        lb: The large batch of sections 3-5.
        lr: SGD learning rate of sections 3-5 (SB and LB alike).
        lb_epochs: Epochs of the LB run that finds the LB minimum.
        escape_steps: Steps of every run that starts from a minimum (sections 3 and 4).
        measure_samples: First N training samples every landscape measure averages over.
        eps: Keskar sharpness box size.
        keskar_max_iters: L-BFGS-B iterations of Keskar sharpness.
        hessian_max_iters: Lanczos steps of the top Hessian eigenvalue.
        hessian_tol: Lanczos relative tolerance.
        noise_examples: Per-example gradients of the noise scale.
        alignment_draws: Noise draws (and Hutchinson probes) of the alignment.
        measure_every: Measure along training every this many epochs (and the last).
        num_bootstrap: Bootstrap resamples of ``B_crit``'s interval.
        level: Confidence level of every interval.
        bootstrap_seed: Seed of the resampling.
        num_threads: Torch CPU threads of every run (part of the runs' identity).
    """

    name: str
    net: str = "f1"
    dataset: str = "mnist"
    train_limit: int | None = None
    test_limit: int | None = None
    cb_batch_sizes: tuple[int, ...] = (64, 256, 1024, 6000, 60000)
    cb_lrs: tuple[float, ...] = (1e-3, 3e-3)
    cb_optimizer: str = "adam"
    cb_max_steps: int = 3000
    cb_min_epochs: int = 3
    cb_max_epochs: int = 200
    loss_target: float = 0.1
    noise_scale_batch: int = 256
    temp_batch_sizes: tuple[int, ...] = (64, 256, 1024)
    temp_ratios: tuple[float, ...] = (2.5e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 20
    momentum: float = 0.9
    sb: int = 256
    lb: int = 6000
    lr: float = 0.064  # = 2.5e-4 x 256: the SB run of sections 3-5 is a temperature run
    lb_epochs: int = 100
    escape_steps: int = 2000
    measure_samples: int = 2000
    eps: float = 1e-3
    keskar_max_iters: int = 10
    hessian_max_iters: int = 30
    hessian_tol: float = 1e-2
    noise_examples: int = 1000
    alignment_draws: int = 16
    measure_every: int = 5
    num_bootstrap: int = 1000
    level: float = 0.95
    bootstrap_seed: int = 0
    num_threads: int = TRAIN_THREADS

    def __post_init__(self) -> None:
        """Validate what a user can set."""
        if not self.loss_target > 0:
            raise ConfigError(f"the loss target must be positive, got {self.loss_target}")
        if not self.measure_samples >= 2:
            raise ConfigError(f"measure samples must be an integer >= 2, got {self.measure_samples}")
        if not self.cb_batch_sizes or not self.cb_lrs:
            raise ConfigError("the critical-batch grid needs at least one batch size and one learning rate")
        if self.sb >= self.lb:
            raise ConfigError(f"the small batch ({self.sb}) must be smaller than the large batch ({self.lb})")

    def replace(self, **changes: Any) -> NoisePreset:
        """Return a copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return dataclasses.asdict(self)

    def base_config(self, **changes: Any) -> TrainConfig:
        """The configuration every run starts from, with ``changes``."""
        return TrainConfig(
            net=self.net,
            dataset=self.dataset,
            train_limit=self.train_limit,
            test_limit=self.test_limit,
            stop="epochs",
            num_threads=self.num_threads,
        ).replace(**changes)


#: Sized for at most 20 minutes on an idle 2-core CPU (not measured idle: 20 min 53 s on a
#: shared 2-core x86_64 CPU under load 5-9 from other jobs, about 10 CPU-minutes). F1 on the
#: first 1,024 MNIST training images, tested on 1,000 test images; measures on 512 images.
#: What it gives up: one seed in sections 1, 3, 4 and 5 and two in section 2; a training
#: subset 60x smaller than the paper's (so the large batch, 256 = 25% of it, is not the
#: paper's 10%); few epochs and steps, so the minima are only approximately converged; few
#: Lanczos and L-BFGS-B iterations. Its numbers show the machinery and the direction of
#: effects, not their size.
QUICK = NoisePreset(
    name="quick",
    train_limit=1024,
    test_limit=1000,
    cb_batch_sizes=(32, 128, 512, 1024),
    cb_lrs=(1e-3, 3e-3),
    cb_max_steps=96,
    cb_min_epochs=3,
    cb_max_epochs=24,
    loss_target=0.25,
    noise_scale_batch=128,
    temp_batch_sizes=(32, 128),
    temp_ratios=(2.5e-4, 1e-3),
    seeds=(0, 1),
    epochs=6,
    sb=32,
    lb=256,
    lr=0.032,
    lb_epochs=24,
    escape_steps=64,
    measure_samples=512,
    keskar_max_iters=3,
    hessian_max_iters=10,
    noise_examples=256,
    alignment_draws=8,
    measure_every=2,
)

#: For one GPU: F1 on all 60,000 MNIST images, batch sizes 64 up to the full set (with the
#: paper's 6,000), three seeds in section 2, SB 256 and LB 6,000, measures on 2,000 images.
#: About 2,200 epochs of training (most of them cheap full- and large-batch epochs) and
#: about 60 measurements: estimated at 30-60 minutes on one H100 from step counts (not
#: measured; no GPU was available to this change).
FULL = NoisePreset(name="full")

PRESETS = {"quick": QUICK, "full": FULL}


def get_noise_preset(name: str, **changes: Any) -> NoisePreset:
    """Return the named preset with ``changes`` applied (``None`` values are ignored).

    Raises:
        ConfigError: For an unknown preset name or an invalid change.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown noise-study preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Optimizer steps of one epoch (the loop's batching: a 1-sample tail joins the batch before)."""
    return len(batch_indices(num_train, batch_size, 0, 1, torch.device("cpu")))


def cb_epochs(preset: NoisePreset, num_train: int, batch_size: int) -> int:
    """Section 1's epoch budget of one batch size (see :class:`NoisePreset`)."""
    want = math.ceil(preset.cb_max_steps / steps_per_epoch(num_train, batch_size))
    return max(preset.cb_min_epochs, min(preset.cb_max_epochs, want))


def escape_epochs(preset: NoisePreset, num_train: int, batch_size: int) -> int:
    """Epochs of ``batch_size`` that take at least ``escape_steps`` steps."""
    return max(1, math.ceil(preset.escape_steps / steps_per_epoch(num_train, batch_size)))


def plan_noise(preset: NoisePreset, num_train: int) -> dict[str, Any]:
    """Batch sizes kept and skipped, and the planned work (runs and measurements).

    A batch size above the training subset is skipped with a warning, not an error.

    Raises:
        ConfigError: If the SB or LB batch of sections 3-5 exceeds the training subset.
    """
    n = min(num_train, preset.train_limit or num_train)
    warnings = []
    cb = [b for b in preset.cb_batch_sizes if b <= n]
    skipped = sorted(set(preset.cb_batch_sizes) - set(cb))
    if skipped:
        warnings.append(f"batch size(s) {skipped} exceed the {n} training samples; section 1 skips them")
    temp = [b for b in preset.temp_batch_sizes if b <= n]
    skipped_t = sorted(set(preset.temp_batch_sizes) - set(temp))
    if skipped_t:
        warnings.append(f"batch size(s) {skipped_t} exceed the {n} training samples; section 2 skips them")
    if preset.lb > n:
        raise ConfigError(
            f"the large batch {preset.lb} exceeds the {n} training samples; lower --lb or raise --train-limit"
        )
    runs = len(cb) * len(preset.cb_lrs) + len(temp) * len(preset.temp_ratios) * len(preset.seeds) + 7
    measures = len(temp) * len(preset.temp_ratios) * len(preset.seeds) + 40
    return {
        "num_train": n,
        "cb_batch_sizes": cb,
        "temp_batch_sizes": temp,
        "skipped": skipped + skipped_t,
        "warnings": warnings,
        "total": float(runs + measures),
    }


class _Lab:
    """Trains and measures through the store; counts progress."""

    def __init__(
        self,
        preset: NoisePreset,
        store: Any,
        dataset: Dataset,
        dev: torch.device,
        progress: Progress | None,
        model_factory: Callable[[], nn.Module] | None,
    ) -> None:
        self.p, self.store, self.data, self.dev = preset, store, dataset, dev
        self.progress, self.model_factory = progress, model_factory
        subset = dataset.subset(preset.train_limit, preset.test_limit)
        self.num_train, self.num_test = subset.num_train, subset.num_test
        self.samples = min(preset.measure_samples, subset.num_train)
        self.x = subset.x_train[: self.samples].to(dev)
        self.y = subset.y_train[: self.samples].to(dev)
        self.configs: dict[str, TrainConfig] = {}
        self.spec = DataSpec(
            split="train",
            num_samples=self.samples,
            chunk_size=self.samples,
            bn_mode="eval",
            loss="cross_entropy",
        )

    def tick(self, label: str) -> None:
        if self.progress is not None:
            self.progress(1.0, label)

    def train(self, config: TrainConfig, label: str) -> Run:
        run = train(
            config, dataset=self.data, store=self.store, device=self.dev, model_factory=self.model_factory
        )
        self.configs[run.id] = config
        self.tick(f"train {label}")
        return run

    def model_at(self, run: Run, epoch: int | None) -> nn.Module:
        """A copy of the run's network at a saved epoch (None: final; 0: initial)."""
        model = copy.deepcopy(run.model)
        if epoch is not None:
            model.load_state_dict(RunFiles(self.store, run.config, run.id).weights_of(f"{run.id}@{epoch}"))
        return model

    def objective(self, model: nn.Module, bn: str = "eval") -> ModelObjective:
        return ModelObjective(model, self.x, self.y, bn_mode=bn, chunk_size=self.samples)  # type: ignore[arg-type]

    def measure(
        self, run: Run, name: str, point: str, model: nn.Module, bn: str = "eval", **params: Any
    ) -> dict[str, Any]:
        """A registered measure at ``model`` (cached under ``run`` and ``point``)."""
        request = Request.of(name, dataclasses.replace(self.spec, bn_mode=bn), point, params)

        def build() -> Inputs:
            return Inputs(
                self.objective(model, bn), flatten_params(model), x0=run.initial_vector(), model=model
            )

        if not bool(flatten_params(model).isfinite().all()):
            return {"value": math.nan, "converged": False}
        record = cached_measure(self.store, run.id, request, build)
        self.tick(f"{name} {run.id} {point}")
        return {"value": record.value, "converged": record.result.get("converged", True)}

    def keskar(self, run: Run, point: str, model: nn.Module) -> float:
        return self.measure(
            run,
            "keskar_sharpness",
            point,
            model,
            eps=self.p.eps,
            subspace="full",
            max_iters=self.p.keskar_max_iters,
        )["value"]

    def top_eig(self, run: Run, point: str, model: nn.Module, bn: str = "eval") -> float:
        return self.measure(
            run,
            "hessian_eigenvalues",
            point,
            model,
            bn,
            k=1,
            seed=0,
            tol=self.p.hessian_tol,
            max_iters=self.p.hessian_max_iters,
        )["value"]

    def point_measures(self, run: Run, epoch: int | None) -> dict[str, Any]:
        """Keskar sharpness, top eigenvalue and weights at an epoch (None: final)."""
        point = "final" if epoch is None else f"epoch={epoch}"
        model = self.model_at(run, epoch)
        return {
            "sharpness": self.keskar(run, point, model),
            "top_eigenvalue": self.top_eig(run, point, model),
            "x": flatten_params(model).detach().cpu(),
        }


def _final(run: Run) -> dict[str, Any]:
    f = run.final
    out = {k: f.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
    if out["train_acc"] is not None and out["test_acc"] is not None:
        out["gap_error"] = out["train_acc"] - out["test_acc"]
    return out


def _epochs_to_measure(last: int, every: int) -> list[int]:
    return sorted({e for e in range(1, last + 1) if e % max(1, every) == 0 or e in (1, last)})


# --------------------------------------------------------------------------- sections
def critical_batch(lab: _Lab, plan: dict[str, Any]) -> dict[str, Any]:
    """Section 1: steps to the target per batch size, the trade-off fit and ``B_simple``."""
    p, n = lab.p, lab.num_train
    initial = math.log(lab.data.num_classes) if getattr(lab.data, "num_classes", None) else None
    runs, per_batch, not_reached = [], [], []
    for bs in plan["cb_batch_sizes"]:
        spe = steps_per_epoch(n, bs)
        best: dict[str, Any] | None = None
        for lr in p.cb_lrs:
            cfg = p.base_config(
                batch_size=bs,
                optimizer=p.cb_optimizer,
                lr=lr,
                epochs=cb_epochs(p, n, bs),
                save_every_epoch=bs == p.noise_scale_batch,
            )
            run = lab.train(cfg, f"B={bs} lr={lr:g}")
            losses = [h.get("train_loss") for h in run.history]
            steps = steps_to_target(losses, spe, p.loss_target, initial) if run.status == "done" else None
            row = {
                "batch_size": bs,
                "lr": lr,
                "run_id": run.id,
                "status": run.status,
                "epochs": run.epochs,
                "steps_per_epoch": spe,
                "losses": losses,
                "steps": steps,
                **_final(run),
            }
            runs.append(row)
            if steps is not None and (best is None or steps < best["steps"]):
                best = row
        if best is None:
            not_reached.append(bs)
            continue
        per_batch.append(
            {
                "batch_size": bs,
                "lr": best["lr"],
                "steps": best["steps"],
                "epochs": best["steps"] / spe,
                "samples": best["steps"] * bs,
                "run_id": best["run_id"],
            }
        )
    out: dict[str, Any] = {
        "runs": runs,
        "per_batch": per_batch,
        "not_reached": not_reached,
        "target": p.loss_target,
        "paper_batch": round(0.1 * n),
        "paper_batch_mnist": PAPER_LB_MNIST,
        "fit": None,
        "fit_note": None,
    }
    if not_reached:
        out["warning"] = (
            f"batch size(s) {not_reached} never reached training loss {p.loss_target:g} "
            "within their epochs at any learning rate; the fit leaves them out"
        )
    if len({r["batch_size"] for r in per_batch}) >= 2:
        fit = bootstrap_tradeoff(
            [r["batch_size"] for r in per_batch],
            [r["steps"] for r in per_batch],
            num_bootstrap=p.num_bootstrap,
            level=p.level,
            seed=p.bootstrap_seed,
        )
        fit["curve"] = {
            "batch_size": [r["batch_size"] for r in per_batch],
            "steps": tradeoff_curve(fit["s_min"], fit["e_min"], [r["batch_size"] for r in per_batch]),
        }
        fit["steps_at_paper_batch"] = tradeoff_curve(fit["s_min"], fit["e_min"], [out["paper_batch"]])[0]
        out["fit"] = fit
    else:
        out["fit_note"] = "fewer than two batch sizes reached the target: no fit, B_crit cannot be said"
    out["noise_scale"] = _noise_scale_along(lab, runs)
    return out


def _noise_scale_along(lab: _Lab, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``B_simple`` at the saved epochs of the best reference run."""
    p = lab.p
    ref = [r for r in runs if r["batch_size"] == p.noise_scale_batch and r["status"] == "done"]
    if not ref:
        return {"points": [], "note": f"no finished run at batch {p.noise_scale_batch} to measure along"}
    best = min(ref, key=lambda r: (r["steps"] is None, r["steps"] or 0.0, r["losses"][-1]))
    run = lab.train(lab.configs[best["run_id"]], "noise-scale reference")
    points = []
    num = min(p.noise_examples, lab.samples)
    for e in _epochs_to_measure(run.epochs, p.measure_every):
        model = lab.model_at(run, e)
        rec = cached_measure(
            lab.store,
            run.id,
            Request.of("gradient_noise_scale", lab.spec, f"epoch={e}", {"num_examples": num, "seed": 0}),
            lambda model=model: Inputs(lab.objective(model), flatten_params(model), model=model),
        )
        lab.tick(f"noise scale epoch {e}")
        points.append(
            {
                "epoch": e,
                "step": e * best["steps_per_epoch"],
                "value": rec.value,
                "stderr": rec.result.get("stderr"),
                "train_loss": run.history[e - 1]["train_loss"],
            }
        )
    at_target = None
    if points:
        at_target = min(points, key=lambda q: abs(math.log(max(q["train_loss"], 1e-12) / p.loss_target)))
    return {
        "run_id": run.id,
        "batch_size": best["batch_size"],
        "lr": best["lr"],
        "points": points,
        "at_target": at_target,
    }


def temperature(lab: _Lab, plan: dict[str, Any]) -> dict[str, Any]:
    """Section 2: test accuracy, gap and sharpness over the ``lr / B`` grid."""
    p = lab.p
    rows = []
    for bs in plan["temp_batch_sizes"]:
        for ratio in p.temp_ratios:
            for seed in p.seeds:
                cfg = p.base_config(
                    batch_size=bs,
                    optimizer="sgd",
                    lr=ratio * bs,
                    momentum=p.momentum,
                    epochs=p.epochs,
                    seed=seed,
                    save_every_epoch=bs == p.sb and seed == p.seeds[0],
                )
                run = lab.train(cfg, f"temperature B={bs} lr/B={ratio:g} seed {seed}")
                sharp = lab.keskar(run, "final", run.model) if run.status == "done" else math.nan
                rows.append(
                    {
                        "batch_size": bs,
                        "ratio": ratio,
                        "lr": ratio * bs,
                        "seed": seed,
                        "run_id": run.id,
                        "status": run.status,
                        "sharpness": sharp,
                        **_final(run),
                    }
                )
    groups = []
    for bs in plan["temp_batch_sizes"]:
        for ratio in p.temp_ratios:
            g = [r for r in rows if r["batch_size"] == bs and r["ratio"] == ratio and r["status"] == "done"]
            groups.append(
                {
                    "batch_size": bs,
                    "ratio": ratio,
                    **{
                        k: summary([r.get(k) for r in g], p.level)
                        for k in ("test_acc", "gap_error", "sharpness")
                    },
                }
            )
    return {"runs": rows, "groups": groups, "momentum": p.momentum}


def _sb_config(p: NoisePreset, **changes: Any) -> TrainConfig:
    return p.base_config(
        batch_size=p.sb,
        optimizer="sgd",
        lr=p.lr,
        momentum=p.momentum,
        epochs=p.epochs,
        seed=p.seeds[0],
        save_every_epoch=True,
    ).replace(**changes)


def _lb_config(p: NoisePreset, **changes: Any) -> TrainConfig:
    return _sb_config(p, batch_size=p.lb, epochs=p.lb_epochs).replace(**changes)


def _noise_args(p: NoisePreset, structure: str) -> tuple[tuple[str, Any], ...]:
    return (("noise_batch_size", p.sb), ("structure", structure))


def minima(lab: _Lab) -> tuple[Run, Run]:
    """The SB and LB minima of sections 3-5 (SGD with momentum, same lr)."""
    p = lab.p
    sb = lab.train(_sb_config(p), f"SB minimum (B={p.sb})")
    lb = lab.train(_lb_config(p), f"LB minimum (B={p.lb})")
    return sb, lb


def noise_alignment(
    model: nn.Module, x: Tensor, y: Tensor, *, num_draws: int, seed: int = 0
) -> dict[str, Any]:
    """How SB's gradient noise lines up with the Hessian: ``tr(H Sigma) / (tr(H) tr(Sigma) / P)``.

    Draws ``n_k = (1/m) sum_i s_i (g_i - g_bar)`` (``s_i ~ N(0, 1)``, ``g_i`` per-example
    gradients of the ``m`` samples, running BatchNorm statistics), whose covariance is
    ``Sigma`` up to a factor, and Rademacher probes ``z_k``. ``tr(H Sigma) / tr(Sigma)`` is
    estimated by ``mean(n^T H n) / mean(|n|^2)``, ``tr(H) / P`` by ``mean(z^T H z) / P``;
    their ratio is 1 for isotropic noise and above 1 when the noise lies along the
    high-curvature directions (Zhu et al. 2019). The interval is the t-interval over the
    draws of ``(n_k^T H n_k / |n_k|^2) / (tr(H) / P)`` (tr(H) held at its estimate).

    Returns:
        ``{"ratio", "ci", "trace_h_over_p", "rayleigh", "num_draws"}``.
    """
    model = copy.deepcopy(model).eval()
    params = trainable(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    losses = F.cross_entropy(model(x), y, reduction="none")  # (m,)
    grads = torch.autograd.grad(losses.mean(), params, create_graph=True)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        dot = sum((g * t).sum() for g, t in zip(grads, v, strict=True))
        return list(torch.autograd.grad(dot, params, retain_graph=True))

    def inner(a: list[Tensor], b: list[Tensor]) -> float:
        return float(sum((s.double() * t.double()).sum() for s, t in zip(a, b, strict=True)))

    num_params = sum(p.numel() for p in params)
    quad, norms, probes = [], [], []
    for _ in range(num_draws):
        s = torch.randn(len(losses), generator=gen).to(losses)
        w = (s - s.mean()) / len(losses)
        n = [t.detach() for t in torch.autograd.grad((w * losses).sum(), params, retain_graph=True)]
        quad.append(inner(n, hvp(n)))
        norms.append(inner(n, n))
        z = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p in params]
        probes.append(inner(z, hvp(z)))
    trace_h = sum(probes) / len(probes)
    mean_curv = trace_h / num_params
    ratio = (sum(quad) / sum(norms)) / mean_curv if mean_curv > 0 else math.nan
    per = [q / t / mean_curv for q, t in zip(quad, norms, strict=True)] if mean_curv > 0 else []
    stats = summary(per)
    return {
        "ratio": ratio,
        "ci": stats["ci"],
        "trace_h_over_p": mean_curv,
        "rayleigh": sum(quad) / sum(norms),
        "num_draws": num_draws,
    }


def structure(lab: _Lab, sb: Run, lb: Run) -> dict[str, Any]:
    """Section 3: from the LB minimum, no / isotropic / anisotropic noise and SB, equal steps."""
    p, n = lab.p, lab.num_train
    rows = []
    if lb.status != "done":
        return {"rows": [], "note": f"the LB run {lb.id} {lb.status}; nothing to start from"}
    start = f"{lb.id}"
    variants = [
        ("LB, no noise", _lb_config(p, init_from=start, epochs=escape_epochs(p, n, p.lb))),
        (
            "LB + isotropic noise",
            _lb_config(
                p,
                init_from=start,
                epochs=escape_epochs(p, n, p.lb),
                method="batch_noise",
                method_args=_noise_args(p, "isotropic"),
            ),
        ),
        (
            "LB + anisotropic noise",
            _lb_config(
                p,
                init_from=start,
                epochs=escape_epochs(p, n, p.lb),
                method="batch_noise",
                method_args=_noise_args(p, "anisotropic"),
            ),
        ),
        ("SB", _sb_config(p, init_from=start, epochs=escape_epochs(p, n, p.sb))),
    ]
    for label, cfg in variants:
        run = lab.train(cfg, f"structure: {label}")
        row = {
            "label": label,
            "run_id": run.id,
            "status": run.status,
            "batch_size": cfg.batch_size,
            "epochs": run.epochs,
            "steps": run.epochs * steps_per_epoch(n, cfg.batch_size),
            **_final(run),
        }
        if run.status == "done":
            row["sharpness"] = lab.keskar(run, "final", run.model)
            row["top_eigenvalue"] = lab.top_eig(run, "final", run.model)
        rows.append(row)
    reference = []
    for label, run in (("LB minimum (start)", lb), ("SB minimum", sb)):
        if run.status != "done":
            continue
        reference.append(
            {
                "label": label,
                "run_id": run.id,
                **_final(run),
                "sharpness": lab.keskar(run, "final", run.model),
                "top_eigenvalue": lab.top_eig(run, "final", run.model),
            }
        )
    alignment = []
    for label, run in (("LB minimum", lb), ("SB minimum", sb)):
        if run.status == "done":
            m = min(lab.samples, 256)
            a = noise_alignment(run.model, lab.x[:m], lab.y[:m], num_draws=p.alignment_draws, seed=0)
            alignment.append({"label": label, "samples": m, **a})
            lab.tick(f"alignment {label}")
    return {"rows": rows, "reference": reference, "alignment": alignment}


def escape(lab: _Lab, sb: Run, lb: Run) -> dict[str, Any]:
    """Section 4: SB from the LB minimum and LB from the SB minimum, measured per epoch."""
    p, n = lab.p, lab.num_train
    out = []
    for label, source, cfg in (
        ("SB from the LB minimum", lb, _sb_config(p, init_from=lb.id, epochs=escape_epochs(p, n, p.sb))),
        ("LB from the SB minimum", sb, _lb_config(p, init_from=sb.id, epochs=escape_epochs(p, n, p.lb))),
    ):
        if source.status != "done":
            out.append({"label": label, "note": f"source run {source.id} {source.status}", "points": []})
            continue
        run = lab.train(cfg, f"escape: {label}")
        start = lab.point_measures(source, None)
        x0 = start.pop("x")
        points = [
            {
                "epoch": 0,
                "step": 0,
                "train_loss": source.final.get("train_loss"),
                "test_acc": source.final.get("test_acc"),
                "distance": 0.0,
                **start,
            }
        ]
        last = run.epochs if run.status == "done" else run.epochs - 1
        for e in _epochs_to_measure(last, max(1, math.ceil(last / 2))):
            m = lab.point_measures(run, e)
            x = m.pop("x")
            h = run.history[e - 1]
            points.append(
                {
                    "epoch": e,
                    "step": e * steps_per_epoch(n, cfg.batch_size),
                    "train_loss": h["train_loss"],
                    "test_acc": h["test_acc"],
                    "distance": float((x - x0).norm()),
                    **m,
                }
            )
        out.append(
            {
                "label": label,
                "run_id": run.id,
                "source": source.id,
                "status": run.status,
                "batch_size": cfg.batch_size,
                "points": points,
                **_final(run),
            }
        )
    return {"runs": out}


def stability(lab: _Lab, sb: Run, lb: Run, critical: dict[str, Any]) -> dict[str, Any]:
    """Section 5: top eigenvalue along SGD training and Adam's preconditioned sharpness."""
    p = lab.p
    sgd = []
    threshold = stability_threshold("sgd", p.lr, momentum=p.momentum)
    for label, run in (("SB", sb), ("LB", lb)):
        last = run.epochs if run.status == "done" else run.epochs - 1
        points = []
        for e in _epochs_to_measure(
            last, p.measure_every if label == "SB" else max(p.measure_every, last // 5)
        ):
            model = lab.model_at(run, e)
            points.append(
                {
                    "epoch": e,
                    "top_eigenvalue": lab.top_eig(run, f"epoch={e}", model, "batch"),
                    "train_loss": run.history[e - 1]["train_loss"],
                }
            )
        sgd.append(
            {
                "label": label,
                "run_id": run.id,
                "batch_size": run.config.batch_size,
                "lr": p.lr,
                "momentum": p.momentum,
                "threshold": threshold,
                "plain_gd_threshold": 2.0 / p.lr,
                "points": points,
            }
        )
    adam = []
    cb_runs = [r for r in critical["runs"] if r["status"] == "done"]
    sizes = sorted({r["batch_size"] for r in cb_runs})
    for bs in sorted({sizes[0], sizes[-1]}) if sizes else ():
        # the best learning rate of this batch size: fewest steps to the target, else lowest loss
        best = min(
            (r for r in cb_runs if r["batch_size"] == bs),
            key=lambda r: (r["steps"] is None, r["steps"] or 0.0, r["losses"][-1]),
        )
        adam.append(_adam_point(lab, best))
    return {"sgd": sgd, "adam": adam}


def _adam_point(lab: _Lab, row: dict[str, Any]) -> dict[str, Any]:
    """Preconditioned sharpness of a finished Adam run at its end, from its last checkpoint."""
    from sharpminima.store import load_checkpoint, unflatten_state

    p = lab.p
    cfg = lab.configs[row["run_id"]]
    run = lab.train(cfg, "adam run")
    out = {
        "batch_size": row["batch_size"],
        "lr": row["lr"],
        "run_id": run.id,
        "threshold": stability_threshold(p.cb_optimizer, row["lr"], beta1=cfg.betas[0]),
        "top_eigenvalue": lab.top_eig(run, "final", run.model, "batch"),
    }
    path = Path(lab.store.run_dir(run.id)) / f"last_{run.epochs % 2}.safetensors" if lab.store else None
    if path is None or not path.exists():
        out["note"] = "no optimizer checkpoint (train with a store)"
        return out
    state = unflatten_state(*load_checkpoint(path))["optimizer"]["state"]
    params = trainable(run.model)
    keys = sorted(state, key=lambda k: int(k))
    if len(keys) != len(params):
        out["note"] = "optimizer state does not match the parameters"
        return out
    v = torch.cat([state[k]["exp_avg_sq"].reshape(-1) for k in keys]).to(lab.dev)
    step = int(float(state[keys[0]]["step"]))
    precond = adam_preconditioner(v, step, beta2=cfg.betas[1], eps=cfg.adam_eps)
    res = preconditioned_sharpness(
        lab.objective(run.model, "batch"),
        flatten_params(run.model).detach(),
        precond,
        tol=p.hessian_tol,
        max_iters=p.hessian_max_iters,
    )
    lab.tick(f"preconditioned sharpness {run.id}")
    out.update(preconditioned=res["value"], converged=res["converged"], step=step)
    return out


def run_noise_study(
    preset: NoisePreset,
    *,
    store: Any = None,
    dataset: Dataset | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) every run of the noise study, measure them and gather the sections.

    Args:
        preset: What to train and measure.
        store: A :class:`~sharpminima.store.Store`; needed (warm starts and per-epoch
            weights live there). Use a temporary one in tests.
        dataset: The data (loaded from ``preset.dataset`` if None).
        device: Where to train and measure (default: CUDA if available, else CPU).
        progress: Called with units of work done (see :func:`plan_noise` for the total).
        model_factory: Build the network instead of the registry.

    Returns:
        JSON-friendly results: ``preset``, ``warnings`` and one entry per section of
        :data:`SECTIONS`.

    Raises:
        ConfigError: Without a store, or if the LB batch exceeds the training subset.
    """
    if store is None:
        raise ConfigError(
            "the noise study needs a run store (warm starts and per-epoch weights); pass --store"
        )
    t_start = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dataset is None:
        from sharpminima.data import load

        dataset = load(preset.dataset)
    plan = plan_noise(preset, dataset.num_train)
    lab = _Lab(preset, store, dataset, dev, progress, model_factory)
    results: dict[str, Any] = {
        "kind": "noise_study",
        "preset": preset.to_dict(),
        "num_train": lab.num_train,
        "num_test": lab.num_test,
        "measure_samples": lab.samples,
        "device": str(dev),
        "warnings": list(plan["warnings"]),
        "skipped_batch_sizes": plan["skipped"],
    }
    with count_measurements() as tally:
        results["critical"] = critical_batch(lab, plan)
        if results["critical"].get("warning"):
            results["warnings"].append(results["critical"]["warning"])
        results["temperature"] = temperature(lab, plan)
        sb, lb = minima(lab)
        results["structure"] = structure(lab, sb, lb)
        results["escape"] = escape(lab, sb, lb)
        results["stability"] = stability(lab, sb, lb, results["critical"])
    from sharpminima.reproduce.runner import environment

    results["environment"] = environment(dev) | inputs_provenance(store, lab.configs, tally)
    results["seconds"] = time.perf_counter() - t_start
    return results
