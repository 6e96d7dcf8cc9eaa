"""The ``sharpminima`` command line: parse, build a config, call the library, store, print."""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from typing import Annotated, Any

import typer

from sharpminima import __version__
from sharpminima.cli.common import STATE, Interrupted, validated
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
    _validate_all(app, "")


def _validate_all(typer_app: typer.Typer, prefix: str) -> None:
    """Wrap every command (sub-apps too) so its options are checked before it runs."""
    for info in typer_app.registered_commands:
        if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
            name = info.name or info.callback.__name__.replace("_", "-")
            info.callback = validated(prefix + name, info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _validate_all(group.typer_instance, f"{prefix}{group.name}.")


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
    code: Any = 0
    _TERMINATED.clear()
    previous = _on_sigterm()
    try:
        with _distributed_session():  # under torchrun: join the process group
            code = app(args=args, prog_name="sharpminima", standalone_mode=False)
    except SharpMinimaError as exc:
        _fail(debug, f"{exc}")
    except (KeyboardInterrupt, Interrupted, typer.Abort):
        code = 130
    except typer.TyperException as exc:  # a usage error: bad option, missing argument...
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message(), file=sys.stderr)
            sys.exit(2)
        command = getattr(getattr(exc, "ctx", None), "command_path", "sharpminima")
        message = " ".join(exc.format_message().split())
        _fail(debug, f"{message}; see `{command} --help`")
    except OSError as exc:
        name = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        _fail(debug, f"{exc.strerror or exc}{name}; check the path and permissions")
    except MemoryError:
        _fail(debug, "out of memory; use smaller inputs or limits (e.g. --train-limit, --num-samples)")
    except RecursionError:
        _fail(debug, "input nested too deeply to process; check the files and options given")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code == 130:  # Ctrl-C or SIGTERM (typer returns 130 for an interrupt it caught itself)
        what = "terminated (SIGTERM)" if _TERMINATED else "interrupted (Ctrl-C)"
        print(f"error: {what}; rerun the same command to resume", file=sys.stderr)
        sys.exit(143 if _TERMINATED else 130)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


_TERMINATED: list[int] = []


def _on_sigterm() -> Any:
    """SIGTERM ends a command like Ctrl-C: runs are recorded ``interrupted``, not left ``running``."""

    def handler(signum: int, frame: Any) -> None:
        _TERMINATED.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave it alone
        return signal.getsignal(signal.SIGTERM)


def _fail(debug: bool, message: str) -> None:
    """Print one ``error:`` line (the traceback too with ``--debug``) and exit with code 2."""
    if debug:
        traceback.print_exc()
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"error: {line}", file=sys.stderr)
    sys.exit(2)
