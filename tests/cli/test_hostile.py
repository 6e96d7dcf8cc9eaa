"""Hostile and malformed input on the command line: one ``error:`` line, exit 2, no stray row.

Every case runs the real CLI (``sharpminima.cli.app.main``) on a tiny user data factory and
network (200 samples of 8x8, a 16-unit MLP), so a case that slips through validation
trains in well under a second instead of hanging.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharpminima.cli.app import main
from sharpminima.config import TrainConfig
from sharpminima.errors import StoreError
from sharpminima.store import Store

MODS = {
    "hostile_mods.py": textwrap.dedent("""
        import torch
        from torch import nn

        def data():
            g = torch.Generator().manual_seed(0)
            x = torch.rand(240, 1, 8, 8, generator=g)
            y = (x.flatten(1) @ torch.randn(64, 4, generator=g)).argmax(1)
            return x[:200], y[:200], x[200:], y[200:]

        def net(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))

        def wide(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))

        def wrong(x):
            return x

        def raises(input_shape, num_classes):
            raise RuntimeError("boom")

        def exits(input_shape, num_classes):
            raise SystemExit(0)

        def not_a_module(input_shape, num_classes):
            return 3

        def bad_forward(input_shape, num_classes):
            return nn.Linear(3, 2)

        def loss_raises(model, batch):
            raise ValueError("bad loss")

        def loss_constant(model, batch):
            return torch.tensor(1.0)

        def data_raises():
            raise OSError("no data today")
    """),
    "hostile_syntax.py": "def f(:\n",
    "hostile_import.py": "import no_such_module_for_sharpminima_tests\n",
}

BASE = ["--net", "hostile_mods:net", "--data", "hostile_mods:data", "--epochs", "1", "--batch-size", "50"]


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_mods")
    for name, text in MODS.items():
        (folder / name).write_text(text)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def counts(store: Path) -> tuple[int, ...]:
    """Rows of every table and leftover temporary files: what a rejected command must not change."""
    db = store / "store.sqlite"
    temps = sum(1 for p in store.rglob("*") if p.name.endswith(".tmp")) if store.is_dir() else 0
    if not db.is_file():
        return (0, 0, 0, temps)
    with sqlite3.connect(db) as conn:
        rows = tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                     for t in ("runs", "epochs", "measurements"))
    return (*rows, temps)


def assert_one_error(code, err):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def trained(mods, tmp_path_factory):
    """A store with one finished run of the tiny network (shared by the read-only cases)."""
    store = tmp_path_factory.mktemp("hostile_store")
    with pytest.raises(SystemExit) as exc:
        main(["--quiet", "train", *BASE, "--store", str(store), "--json"])
    assert exc.value.code == 0
    run_id = Store(store, read_only=True).list_runs()[0].id
    return store, run_id


TRAIN_CASES = [
    (["--weight-decay", "-1"], "--weight-decay must be a non-negative number"),
    (["--lr", "inf"], "--lr must be a positive number, got inf"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--momentum", "nan"], "--momentum must be a finite number in [0, 1]"),
    (["--momentum", "-0.5"], "--momentum"),
    (["--init-scale", "-inf"], "--init-scale"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--epochs", "abc"], "--epochs"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
    (["--seed", str(2**70)], "--seed"),
    (["--batch-size", str(10**30)], "--batch-size"),
    (["--trials", "0"], "--trials must be a positive integer"),
    (["--patience", "-3"], "--patience"),
    (["--train-limit", "0"], "--train-limit"),
    (["--profile-steps", "0"], "--profile-steps"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "cuda:x"], "is not a device"),
    (["--net", "os:system"], "cannot be called with 2 argument(s)"),
    (["--net", ":"], "must be written module:attribute"),
    (["--net", "hostile_mods:wrong"], "cannot be called with 2 argument(s)"),
    (["--net", "hostile_mods:raises"], "raised RuntimeError: boom"),
    (["--net", "hostile_mods:exits"], "raised SystemExit"),
    (["--net", "hostile_mods:not_a_module"], "must return a torch.nn.Module"),
    (["--net", "hostile_mods:nope"], "has no attribute 'nope'"),
    (["--net", "hostile_syntax:f"], "SyntaxError"),
    (["--net", "hostile_import:f"], "ModuleNotFoundError"),
    (["--net", "hostile_mods:bad_forward"], "fails on the"),
    (["--loss", "hostile_mods:loss_raises"], "ValueError: bad loss"),
    (["--loss", "hostile_mods:loss_constant"], "must return the batch's mean loss"),
    (["--data", "hostile_mods:data_raises"], "raised OSError"),
    (["--net", "bad\x00name"], "NUL"),
    (["--optimizer-arg", "trust_coefficient=nan"], "not a finite number"),
    (["--method", "sam", "--method-arg", "rho=1,,2"], "empty item"),
    (["--init-from", "nosuchrun"], "no run nosuchrun"),
    (["--init-from", "nosuchrun@x"], "RUN_ID@EPOCH"),
    (["--no-such-flag"], "No such option"),
    (["--net", "f1", "--batch-size", "1"], "needs at least 2 samples per batch"),
]
if not torch.cuda.is_available():
    TRAIN_CASES.append((["--device", "cuda"], "has no CUDA device"))


@pytest.mark.parametrize(("args", "message"), TRAIN_CASES, ids=[" ".join(a)[:40] for a, _ in TRAIN_CASES])
def test_train_rejects_with_one_line_and_no_row(capsys, trained, args, message):
    store, _ = trained
    before = counts(store)
    code, _, err = run_cli(capsys, "train", *BASE, "--store", store, *args)
    assert_one_error(code, err)
    assert message in err, err
    assert counts(store) == before


def _other_cases(tmp: Path, run_id: str) -> list[tuple[list[str], str]]:
    (tmp / "a_file").write_text("x")
    (tmp / "plots.png").mkdir(exist_ok=True)
    return [
        (["measure", run_id, "--samples", "-5"], "must be a positive integer, got -5"),
        (["measure", run_id, "--num-samples", "0"], "--num-samples must be a positive integer"),
        (["measure", run_id, "--eps", "nan"], "--eps must be a finite number"),
        (["measure", run_id, "--chunk-size", "0"], "--chunk-size"),
        (["measure", run_id, "--param", "num_probes=1e30", "--what", "hessian_trace"],
         "--param num_probes must be a positive integer"),
        (["measure", run_id, "--k", str(10**9)], "--k must be a positive integer (at most"),
        (["measure", run_id, "--device", "bogus"], "not a device"),
        (["measure", run_id, "--what", "epsilon_study", "--plot", str(tmp)], "--plot must end in .png"),
        (["measure", run_id, "--what", "epsilon_study", "--plot", str(tmp / "plots.png")], "is a folder"),
        (["measure", "--model", "hostile_mods:wide", "--weights", "/dev/zero", "--data", "hostile_mods:data"],
         "not a regular file"),
        (["interpolate", run_id, run_id, "--points", "0"], "--points"),
        (["interpolate", run_id, run_id, "--alpha-min", "nan"], "--alpha-min must be a finite number"),
        (["interpolate", run_id, run_id, "--out", str(tmp)], "--out must end in"),
        (["interpolate", run_id, run_id, "--out", str(tmp / "plots.png")], "is a folder"),
        (["sweep", "--grid", "batch_size=1,,2", "--net", "hostile_mods:net",
          "--dataset", "hostile_mods:data"], "empty value"),
        (["sweep", "--grid", "seed=0", "--workers", "0", "--net", "hostile_mods:net",
          "--dataset", "hostile_mods:data", "--batch-size", "50"], "--workers must be a positive integer"),
        (["sweep", "--grid", "seed=0,1", "--net", "os:system", "--dataset", "hostile_mods:data",
          "--batch-size", "50"], "cannot be called"),
        (["sweep", "--grid", "lr=0.1,nan", "--net", "hostile_mods:net", "--dataset", "hostile_mods:data",
          "--batch-size", "50"], "learning rate"),
        (["sweep", "--grid", "seed=0", "--stale-after", "-1"], "--stale-after must be a positive number"),
        (["sweep", "--grid", "seed=0", "--heartbeat", "10", "--stale-after", "5", "--net", "hostile_mods:net",
          "--dataset", "hostile_mods:data", "--batch-size", "50"], "--heartbeat"),
        (["reproduce", "--trials", "0"], "--trials"),
        (["reproduce", "--set", "trials=-1"], "--set trials must be a positive integer"),
        (["reproduce", "--device", "bogus"], "not a device"),
        (["reproduce", "--nets", "f1,,c1"], "empty item"),
        (["study", "correlation", "--bootstrap", "0"], "--bootstrap"),
        (["study", "correlation", "--loss-threshold", "nan"], "--loss-threshold"),
        (["runs", "list", "--status", "bogus"], "unknown run status"),
        (["runs", "show", "../../etc"], "no run"),
        (["train", *BASE, "--profile", str(tmp)], "is a folder"),
        (["runs", "list", "--store", str(tmp / "a_file")], "--store"),
    ]


def test_other_commands_reject_with_one_line_and_no_row(capsys, trained, tmp_path):
    store, run_id = trained
    for args, message in _other_cases(tmp_path, run_id):
        before = counts(store)
        extra = [] if "--store" in args else ["--store", store]
        if args[0] in ("reproduce", "study"):
            extra += ["--out", tmp_path / "out"]
        code, _, err = run_cli(capsys, *args, *extra)
        assert_one_error(code, err)
        assert message in err, (args, err)
        assert counts(store) == before, args
    assert not (tmp_path.with_suffix(".png")).exists()  # --plot DIR never writes DIR.png


# --------------------------------------------------------------------------- the store


def test_weights_that_do_not_fit_the_network_are_one_line(capsys, trained, tmp_path):
    store, run_id = trained
    copy = tmp_path / "s"
    _copy_store(store, copy)
    with sqlite3.connect(copy / "store.sqlite") as conn:  # the run's factory changed since
        (config,) = conn.execute("SELECT config FROM runs WHERE id = ?", (run_id,)).fetchone()
        conn.execute("UPDATE runs SET config = ? WHERE id = ?",
                     (config.replace("hostile_mods:net", "hostile_mods:wide"), run_id))
    before = counts(copy)
    code, _, err = run_cli(capsys, "measure", run_id, "--store", copy)
    assert_one_error(code, err)
    assert "does not fit the network" in err and "size mismatch" in err
    assert counts(copy) == before


def test_symlink_to_dev_zero_and_deep_sidecar_are_refused(capsys, trained, tmp_path):
    store, run_id = trained
    copy = tmp_path / "s"
    _copy_store(store, copy)
    final = copy / "runs" / run_id / "final.safetensors"
    final.unlink()
    final.symlink_to("/dev/zero")
    code, _, err = run_cli(capsys, "measure", run_id, "--store", copy)
    assert_one_error(code, err)
    assert "not a regular file" in err
    final.unlink()
    (copy / "runs" / run_id / "init.safetensors").rename(final)
    final.with_suffix(".json").write_text("[" * 200_000 + "]" * 200_000)
    code, _, err = run_cli(capsys, "measure", run_id, "--store", copy)
    assert_one_error(code, err)
    assert "nested deeper than" in err


def test_store_file_that_is_a_folder_and_tampered_ids(capsys, trained, tmp_path):
    bad = tmp_path / "bad"
    (bad / "store.sqlite").mkdir(parents=True)
    code, _, err = run_cli(capsys, "runs", "list", "--store", bad)
    assert_one_error(code, err)
    assert "is not a file" in err
    store, run_id = trained
    copy = tmp_path / "s"
    _copy_store(store, copy)
    with sqlite3.connect(copy / "store.sqlite") as conn:
        conn.execute("INSERT INTO runs SELECT '../../../escape', kind, config, 'x' || config_hash, status,"
                     " message, created_at, updated_at, code_version, machine, summary, worker, heartbeat_at"
                     " FROM runs WHERE id = ?", (run_id,))
    for args in (["runs", "list"], ["runs", "show", "../../../escape"], ["measure", "../../../escape"]):
        code, _, err = run_cli(capsys, *args, "--store", copy)
        assert_one_error(code, err)
        assert "not 12 characters" in err, err
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "escape").exists()
    with pytest.raises(StoreError, match="not 12 characters"):
        Store(copy).run_dir("../../../escape")


def test_read_only_store_writes_nothing(capsys, trained, tmp_path, monkeypatch):
    missing = tmp_path / "nothing-here"
    assert Store(missing, read_only=True).list_runs() == []
    assert not missing.exists()
    store, run_id = trained
    ro = Store(store, read_only=True)
    assert [r.id for r in ro.list_runs()] == [run_id]
    with pytest.raises(StoreError, match="read-only"):
        ro.set_status(run_id, "failed")
    ro.close()
    # read-only media: the folder is not writable, so not even SQLite's -wal/-shm appear
    copy = tmp_path / "s"
    _copy_store(store, copy)
    for extra in copy.glob("store.sqlite-*"):
        extra.unlink()
    before = sorted(p.name for p in copy.rglob("*"))
    monkeypatch.setattr("sharpminima.store.db._writable", lambda folder: False)
    code, out, err = run_cli(capsys, "runs", "list", "--store", copy)
    assert code == 0 and run_id in out, err
    code, out, err = run_cli(capsys, "runs", "show", run_id, "--store", copy)
    assert code == 0 and run_id in out, err
    assert sorted(p.name for p in copy.rglob("*")) == before


def _copy_store(src: Path, dst: Path) -> None:
    import shutil

    with sqlite3.connect(src / "store.sqlite") as conn:  # fold the WAL in before copying
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(src, dst)


# --------------------------------------------------------------------------- honest states


def test_diverged_run_is_named_when_measured(capsys, mods, tmp_path):
    code, out, err = run_cli(capsys, "train", *BASE, "--lr", "1e30", "--store", tmp_path)
    assert code == 0 and "diverged" in out, err
    run_id = Store(tmp_path).list_runs()[0].id
    code, _, err = run_cli(capsys, "measure", run_id, "--store", tmp_path)
    assert_one_error(code, err)
    assert "diverged (its weights are NaN" in err and "eps" not in err


def test_loss_growing_past_the_bound_is_diverged(monkeypatch):
    from sharpminima.train import loop

    assert loop.DIVERGENCE_FACTOR == 100.0
    losses = iter([2.0, 150.0, 250.0])

    class Engine:
        def evaluate(self, *args):
            return next(losses), 0.5

        def optimizer(self, k):
            return None

    class Files:
        run_id = "x"

        def end_epoch(self, *args, **kwargs):
            pass

    class Data:
        x_train = y_train = x_test = y_test = None

    trial = loop.Trial(TrainConfig(), Files(), torch.nn.Linear(1, 1), {})
    def finish(status, message):
        trial.status, trial.message = status, message

    trial.finish = finish
    assert loop._end_epoch(trial, Engine(), 0, 1, 2.0, 0.0, {}, Data(), None)
    losses = iter([150.0, 0.0, 250.0, 0.0])
    assert loop._end_epoch(trial, Engine(), 0, 2, 150.0, 0.0, {}, Data(), None)  # 75x: trains on
    assert not loop._end_epoch(trial, Engine(), 0, 3, 250.0, 0.0, {}, Data(), None)  # 125x: diverged
    assert trial.status == "diverged" and "over 100x epoch 1's mean 2" in trial.message


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_leaves_run_interrupted_and_rerun_resumes(capsys, mods, tmp_path, monkeypatch, how):
    from sharpminima.train import loop

    real, calls = loop._end_epoch, []

    def stop_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_end_epoch", stop_in_second_epoch)
    args = ["train", *BASE, "--epochs", "3", "--store", tmp_path]
    code, _, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == (143 if how == "sigterm" else 130) and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "rerun the same command to resume" in lines[0]
    (record,) = Store(tmp_path).list_runs()
    assert record.status == "interrupted"
    monkeypatch.setattr(loop, "_end_epoch", real)
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and f"resuming run {record.id} from epoch 1" in err and "done" in out


def test_runs_list_shows_a_dead_process_as_interrupted(capsys, trained, tmp_path):
    store, run_id = trained
    copy = tmp_path / "s"
    _copy_store(store, copy)
    st = Store(copy)
    st.set_status(run_id, "running", worker=f"{platform.node()}:{2**22 + 12345}")  # no such pid
    code, out, _ = run_cli(capsys, "runs", "list", "--store", copy)
    assert code == 0 and "interrupted" in out and "running" not in out
    code, out, _ = run_cli(capsys, "runs", "list", "--status", "interrupted", "--store", copy)
    assert code == 0 and run_id in out
    st.set_status(run_id, "running", worker=f"{platform.node()}:{os.getpid()}")  # alive: this process
    assert st.get_run(run_id).observed_status() == "running"
    st.set_status(run_id, "pending")
    assert st.claim_next("otherhost:1").id == run_id  # a queue worker on another machine
    with sqlite3.connect(copy / "store.sqlite") as conn:
        conn.execute("UPDATE runs SET heartbeat_at = '2000-01-01T00:00:00.000000+00:00'")
    code, out, _ = run_cli(capsys, "runs", "list", "--store", copy)
    assert code == 0 and "running (stale heartbeat)" in out


# --------------------------------------------------------------------------- bit-reproducibility


def test_same_run_same_weights_whatever_the_thread_count(mods, tmp_path):
    """``train`` with the process at 1 thread and a sweep worker at 2 give identical weights."""
    from sharpminima.data import load
    from sharpminima.sweep import enqueue, run_worker
    from sharpminima.train import train

    config = TrainConfig(net="hostile_mods:net", dataset="hostile_mods:data", batch_size=50, epochs=2)
    seen: list[int] = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = train(config, dataset=load(config.dataset), store=Store(tmp_path / "a"),
                  progress=lambda event, info: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 1  # restored after training
        torch.set_num_threads(2 if config.num_threads != 2 else 1)
        store_b = Store(tmp_path / "b")
        enqueue(store_b, [config])
        run_worker(store_b, poll_s=0.01)
    finally:
        torch.set_num_threads(before)
    assert set(seen) == {config.num_threads}
    b = Store(tmp_path / "b").get_run(a.id)
    assert b.status == "done"
    from sharpminima.store import load_checkpoint

    wa, _ = load_checkpoint(tmp_path / "a" / "runs" / a.id / "final.safetensors")
    wb, _ = load_checkpoint(tmp_path / "b" / "runs" / a.id / "final.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert TrainConfig(num_threads=1).hash() != TrainConfig().hash()  # another count, another run


# --------------------------------------------------------------------------- property tests

NUMERIC = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "-", "1e", "0x10", "nan", "-inf", "1_000", " 3", "1,,2", "true"]),
)
TEXT = st.text(max_size=30)
TRAIN_NUMERIC = ["--lr", "--momentum", "--weight-decay", "--init-scale", "--epochs", "--batch-size",
                 "--seed", "--patience", "--train-limit", "--test-limit", "--trials", "--profile-steps"]
TRAIN_TEXT = ["--net", "--loss", "--optimizer", "--method", "--init", "--augment", "--lr-schedule",
              "--batch-schedule", "--device", "--stop", "--regime", "--method-arg", "--optimizer-arg",
              "--init-from"]


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(option=st.sampled_from(TRAIN_NUMERIC + TRAIN_TEXT), value=st.one_of(NUMERIC, TEXT))
def test_any_train_option_value_ends_in_success_or_one_error_line(mods, tmp_path, option, value):
    """Training itself is stubbed: the property is about input handling, not convergence."""
    from sharpminima.train import loop

    store = tmp_path / "store"  # one per test: the row counts are compared per example
    real = loop.run_epochs
    loop.run_epochs = lambda *args, **kwargs: None  # valid inputs end at once
    try:
        before = counts(store)
        with pytest.raises(SystemExit) as exc:
            _quiet_main(["train", *BASE, "--store", str(store), option, value])
    finally:
        loop.run_epochs = real
    code, err = exc.value.code, exc.value.err
    if code != 0:
        assert_one_error(code, err)
        assert counts(store) == before


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    command=st.sampled_from(["measure", "interpolate", "runs show", "sweep"]),
    option=st.sampled_from(["--num-samples", "--chunk-size", "--eps", "--k", "--num-probes", "--seed",
                            "--points", "--alpha-min", "--device", "--store", "--plot", "--workers",
                            "--stale-after", "--grid"]),
    value=st.one_of(NUMERIC, TEXT),
)
def test_any_option_of_other_commands_ends_in_one_error_line(tmp_path, command, option, value):
    """Against an empty store every command ends in exit 2 (bad option, or no such run)."""
    store = tmp_path / "store"
    args = {"measure": ["measure", "norun"], "interpolate": ["interpolate", "norun", "norun"],
            "runs show": ["runs", "show", "norun"], "sweep": ["sweep", "--dataset", "nodata"]}[command]
    with pytest.raises(SystemExit) as exc:
        _quiet_main([*args, option, value, "--store", str(store)])
    code, err = exc.value.code, exc.value.err
    assert code == 2, err
    assert_one_error(code, err)
    assert counts(store)[:3] == (0, 0, 0)


def _quiet_main(argv: list[str]) -> None:
    """``main(argv)`` with stderr captured onto the SystemExit (capsys is per test, not per example)."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(argv)
    except SystemExit as exc:
        exc.err = err.getvalue()  # type: ignore[attr-defined]
        raise
    raise AssertionError("main returned without exiting")


def test_bounds_in_messages_are_formatted():
    from sharpminima.validation import Bound, check_number

    assert Bound(ge=0, le=1).describe() == "a finite number in [0, 1]"
    assert Bound(ge=1, le=10, integer=True).describe() == "a positive integer (at most 10)"
    assert Bound(gt=0).describe() == "a positive number"
    assert check_number("x", 3, Bound(ge=0, integer=True)) == 3
    for bad in (math.nan, math.inf, True, "3", 2**64):
        with pytest.raises(Exception, match="x must be"):
            check_number("x", bad, Bound(ge=0))
