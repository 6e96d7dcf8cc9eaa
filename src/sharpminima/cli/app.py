"""The ``sharpminima`` command line: parse, build a config, call the library, store, print."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Annotated, Any

import typer

from sharpminima import __version__
from sharpminima.cli.common import STATE
from sharpminima.errors import SharpMinimaError

app = typer.Typer(
    name="sharpminima",
    help="Reproduce, measure and close the large-batch generalization gap (Keskar et al., ICLR 2017).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"sharpminima {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what is being done.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    STATE.debug, STATE.quiet = debug, quiet
    level = logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _register() -> None:
    from sharpminima.cli import data_cmd, runs_cmd, train_cmd

    app.add_typer(data_cmd.app, name="data")
    app.add_typer(runs_cmd.app, name="runs")
    train_cmd.register(app)
    for optional in ("measure_cmd", "reproduce_cmd", "study_cmd", "sweep_cmd"):
        try:
            module = __import__(f"sharpminima.cli.{optional}", fromlist=["register"])
        except ImportError:  # pragma: no cover - during development only
            continue
        module.register(app)


_register()


def _distributed_session() -> Any:
    """The torch.distributed session when started by torchrun, else a no-op (no torch import)."""
    import contextlib
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return contextlib.nullcontext()
    from sharpminima.distributed import session

    return session()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit with code 2.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        with _distributed_session():  # under torchrun: join the process group
            app(args=args, prog_name="sharpminima")
    except SharpMinimaError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        name = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{name}; check the path and permissions", file=sys.stderr)
        sys.exit(2)
