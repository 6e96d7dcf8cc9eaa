"""``sharpminima measure`` and ``sharpminima interpolate``.

``measure`` reaches every measure through the registry (:mod:`sharpminima.landscape.registry`):
``--what`` takes registered names (or their aliases), the common options (``--eps``,
``--max-iters``, ``--num-probes``...) go to every chosen measure that has a parameter of
that name, and ``--param NAME=VALUE`` sets any other. Results are cached in the store
under the same keys as ``reproduce`` and the studies use.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm
from typer.core import TyperCommand

from sharpminima.cli.common import WorkProgress, check_named, echo, echo_json, open_store, parse_options
from sharpminima.errors import ConfigError

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
]


class _MeasureCommand(TyperCommand):
    """``measure --help`` lists the registered measures and their parameters (read lazily)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Add the registry's measures as the epilog, then format as usual."""
        from sharpminima.landscape.registry import all_measures

        lines = ["Measures (--what NAME; parameters with their defaults, set with --param NAME=VALUE):", ""]
        for m in all_measures():
            aliases = f" (also: {', '.join(m.aliases)})" if m.aliases else ""
            lines.append(f"{m.name}{aliases}: {m.summary}. Parameters: {m.parameter_help() or 'none'}.")
            lines.append("")
        self.epilog = "\n\n".join(line for line in lines if line)
        super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    """Add ``measure`` and ``interpolate`` to ``app``."""
    app.command("measure", cls=_MeasureCommand)(measure)
    app.command("interpolate")(interpolate)


def _deprecated(flag: str, new: str, value: Any, current: Any) -> Any:
    if value is None:
        return current
    if current is not None:
        raise ConfigError(f"give {new} only ({flag} is its old name)")
    print(f"warning: {flag} is deprecated, use {new}", file=sys.stderr)
    return value


def measure(
    run_id: Annotated[str | None, typer.Argument(help="Run id or unique prefix (or use --model).")] = None,
    what: Annotated[
        str, typer.Option(help="Comma-separated measure names (listed below).")
    ] = "keskar_sharpness",
    eps: Annotated[list[float] | None, typer.Option(help="Box size(s) eps (repeatable).")] = None,
    subspace: Annotated[str | None, typer.Option(help="Keskar sharpness: full, random or both.")] = None,
    p: Annotated[int | None, typer.Option(help="Random subspace dimension.")] = None,
    distribution: Annotated[
        str | None, typer.Option(help="Random subspace: uniform, gaussian or uniform-raw.")
    ] = None,
    max_iters: Annotated[int | None, typer.Option(help="Iterations (L-BFGS-B, Lanczos...).")] = None,
    bn: Annotated[str, typer.Option(help="BatchNorm mode: batch, eval or both.")] = "batch",
    num_samples: Annotated[
        int | None, typer.Option(help="Training samples the loss averages over (default: all).")
    ] = None,
    chunk_size: Annotated[int, typer.Option(help="Samples per forward pass (tensor data).")] = 1000,
    k: Annotated[int | None, typer.Option(help="Number of top eigenvalues.")] = None,
    num_probes: Annotated[
        int | None, typer.Option(help="Random probes (trace, density, layer traces).")
    ] = None,
    lanczos_steps: Annotated[
        int | None, typer.Option(help="Spectral density: Lanczos steps per probe.")
    ] = None,
    sigma: Annotated[float | None, typer.Option(help="Average sharpness: perturbation scale.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of random subspaces, probes and draws.")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="Any measure parameter NAME=VALUE (repeatable).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="External model: module:function returning the nn.Module.")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="External model's weights: .safetensors or a state dict.")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="External data: module:function returning a DataLoader or tensors.")
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="External data's loss: cross_entropy, mse, output or module:function.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: auto).")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="epsilon_study: save its figure here (.png/.pdf/.svg).")
    ] = None,
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    maxiter: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --max-iters.")] = None,
    samples: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --num-samples.")] = None,
    trace_samples: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --num-probes.")] = None,
) -> None:
    """Measure the landscape at a run's final weights (or an external checkpoint); results go to the store."""
    import torch

    from sharpminima.landscape.model_objective import ModelObjective
    from sharpminima.landscape.objective import flatten_params
    from sharpminima.landscape.registry import DataSpec, Inputs, Request, cached_measure, get_measure

    max_iters = _deprecated("--maxiter", "--max-iters", maxiter, max_iters)
    num_samples = _deprecated("--samples", "--num-samples", samples, num_samples)
    num_probes = _deprecated("--trace-samples", "--num-probes", trace_samples, num_probes)
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"--num-samples must be a positive integer, got {num_samples}")
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be a positive integer, got {chunk_size}")
    external = model is not None or weights is not None or data is not None
    if external and run_id is not None:
        raise ConfigError("give either a RUN id or --model/--weights/--data, not both")
    if external and (model is None or weights is None or data is None):
        raise ConfigError("an external checkpoint needs all of --model, --weights and --data")
    if not external and run_id is None:
        raise ConfigError("give a RUN id (see `sharpminima runs list`) or --model/--weights/--data")
    if loss is not None and not external:
        raise ConfigError("--loss applies to external data (--data); a trained run keeps its own loss")
    bn_modes = _choices("bn", bn, ("batch", "eval"))
    if plot is not None:
        from sharpminima.figstyle import figure_format

        figure_format(plot, "--plot")
    options = {
        "eps": eps,
        "p": p,
        "distribution": distribution,
        "max_iters": max_iters,
        "k": k,
        "num_probes": num_probes,
        "lanczos_steps": lanczos_steps,
        "sigma": sigma,
        "seed": seed,
    }
    extra = check_named("--param", dict(parse_options("--param", param)))
    plan = _plan([w.strip() for w in what.split(",") if w.strip()], options, extra, subspace)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # Everything is validated above; now the expensive part: load, then measure each.
    st = open_store(store)
    if external:
        assert model is not None and weights is not None and data is not None
        needs_x0 = [req.measure for req, _ in plan if _needs(req.measure).initial]
        if needs_x0:
            raise ConfigError(
                f"{', '.join(needs_x0)} needs the initial weights, which an external checkpoint lacks"
            )
        owner, net, source, loss_spec = _external(st, model, weights, data, loss, dev)
        x0 = None
        spec_base = DataSpec(
            split="data", num_samples=num_samples, bn_mode="batch", loss=loss_spec, source=data
        )

        def objective(bn_mode: str) -> Any:
            tensors = isinstance(source, tuple)
            return ModelObjective(
                net,
                *(source if tensors else (source,)),
                loss=loss_spec,
                bn_mode=bn_mode,
                chunk_size=chunk_size,
                max_samples=num_samples,
            )
    else:
        from sharpminima.train.checkpointing import load_run

        assert run_id is not None
        run, dataset = load_run(st, run_id, device=dev, require_finite=True)
        owner, net = run.id, run.model
        x_in, y_in = dataset.x_train, dataset.y_train
        if num_samples is not None:
            x_in, y_in = x_in[:num_samples], y_in[:num_samples]
        x0 = run.initial_vector()
        spec_base = DataSpec(
            split="train", num_samples=len(y_in), chunk_size=chunk_size, bn_mode="batch", loss="cross_entropy"
        )

        def objective(bn_mode: str) -> Any:
            return ModelObjective(net, x_in, y_in, bn_mode=bn_mode, chunk_size=chunk_size)

    x = flatten_params(net)
    requests = []
    for bn_mode in bn_modes:
        for request, _ in plan:
            requests.append(
                Request.of(
                    request.measure, dataclasses.replace(spec_base, bn_mode=bn_mode), params=request.params
                )
            )
    unique = list({(r.measure, str(sorted(r.key().items()))): r for r in requests}.values())
    # Everything each measurement needs is checked before the first one starts, so a problem
    # with the last one surfaces now, not after the others have run for minutes.
    _preflight(unique, x0=x0, num_data=len(y_in) if not external else num_samples)
    rows: list[dict[str, Any]] = []
    if not json_output:
        echo(f"measuring {owner}: {len(unique)} measurement(s)")
    costs = [max(get_measure(r.measure).passes(r.params), 1e-3) for r in unique]
    bar = WorkProgress(f"measure {owner}", sum(costs))
    try:
        for i, (request, cost) in enumerate(zip(unique, costs, strict=True), 1):
            label = f"[{i}/{len(unique)}] {request.measure}" + (
                f" (bn {request.data.bn_mode})" if request.data is not None else "")
            bar(0.0, label)

            def build(request: Request = request) -> Inputs:
                bn_mode = request.data.bn_mode if request.data is not None else "eval"
                return Inputs(objective(bn_mode) if request.data is not None else None, x, x0=x0, model=net)

            record = cached_measure(st, owner, request, build)  # stored as soon as it is done
            bar(cost, label)
            row = _row(owner, record)
            rows.append(row)
            if request.measure == "epsilon_study" and plot is not None:
                _plot_epsilon(record.result, plot)
            if not json_output:
                with tqdm.external_write_mode(file=sys.stdout):  # print above the bar
                    echo(_line(row))
    except Exception as exc:
        if json_output:  # the finished measurements still make one document, with the error
            echo_json({"run_id": owner, "measurements": rows, "error": str(exc)})
        raise
    finally:
        bar.close()
    if json_output:
        echo_json({"run_id": owner, "measurements": rows})


def _preflight(requests: list[Any], *, x0: Any, num_data: int | None) -> None:
    """Check that every planned measurement can run, before any does.

    Raises:
        ConfigError: For a measure that needs what this command cannot give it (a second
            point, the initial weights) or asks for more samples than the data holds.
    """
    from sharpminima.landscape.registry import get_measure

    for request in requests:
        needs = get_measure(request.measure).needs
        if needs.other:
            raise ConfigError(f"{request.measure} needs a second point; use `sharpminima interpolate A B`")
        if needs.initial and x0 is None:
            raise ConfigError(f"{request.measure} needs the initial weights, which this run did not keep")
        params = dataclasses.asdict(request.params)
        wanted = params.get("num_examples")
        if num_data is not None and wanted is not None and wanted > num_data:
            raise ConfigError(
                f"{request.measure}: num_examples={wanted} is more than the {num_data} samples measured "
                "over; lower it or raise --num-samples"
            )
        groups = params.get("num_groups")
        if (num_data is not None and groups is not None and params.get("method") == "per_example"
                and groups > (wanted or num_data)):
            raise ConfigError(
                f"{request.measure}: num_groups={groups} is more than the {wanted or num_data} examples drawn"
            )


def _needs(name: str) -> Any:
    from sharpminima.landscape.registry import get_measure

    return get_measure(name).needs


def _plan(
    names: list[str], options: dict[str, Any], extra: dict[str, Any], subspace: str | None
) -> list[tuple[Any, Any]]:
    """One request per measure and per value of the expanded options (eps, subspace).

    Raises:
        ConfigError: For an unknown measure, a ``--param`` no chosen measure takes, or bad values.
    """
    from sharpminima.landscape.registry import Request, get_measure

    if not names:
        raise ConfigError("--what names no measure")
    measures = []
    for name in names:
        measures.append(get_measure(name))
    taken = {f.name for m in measures for f in dataclasses.fields(m.params)}
    unused = sorted(set(extra) - taken)
    if unused:
        raise ConfigError(
            f"--param {', '.join(unused)}: no chosen measure takes it ({', '.join(sorted(taken))})"
        )
    subspaces = _choices("subspace", subspace, ("full", "random")) if subspace is not None else [None]
    plan = []
    for m in measures:
        fields = {f.name for f in dataclasses.fields(m.params)}
        base = {k: v for k, v in options.items() if v is not None and k in fields and k != "eps"}
        base.update({k: v for k, v in extra.items() if k in fields})
        eps_values: list[Any] = [None]
        if "eps" in fields and options.get("eps"):
            eps_list = list(options["eps"])
            if m.name == "epsilon_study":
                eps_values = [tuple(eps_list)] if len(eps_list) > 1 else [None]
            else:
                eps_values = eps_list
        subs = subspaces if "subspace" in fields else [None]
        for sub in subs:
            for e in eps_values:
                values = dict(base)
                if e is not None:
                    values["eps"] = e
                if sub is not None:
                    values["subspace"] = sub
                plan.append((Request.of(m.name, None, params=m.make_params(values)), m))
    return plan


def _external(st: Any, model: str, weights: Path, data: str, loss: str | None, dev: Any) -> tuple:
    """Load an external checkpoint and give it its run in the store (created once)."""
    from sharpminima.external import EXTERNAL_KIND, external_identity, load_data, load_model, load_weights
    from sharpminima.landscape.model_objective import ModelObjective

    net = load_model(model)
    digest = load_weights(net, weights)
    source = load_data(data)
    net = net.to(dev)
    probe = ModelObjective(net, *(source if isinstance(source, tuple) else (source,)), loss=loss)
    probe.check()  # data, model and loss fit together, before anything is stored
    loss_spec = probe.criterion.spec()
    config, digest = external_identity(model, weights, digest, data, loss_spec)
    record, _ = st.get_or_create_run(config, digest, kind=EXTERNAL_KIND)
    if record.status != "done":
        st.set_status(record.id, "done", summary={"external": True})
    return record.id, net, source, loss_spec


def _row(owner: str, record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run_id": owner,
        "kind": record.request.measure,
        "value": record.value,
        "settings": record.request.key(),
        "cost": record.cost,
        "reused": record.reused,
    }
    for name in ("stderr", "values", "f0", "fmax", "search", "num_starts", "start_values",
                 "spread", "disagree", "escalation"):
        if name in record.result:
            out[name] = record.result[name]
    return out


def _line(row: dict[str, Any]) -> str:
    s = row["settings"]
    shown = ", ".join(
        f"{a}={b}"
        for a, b in s.items()
        if a not in ("chunk_size", "point", "split", "loss") and b is not None
    )
    stderr = f" +- {row['stderr']:.3g}" if isinstance(row.get("stderr"), float) else ""
    cached = " (stored)" if row["reused"] else ""
    seconds = (row["cost"] or {}).get("seconds")
    time_text = f", {seconds:.1f} s" if isinstance(seconds, float) and not row["reused"] else ""
    value = row["value"]
    line = (
        f"{row['kind']}: {value:.6g}{stderr}{cached}{time_text}  [{shown}]"
        if isinstance(value, float)
        else (f"{row['kind']}: {value}  [{shown}]")
    )
    from sharpminima.landscape.sharpness import search_note

    note = search_note(row)
    return f"{line}\n  search: {note}" if note else line


def _choices(name: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    if value == "both":
        return list(allowed)
    if value not in allowed:
        raise ConfigError(f"--{name} must be one of {', '.join(allowed)} or both, got {value!r}")
    return [value]


def interpolate(
    run_a: Annotated[str, typer.Argument(help="Run at alpha = 0 (e.g. the SB run).")],
    run_b: Annotated[str, typer.Argument(help="Run at alpha = 1 (e.g. the LB run).")],
    path: Annotated[str, typer.Option(help="linear or curvilinear.")] = "linear",
    points: Annotated[
        int, typer.Option(help="Points from --alpha-min to --alpha-max, exactly this many, 0 and 1 included.")
    ] = 25,
    alpha_min: Annotated[float, typer.Option(help="Start of the alpha range.")] = -1.0,
    alpha_max: Annotated[float, typer.Option(help="End of the alpha range.")] = 2.0,
    bn: Annotated[str, typer.Option(help="batch, interpolate (running statistics) or recompute.")] = "batch",
    num_samples: Annotated[int | None, typer.Option(help="Training samples (default: all).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 1000,
    out: Annotated[
        Path, typer.Option(help="Figure file (.png, .pdf or .svg); numbers go beside it as .json.")
    ] = Path("interpolation.png"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: auto).")] = None,
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
    samples: Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --num-samples.")] = None,
) -> None:
    """Loss and accuracy along the path between two runs' weights (Figure 3 / 7)."""
    import json

    import torch

    from sharpminima.figstyle import figure_format, net_name, save_figure_as
    from sharpminima.landscape.interpolate import alpha_grid
    from sharpminima.landscape.interpolate import interpolate as interp
    from sharpminima.landscape.model_objective import ModelObjective
    from sharpminima.landscape.objective import flatten_params
    from sharpminima.report.figures import parametric
    from sharpminima.store.checkpoints import atomic_write_text
    from sharpminima.train.checkpointing import load_run

    num_samples = _deprecated("--samples", "--num-samples", samples, num_samples)
    if path not in ("linear", "curvilinear"):
        raise ConfigError(f"--path must be linear or curvilinear, got {path!r}")
    if bn not in ("batch", "interpolate", "recompute"):
        raise ConfigError(f"--bn must be batch, interpolate or recompute, got {bn!r}")
    try:
        alphas = alpha_grid(alpha_min, alpha_max, points)
    except ConfigError as exc:
        raise ConfigError(f"--points/--alpha-min/--alpha-max: {exc}") from None
    figure_format(out, "--out")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    st = open_store(store)
    a, data = load_run(st, run_a, device=dev, require_finite=True)
    b, _ = load_run(st, run_b, dataset=None, device=dev, require_finite=True)
    if flatten_params(a.model).numel() != flatten_params(b.model).numel():
        raise ConfigError(f"runs {a.id} and {b.id} have different networks; interpolate runs of one network")
    xt, yt = data.x_train, data.y_train
    if num_samples is not None:
        xt, yt = xt[:num_samples], yt[:num_samples]
    mode = "batch" if bn == "batch" else "eval"
    train_obj = ModelObjective(a.model, xt, yt, bn_mode=mode, chunk_size=chunk_size)
    test_obj = ModelObjective(a.model, data.x_test, data.y_test, bn_mode=mode, chunk_size=chunk_size)
    result = interp(
        train_obj,
        flatten_params(a.model),
        flatten_params(b.model),
        path=path,  # type: ignore[arg-type]
        alphas=torch.tensor(alphas, dtype=torch.float64),
        objective_test=test_obj,
        bn=bn,  # type: ignore[arg-type]
        models=(a.model, b.model) if bn != "batch" else None,
    )
    numbers = result.to_dict()
    ends = end_labels(a.config, b.config, a.id, b.id)
    numbers.update(run_a=a.id, run_b=b.id, label_a=ends[0], label_b=ends[1])
    fig = parametric(f"{net_name(a.config.net)}, {ends[0]} to {ends[1]}", numbers, path, ends=ends)
    save_figure_as(fig, out, "--out")
    atomic_write_text(out.with_suffix(".json"), json.dumps(numbers, indent=1))
    if json_output:
        echo_json(numbers)
    else:
        echo(f"figure: {out}, numbers: {out.with_suffix('.json')}")


#: Settings that tell two runs apart, in the order an end of a path is named by (with
#: their short names): the batch size first, the seed last.
_END_KEYS = (("batch_size", "B"), ("optimizer", ""), ("lr", "lr"), ("method", ""), ("batch_schedule", ""),
             ("init", "init"), ("init_scale", "init scale"), ("weight_decay", "wd"), ("epochs", "epochs"),
             ("augment", "augment"), ("seed", "seed"))


def end_labels(config_a: Any, config_b: Any, id_a: str, id_b: str) -> tuple[str, str]:
    """Names for the two ends of a path, from the setting that tells the runs apart.

    ``("B=256", "B=5000")`` for runs that differ in batch size, ``("sgd", "adam")`` for
    optimizers...; the run ids as they are written (never upper-cased) when no listed
    setting differs.
    """
    def get(config: Any, key: str) -> Any:
        return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

    for key, short in _END_KEYS:
        va, vb = get(config_a, key), get(config_b, key)
        if va != vb and va is not None and vb is not None:
            text = [f"{v:g}" if isinstance(v, float) else str(v) for v in (va, vb)]
            text = [t.replace("_", "-").replace("$", "") for t in text]  # safe in a figure's mathtext
            return (f"{short}={text[0]}", f"{short}={text[1]}") if short else (text[0], text[1])
    return id_a, id_b


def _plot_epsilon(record: dict[str, Any], path: Path) -> None:
    """Redraw a stored epsilon study (its record holds every number the plot needs)."""
    from sharpminima.figstyle import save_figure_as
    from sharpminima.landscape.epsilon import EpsilonStudyResult, plot_epsilon_study

    names = {f.name for f in dataclasses.fields(EpsilonStudyResult)}
    fields = {k: v for k, v in record.items() if k in names and k not in ("cost", "results")}
    save_figure_as(plot_epsilon_study(EpsilonStudyResult(**fields)), path, "--plot")
