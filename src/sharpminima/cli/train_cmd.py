"""``sharpminima train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sharpminima.cli.common import (
    TrainProgress,
    echo,
    echo_json,
    is_root_process,
    open_store,
    parse_options,
    progress_enabled,
)
from sharpminima.errors import ConfigError

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
]


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command("train")(train)


def train(
    net: Annotated[
        str, typer.Option(help="f1, f2, c1, c2, c3, c4 or module:function(input_shape, num_classes).")
    ] = "f1",
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", "--data", help="mnist, cifar10, cifar100, timit, synthetic or module:function."
        ),
    ] = "mnist",
    loss: Annotated[
        str, typer.Option(help="cross_entropy (also per token), mse, or module:function fn(model, batch).")
    ] = "cross_entropy",
    batch_size: Annotated[int | None, typer.Option(help="Samples per step.")] = None,
    regime: Annotated[
        str | None,
        typer.Option(help="sb (batch 256) or lb (10% of the training set); overrides --batch-size."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs, or the cap with --stop plateau.")] = 20,
    stop: Annotated[
        str, typer.Option(help="epochs (fixed) or plateau (until the training loss stops improving).")
    ] = "epochs",
    patience: Annotated[int, typer.Option(help="Plateau: epochs without improvement.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of weights, shuffles and dropout.")] = 0,
    trials: Annotated[int, typer.Option(help="Train seeds seed..seed+trials-1.")] = 1,
    vectorize: Annotated[
        bool, typer.Option(help="Train the trials as one batched computation (same runs; see docs).")
    ] = False,
    optimizer: Annotated[
        str, typer.Option(help="adam, adamw, sgd, nesterov, adagrad, lars, lamb.")
    ] = "adam",
    optimizer_arg: Annotated[
        list[str] | None,
        typer.Option(help="Optimizer option NAME=VALUE (repeat), e.g. trust_coefficient=1e-3."),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="Step method: plain, sam, asam, conservative, adversarial, grad_noise, "
            "iterate_noise, ghost_bn."
        ),
    ] = "plain",
    method_arg: Annotated[
        list[str] | None, typer.Option(help="Method option NAME=VALUE (repeat), e.g. rho=0.05.")
    ] = None,
    batch_schedule: Annotated[
        str, typer.Option(help="constant, step, linear, exponential, increase, adaptive.")
    ] = "constant",
    batch_schedule_arg: Annotated[
        list[str] | None, typer.Option(help="Batch schedule option NAME=VALUE (repeat), e.g. factor=2.")
    ] = None,
    lr_schedule: Annotated[str, typer.Option(help="constant, linear, sqrt, step.")] = "constant",
    lr_schedule_arg: Annotated[
        list[str] | None, typer.Option(help="LR schedule option NAME=VALUE (repeat), e.g. warmup_steps=100.")
    ] = None,
    augment: Annotated[str, typer.Option(help="none or paper (flips, rotations, shifts).")] = "none",
    augment_arg: Annotated[
        list[str] | None, typer.Option(help="Augmentation option NAME=VALUE (repeat), e.g. strength=0.5.")
    ] = None,
    init: Annotated[str, typer.Option(help="default, kaiming, xavier, orthogonal.")] = "default",
    init_scale: Annotated[float, typer.Option(help="Factor on the initial weights.")] = 1.0,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="L2 penalty.")] = 0.0,
    train_limit: Annotated[int | None, typer.Option(help="Use the first N training samples.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Use the first N test samples.")] = None,
    source: Annotated[
        str | None, typer.Option("--from", help="User data: CIFAR .tar.gz, TIMIT .npz or MNIST IDX folder.")
    ] = None,
    save_every_epoch: Annotated[bool, typer.Option(help="Keep every epoch's weights.")] = False,
    init_from: Annotated[
        str | None, typer.Option(help="Warm start from RUN_ID (final weights) or RUN_ID@EPOCH.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: auto).")] = None,
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    profile: Annotated[
        Path | None,
        typer.Option(help="Profile a few steps instead of training: write PATH.json (trace), PATH.md."),
    ] = None,
    profile_steps: Annotated[int, typer.Option(help="Steps recorded by --profile.")] = 10,
) -> None:
    """Train a network (SB or LB) and record it in the run store."""
    from sharpminima.config import TrainConfig, regime_batch_size
    from sharpminima.data import load
    from sharpminima.train import mean_std
    from sharpminima.train import train as train_run

    if trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials}")
    data = load(dataset, source=source, train_limit=train_limit, test_limit=test_limit)
    if regime is not None:
        batch_size = regime_batch_size(regime, data.num_train)
    config = TrainConfig(
        net=net,
        dataset=dataset,
        batch_size=batch_size if batch_size is not None else 256,
        optimizer=optimizer,
        optimizer_args=parse_options("--optimizer-arg", optimizer_arg),
        method=method,
        method_args=parse_options("--method-arg", method_arg),
        batch_schedule=batch_schedule,
        batch_schedule_args=parse_options("--batch-schedule-arg", batch_schedule_arg),
        lr_schedule=lr_schedule,
        lr_schedule_args=parse_options("--lr-schedule-arg", lr_schedule_arg),
        augment=augment,
        augment_args=parse_options("--augment-arg", augment_arg),
        init=init,
        init_scale=init_scale,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        epochs=epochs,
        stop=stop,  # type: ignore[arg-type]
        patience=patience,
        seed=seed,
        train_limit=train_limit,
        test_limit=test_limit,
        data_source=source,
        save_every_epoch=save_every_epoch,
        init_from=init_from,
        loss=loss,
    )
    if profile is not None:
        from sharpminima.train.profile import profile_training

        result = profile_training(config, profile, dataset=data, steps=profile_steps, device=device)
        if json_output:
            echo_json({"trace": str(result.trace), "table": str(result.table), "steps": result.steps,
                       "seconds": result.seconds, "top_ops": [list(op) for op in result.top_ops[:5]]})
        else:
            echo(f"profiled {result.steps} steps ({result.seconds:.3f} s): {result.trace}, {result.table}")
        return
    run_store = open_store(store) if is_root_process() else None  # torchrun: rank 0 owns the store
    runs = []
    vectorize = vectorize and trials > 1
    if vectorize:
        from sharpminima.train import train_trials

        bar = TrainProgress(f"{net} b={config.batch_size} {trials} trials", progress_enabled())
        try:
            runs = train_trials(config, range(seed, seed + trials), vectorize=True, dataset=data,
                                store=run_store, device=device, progress=bar)
        finally:
            bar.close()
    for i in range(0 if vectorize else trials):
        cfg = config.replace(seed=seed + i)
        bar = TrainProgress(f"{net} b={cfg.batch_size} seed={cfg.seed}", progress_enabled())
        try:
            runs.append(train_run(cfg, dataset=data, store=run_store, device=device, progress=bar))
        finally:
            bar.close()
        if not json_output:
            _echo_run(runs[-1])
    if vectorize and not json_output:
        for run in runs:
            _echo_run(run)
    if json_output:
        if trials == 1:
            echo_json(runs[0].summary())
        else:
            stats = {
                m: dict(zip(("mean", "std", "n"), mean_std(runs, m), strict=True))
                for m in ("train_acc", "test_acc", "train_loss", "test_loss")
            }
            echo_json({"runs": [r.summary() for r in runs], "stats": stats})
    elif trials > 1:
        for m in ("train_acc", "test_acc"):
            mean, std, n = mean_std(runs, m)
            echo(f"{m}: {mean:.2f} +- {std:.2f} over {n} finished trials")


def _echo_run(run: Any) -> None:
    s = run.summary()
    echo(
        f"run {s['run_id']} {s['status']}: {s['epochs']} epochs, train acc "
        f"{_pct(s['train_acc'])}, test acc {_pct(s['test_acc'])}, train loss "
        f"{_num(s['train_loss'])}" + (f" ({s['message']})" if s["message"] else "")
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"
