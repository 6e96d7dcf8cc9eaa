"""``sharpminima measure RUN`` and ``sharpminima interpolate RUN_A RUN_B``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from sharpminima.cli.common import echo, echo_json, open_store, table
from sharpminima.errors import ConfigError

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
]

MEASURES = (
    "sharpness",
    "sharpness-multistart",
    "hessian",
    "ggn",
    "trace",
    "density",
    "ritz",
    "layer-hessian",
    "layer-trace",
    "noise-scale",
    "average-sharpness",
    "adaptive-sharpness",
    "weight-norm",
    "distance",
    "surface",
    "epsilon-study",
)


def register(app: typer.Typer) -> None:
    """Add ``measure`` and ``interpolate`` to ``app``."""
    app.command("measure")(measure)
    app.command("interpolate")(interpolate)


def measure(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    what: Annotated[str, typer.Option(help="Comma-separated: " + ", ".join(MEASURES) + ".")] = "sharpness",
    eps: Annotated[list[float] | None, typer.Option(help="Box size(s) of Metric 2.1 (repeatable).")] = None,
    subspace: Annotated[str, typer.Option(help="full, random or both.")] = "full",
    p: Annotated[int, typer.Option(help="Random subspace dimension.")] = 100,
    distribution: Annotated[
        str, typer.Option(help="Random subspace: uniform, gaussian or uniform-raw.")
    ] = "uniform",
    maxiter: Annotated[int, typer.Option(help="L-BFGS-B iterations.")] = 10,
    bn: Annotated[str, typer.Option(help="BatchNorm mode: batch, eval or both.")] = "batch",
    samples: Annotated[
        int | None, typer.Option(help="Training samples the loss averages over (default: all).")
    ] = None,
    chunk_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 1000,
    k: Annotated[int, typer.Option(help="Number of top eigenvalues.")] = 1,
    trace_samples: Annotated[int, typer.Option(help="Hutchinson probes.")] = 100,
    sigma: Annotated[float, typer.Option(help="Average sharpness: perturbation scale.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of random subspaces and probes.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cpu).")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="epsilon-study: save its figure here (.png/.pdf/.svg).")
    ] = None,
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per measure.")] = False,
) -> None:
    """Measure the landscape at a trained run's final weights; results go to the store."""
    from sharpminima.landscape.facade import Landscape
    from sharpminima.train.checkpointing import load_run

    kinds = [w.strip() for w in what.split(",") if w.strip()]
    bad = [w for w in kinds if w not in MEASURES]
    if bad:
        raise ConfigError(f"unknown measure(s) {bad}; choose from {', '.join(MEASURES)}")
    bn_modes = _choices("bn", bn, ("batch", "eval"))
    subspaces = _choices("subspace", subspace, ("full", "random"))
    st = open_store(store)
    run, data = load_run(st, run_id, device=device)
    x_in, y_in = data.x_train, data.y_train
    if samples is not None:
        x_in, y_in = x_in[:samples], y_in[:samples]
    rows: list[dict[str, Any]] = []
    for bn_mode in bn_modes:
        land = Landscape(run.model, x_in, y_in, bn_mode=bn_mode, chunk_size=chunk_size)  # type: ignore[arg-type]
        base = {"bn_mode": bn_mode, "samples": len(y_in), "chunk_size": chunk_size}
        jobs: list[tuple[str, dict[str, Any], Callable[[], Any]]] = []
        for kind in kinds:
            jobs += _jobs(
                kind,
                land,
                run,
                base,
                eps or [1e-3],
                subspaces,
                p,
                distribution,
                maxiter,
                k,
                trace_samples,
                sigma,
                seed,
            )
        for kind, params, fn in jobs:
            found = st.get_measurement(run.id, kind, params)
            if found is None:
                result = fn()
                d = result.to_record() if hasattr(result, "to_record") else dict(result)
                st.add_measurement(
                    run.id, kind, params, float(d.get("value", float("nan"))), d.get("cost", {}), d
                )
                found = st.get_measurement(run.id, kind, params)
            row = {
                "run_id": run.id,
                "kind": kind,
                "value": found["value"],
                "settings": params,
                "cost": found["cost"],
            }
            for extra in ("stderr", "values", "f0", "fmax"):
                if extra in found["result"]:
                    row[extra] = found["result"][extra]
            rows.append(row)
            if kind == "epsilon_study" and plot is not None:
                _plot_epsilon(found["result"], plot)
            if json_output:
                echo_json(row)
    if not json_output:
        echo(
            table(
                [
                    {
                        "kind": r["kind"],
                        "value": r["value"],
                        "stderr": r.get("stderr"),
                        "bn": r["settings"]["bn_mode"],
                        "settings": ", ".join(
                            f"{a}={b}" for a, b in r["settings"].items() if a not in ("bn_mode", "chunk_size")
                        ),
                        "seconds": (r["cost"] or {}).get("seconds"),
                    }
                    for r in rows
                ],
                ["kind", "value", "stderr", "bn", "settings", "seconds"],
            )
        )


def _choices(name: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    if value == "both":
        return list(allowed)
    if value not in allowed:
        raise ConfigError(f"--{name} must be one of {', '.join(allowed)} or both, got {value!r}")
    return [value]


def _jobs(
    kind: str,
    land: Any,
    run: Any,
    base: dict[str, Any],
    eps_list: list[float],
    subspaces: list[str],
    p: int,
    distribution: str,
    maxiter: int,
    k: int,
    trace_samples: int,
    sigma: float,
    seed: int,
) -> list[tuple[str, dict[str, Any], Callable[[], Any]]]:
    jobs: list[tuple[str, dict[str, Any], Callable[[], Any]]] = []
    if kind in ("sharpness", "sharpness-multistart"):
        for sub in subspaces:
            for e in eps_list:
                params = base | {"eps": e, "subspace": sub, "maxiter": maxiter}
                if sub == "random":
                    params |= {"p": p, "distribution": distribution, "seed": seed}
                extra = {"p": p, "seed": seed, "distribution": distribution} if sub == "random" else {}
                if kind == "sharpness":
                    jobs.append(
                        (
                            "keskar_sharpness",
                            params,
                            lambda e=e, sub=sub: land.keskar_sharpness(
                                e, subspace=sub, p=p, seed=seed, distribution=distribution, maxiter=maxiter
                            ),
                        )
                    )
                else:
                    jobs.append(
                        (
                            "keskar_sharpness_multistart",
                            params,
                            lambda e=e, extra=extra: land.keskar_sharpness_multistart(
                                e, maxiter=maxiter, **extra
                            ),
                        )
                    )
    elif kind in ("hessian", "ggn"):
        curvature = "hessian" if kind == "hessian" else "ggn"
        jobs.append(
            (
                f"{curvature}_eigenvalues",
                base | {"k": k, "seed": seed},
                lambda: land.top_eigenvalues(k, curvature=curvature, seed=seed),
            )
        )
    elif kind == "trace":
        jobs.append(
            (
                "hessian_trace",
                base | {"probes": trace_samples, "seed": seed},
                lambda: land.trace(trace_samples, seed=seed),
            )
        )
    elif kind == "density":
        jobs.append(("spectral_density", base | {"seed": seed}, lambda: land.density(seed=seed)))
    elif kind == "ritz":
        from sharpminima.landscape.sharpness import random_subspace

        def ritz() -> Any:
            x = land.point()
            a = random_subspace(x.numel(), p, seed=seed, distribution=distribution).to(x)  # type: ignore[arg-type]
            return land.ritz_values(a)

        jobs.append(
            ("subspace_ritz_values", base | {"p": p, "distribution": distribution, "seed": seed}, ritz)
        )
    elif kind in ("layer-hessian", "layer-trace"):

        def per_layer(kind: str = kind) -> dict[str, Any]:
            res = (
                land.layer_eigenvalues(k, seed=seed)
                if kind == "layer-hessian"
                else land.layer_traces(samples=trace_samples, seed=seed)
            )
            layers = {name: r.to_record() for name, r in res.items()}
            return {"value": max(r["value"] for r in layers.values()), "layers": layers, "cost": {}}

        jobs.append(
            (kind.replace("-", "_"), base | {"k": k, "seed": seed, "probes": trace_samples}, per_layer)
        )
    elif kind == "noise-scale":
        jobs.append(("gradient_noise_scale", base | {"seed": seed}, lambda: land.noise_scale(seed=seed)))
    elif kind == "average-sharpness":
        jobs.append(
            (
                "average_sharpness",
                base | {"sigma": sigma, "seed": seed},
                lambda: land.average_sharpness(sigma, seed=seed),
            )
        )
    elif kind == "adaptive-sharpness":
        for e in eps_list:
            jobs.append(
                (
                    "adaptive_sharpness",
                    base | {"eps": e, "maxiter": maxiter},
                    lambda e=e: land.adaptive_sharpness(e, maxiter=maxiter),
                )
            )
    elif kind == "weight-norm":
        jobs.append(("weight_norm", {}, lambda: land.weight_norms()))
    elif kind == "distance":

        def dist() -> Any:
            return land.distance(run.initial_vector())

        jobs.append(("distance_from_init", {}, dist))
    elif kind == "epsilon-study":
        from sharpminima.landscape.epsilon import epsilon_study

        grid = sorted(set(eps_list)) if len(eps_list) > 1 else [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
        jobs.append(
            (
                "epsilon_study",
                base | {"eps": grid, "maxiter": maxiter},
                lambda: epsilon_study(land.objective, land.point(), grid, maxiter=maxiter),
            )
        )
    elif kind == "surface":
        jobs.append(("loss_surface_1d", base | {"seed": seed}, lambda: land.surface(dims=1, seed=seed)))
    return jobs


def interpolate(
    run_a: Annotated[str, typer.Argument(help="Run at alpha = 0 (e.g. the SB run).")],
    run_b: Annotated[str, typer.Argument(help="Run at alpha = 1 (e.g. the LB run).")],
    path: Annotated[str, typer.Option(help="linear or curvilinear.")] = "linear",
    points: Annotated[int, typer.Option(help="Points on [alpha-min, alpha-max].")] = 25,
    alpha_min: Annotated[float, typer.Option(help="Start of the alpha range.")] = -1.0,
    alpha_max: Annotated[float, typer.Option(help="End of the alpha range.")] = 2.0,
    bn: Annotated[str, typer.Option(help="batch, interpolate (running statistics) or recompute.")] = "batch",
    samples: Annotated[int | None, typer.Option(help="Training samples (default: all).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 1000,
    out: Annotated[
        Path, typer.Option(help="Figure file (.png, .pdf or .svg); numbers go beside it as .json.")
    ] = Path("interpolation.png"),
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Loss and accuracy along the path between two runs' weights (Figure 3 / 7)."""
    import json

    import torch

    from sharpminima.landscape.interpolate import interpolate as interp
    from sharpminima.landscape.objective import ModelObjective, flatten_params
    from sharpminima.report.figures import parametric
    from sharpminima.store.checkpoints import atomic_write_text
    from sharpminima.train.checkpointing import load_run

    if path not in ("linear", "curvilinear"):
        raise ConfigError(f"--path must be linear or curvilinear, got {path!r}")
    st = open_store(store)
    a, data = load_run(st, run_a)
    b, _ = load_run(st, run_b, dataset=None)
    if flatten_params(a.model).numel() != flatten_params(b.model).numel():
        raise ConfigError(f"runs {a.id} and {b.id} have different networks; interpolate runs of one network")
    xt, yt = data.x_train, data.y_train
    if samples is not None:
        xt, yt = xt[:samples], yt[:samples]
    mode = "batch" if bn == "batch" else "eval"
    train_obj = ModelObjective(a.model, xt, yt, bn_mode=mode, chunk_size=chunk_size)
    test_obj = ModelObjective(a.model, data.x_test, data.y_test, bn_mode=mode, chunk_size=chunk_size)
    result = interp(
        train_obj,
        flatten_params(a.model),
        flatten_params(b.model),
        path=path,  # type: ignore[arg-type]
        alphas=torch.linspace(alpha_min, alpha_max, points),
        objective_test=test_obj,
        bn=bn,
        models=(a.model, b.model) if bn != "batch" else None,
    )  # type: ignore[arg-type]
    numbers = result.to_dict()
    numbers.update(run_a=a.id, run_b=b.id)
    fig = parametric(f"{a.config.net}: {a.id} -> {b.id}", numbers, path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    atomic_write_text(out.with_suffix(".json"), json.dumps(numbers, indent=1))
    if json_output:
        echo_json(numbers)
    else:
        echo(f"figure: {out}, numbers: {out.with_suffix('.json')}")


def _plot_epsilon(record: dict[str, Any], path: Path) -> None:
    """Redraw a stored epsilon study (its record holds every number the plot needs)."""
    import dataclasses

    from sharpminima.landscape.epsilon import EpsilonStudyResult, plot_epsilon_study

    names = {f.name for f in dataclasses.fields(EpsilonStudyResult)}
    fields = {k: v for k, v in record.items() if k in names and k not in ("cost", "results")}
    fig = plot_epsilon_study(EpsilonStudyResult(**fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
