"""What every experiment of a reproduction shares: store, data, cached training and measuring."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sharpminima.config import TrainConfig, regime_batch_size
from sharpminima.data.base import Dataset
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.objective import flatten_params
from sharpminima.landscape.registry import DataSpec, Inputs, Record, Request, cached_measure
from sharpminima.reproduce.presets import Preset
from sharpminima.train import Run, train
from sharpminima.train.checkpointing import RunFiles

log = logging.getLogger(__name__)

#: ``progress(units_done_delta, label)``: advances the whole reproduction's bar.
Progress = Callable[[float, str], None]

#: Which dataset each network is trained on in the paper.
PAPER_DATASET = {
    "f1": "mnist",
    "f2": "timit",
    "c1": "cifar10",
    "c2": "cifar10",
    "c3": "cifar100",
    "c4": "cifar100",
}


@dataclass
class Context:
    """Shared state of one reproduction.

    Attributes:
        store: The run store (training runs and measurements are cached there).
        preset: The setup.
        device: Where to train and measure.
        sources: User data per dataset name (``{"cifar10": "path.tar.gz"}``).
        progress: Overall progress callback.
        vectorize: Train the trials of each regime as one batched computation
            (:func:`~sharpminima.train.vectorized.train_vectorized`; the same store runs
            and hashes as one-at-a-time training). Default: on CUDA only, where it pays off.
        run_seconds: Training seconds of every run this reproduction used, by run id.
        backend: Where runs train (:mod:`sharpminima.backends`); None or ``local``: here,
            one after another. On Ray or SLURM each group of runs an experiment needs
            (trials, batch sizes, warm starts) trains in parallel before it is used.
    """

    store: Any
    preset: Preset
    device: torch.device
    sources: dict[str, str] = field(default_factory=dict)
    progress: Progress | None = None
    vectorize: bool = False
    run_seconds: dict[str, float] = field(default_factory=dict)
    backend: Any = None
    _data: dict[str, Dataset] = field(default_factory=dict)

    # -- data ---------------------------------------------------------------------------
    def dataset_name(self, net: str) -> str:
        """The dataset a net runs on here: the paper's, or MNIST as an offline stand-in."""
        if self.preset.dataset:
            return self.preset.dataset
        name = PAPER_DATASET.get(net, "mnist")
        if name == "mnist" or name in self.sources:
            return name
        return "mnist"

    def stand_in(self, net: str) -> bool:
        """Whether ``net`` runs on MNIST instead of its paper dataset."""
        return self.dataset_name(net) == "mnist" and PAPER_DATASET.get(net, "mnist") != "mnist"

    def data(self, net: str) -> Dataset:
        """Return the (limited) dataset of ``net``, loaded once."""
        from sharpminima.data import load

        name = self.dataset_name(net)
        if name not in self._data:
            ds = load(name, source=self.sources.get(name))
            self._data[name] = ds.subset(self.preset.train_limit)
        return self._data[name]

    # -- training -----------------------------------------------------------------------
    def config(self, net: str, regime: str, seed: int, **changes: Any) -> TrainConfig:
        """The config of one SB or LB run of this preset."""
        p = self.preset
        data = self.data(net)
        cfg = TrainConfig(
            net=net,
            dataset=self.dataset_name(net),
            batch_size=regime_batch_size(regime, data.num_train),
            epochs=p.sb_epochs if regime == "sb" else p.lb_epochs,
            stop=p.stop,  # type: ignore[arg-type]
            patience=p.patience,
            min_improvement=p.min_improvement,
            seed=seed,
            train_limit=p.train_limit,
            data_source=self.sources.get(self.dataset_name(net)),
        )
        return cfg.replace(**changes)

    def prefetch(self, configs: list[TrainConfig]) -> None:
        """Train ``configs`` together on the cluster backend (a no-op with the local one).

        Experiments call it with every run they are about to use, so those runs train in
        parallel; :meth:`train` then finds them finished in the store.
        """
        if self.backend is None or self.backend.name == "local" or not configs:
            return
        if self.progress is not None:
            self.progress(0.0, f"{len(configs)} run(s) on {self.backend.name}")
        self.backend.train_many(self.store, configs)

    def train(self, config: TrainConfig, label: str) -> Run:
        """Train (or fetch from the store) one run, advancing the progress bar."""
        return self.train_group(config, [config.seed], label)[0]

    def train_group(self, config: TrainConfig, seeds: list[int], label: str) -> list[Run]:
        """Train (or fetch) one run of ``config`` per seed, advancing the progress bar.

        With :attr:`vectorize` and more than one seed the trials train as one batched
        computation; otherwise one after another. ``label`` names the group in the bar
        (``"trial N"`` is appended per seed when they train one at a time).
        """
        n = self.data(config.net).num_train
        steps = math.ceil(n / config.batch_size)
        total_units = train_units(config, n) * len(seeds)
        consumed = 0.0

        def advance(units: float, text: str) -> None:
            nonlocal consumed
            consumed += units
            if self.progress is not None:
                self.progress(units, text)

        def progress_for(share: float, text: str) -> Callable[[str, dict[str, Any]], None]:
            def on_event(event: str, info: dict[str, Any]) -> None:
                if event == "start":
                    advance(share * info["done_steps"] / max(1, info["total_steps"]), text)
                elif event == "step":
                    advance(share / (steps * config.epochs), text)

            return on_event

        self.prefetch([config.replace(seed=seed) for seed in seeds])
        t0 = time.perf_counter()
        if self.vectorize and len(seeds) > 1:
            from sharpminima.train.vectorized import train_vectorized

            text = f"{label} ({len(seeds)} trials vectorised)"
            runs = train_vectorized(
                config, seeds, dataset=self.data(config.net), store=self.store, device=self.device,
                progress=progress_for(total_units, text),
            )
        else:
            runs = []
            for seed in seeds:
                text = label if len(seeds) == 1 else f"{label} trial {seed + 1}"
                runs.append(
                    train(
                        config.replace(seed=seed), dataset=self.data(config.net), store=self.store,
                        device=self.device, progress=progress_for(total_units / len(seeds), text),
                    )
                )
        advance(max(0.0, total_units - consumed), label)  # reused or early-stopped runs: skip the rest
        for run in runs:
            self.run_seconds[run.id] = float(run.seconds or 0.0)
            log.info("%s: run %s %s", label, run.id, run.status)
        log.info("%s: %d run(s) in %.1fs", label, len(runs), time.perf_counter() - t0)
        return runs

    def weights(self, run: Run, epoch: int | None = None) -> Tensor:
        """Flat trainable parameters of a run's final model or of a saved epoch."""
        if epoch is None:
            return flatten_params(run.model)
        files = RunFiles(self.store, run.config, run.id)
        model = run.model
        state = files.weights_of(f"{run.id}@{epoch}")
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        return torch.cat([state[n].reshape(-1).to(self.device) for n in names])

    def model_at(self, run: Run, epoch: int | None = None) -> torch.nn.Module:
        """A copy of the run's network holding final or epoch weights (buffers included)."""
        import copy

        model = copy.deepcopy(run.model)
        if epoch is not None:
            files = RunFiles(self.store, run.config, run.id)
            model.load_state_dict(files.weights_of(f"{run.id}@{epoch}"))
        return model

    # -- measuring ----------------------------------------------------------------------
    def objective(
        self, model: torch.nn.Module, net: str, samples: int | None, bn: str, split: str = "train",
        chunk_size: int | None = None,
    ) -> ModelObjective:
        """Mean loss over the first ``samples`` training (or test) samples."""
        data = self.data(net)
        x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        if samples is not None:
            x, y = x[:samples], y[:samples]
        return ModelObjective(
            model, x, y, bn_mode=bn,  # type: ignore[arg-type]
            chunk_size=chunk_size or self.preset.chunk_size,
        )

    def data_spec(self, net: str, samples: int | None, bn: str, split: str = "train",
                  chunk_size: int | None = None) -> DataSpec:
        """The data part of a measurement's key: split, actual samples, chunk, BN, loss."""
        data = self.data(net)
        available = data.num_train if split == "train" else data.num_test
        n = available if samples is None else min(samples, available)
        return DataSpec(split=split, num_samples=n, chunk_size=chunk_size or self.preset.chunk_size,
                        bn_mode=bn, loss="cross_entropy")

    def measure(
        self,
        run: Run,
        name: str,
        *,
        bn: str,
        samples: int | None = None,
        split: str = "train",
        point: str = "final",
        model: torch.nn.Module | None = None,
        x: Tensor | None = None,
        chunk_size: int | None = None,
        units: float = 0.0,
        inputs: dict[str, Any] | None = None,
        **params: Any,
    ) -> Record:
        """A registered measure of ``run`` at ``point``: from the store, or computed and stored.

        Args:
            run: The run the measurement belongs to.
            name: A measure of :mod:`sharpminima.landscape.registry`.
            bn: BatchNorm mode of the objective (a measure may fix its own).
            samples: The first samples of the split (None: all).
            split: ``"train"`` or ``"test"``.
            point: Which weights (``"final"``, ``"epoch=5"``).
            model: The network holding the point's buffers (default: the run's model).
            x: The point (default: the run's final weights).
            chunk_size: Samples per batch (default: the preset's).
            units: Progress units to advance.
            inputs: More inputs (``x0``, ``other``, ``test``, ``models``).
            **params: The measure's parameters.
        """
        net = run.config.net
        request = Request.of(name, self.data_spec(net, samples, bn, split, chunk_size), point, **params)

        def build() -> Inputs:
            mdl = model if model is not None else run.model
            spec = request.data
            obj = None if spec is None else self.objective(mdl, net, samples, spec.bn_mode, split, chunk_size)
            return Inputs(obj, self.weights(run) if x is None else x, model=mdl, **(inputs or {}))

        record = cached_measure(self.store, run.id, request, build)
        if self.progress is not None and units:
            self.progress(units, name)
        return record


def train_units(config: TrainConfig, num_train: int) -> float:
    """Work of a training run in units of one full pass over 10,000 samples."""
    return config.epochs * num_train * 1.2 / 10_000  # + evaluation passes
