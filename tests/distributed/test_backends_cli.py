"""The Ray backend from the command line against a head node started with `ray start --head`.

The head runs in its own processes (2 CPUs) for this module and is stopped at its end;
each command is a separate driver process, as a user's would be: killed with SIGKILL and
rerun, interrupted with Ctrl-C, or given requests the cluster cannot meet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from sharpminima.store import Store  # noqa: E402

HERE = Path(__file__).parent
SM = [sys.executable, "-m", "sharpminima"]


def _rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path / "store.sqlite") as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "epochs")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node started with `ray start --head` (2 CPUs), stopped at the end."""
    port = _free_port()
    path = os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))
    # An explicit address never turns Ray's token authentication on by itself: say so.
    env = dict(os.environ, PYTHONPATH=path, RAY_AUTH_MODE="token")
    ray_bin = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    yield f"127.0.0.1:{port}", env
    subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_cli_sweep_on_a_ray_head_resumes_after_the_driver_is_killed(ray_head, tmp_path):
    address, env = ray_head
    store = tmp_path / "store"
    args = [*SM, "sweep", "--dataset", "synthetic", "--train-limit", "300", "--test-limit", "50",
            "--epochs", "2", "--grid", "batch_size=20,25,40,50", "--backend", "ray", "--address", address,
            "--cpus-per-run", "1", "--store", str(store)]
    driver = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900  # generous: a loaded CI machine may take minutes per run
    while time.monotonic() < deadline:  # kill -9 the driver as soon as one run is imported
        if (store / "store.sqlite").exists():
            with sqlite3.connect(store / "store.sqlite") as conn:
                if conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0] >= 1:
                    break
        if driver.poll() is not None:
            break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    with sqlite3.connect(store / "store.sqlite") as conn:
        states = dict(conn.execute("SELECT id, status FROM runs").fetchall())
    assert len(states) == 4 and "done" in states.values()
    store_obj = Store(store)
    done_before = {r: store_obj.get_run(r).updated_at for r, s in states.items() if s == "done"}
    again = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["backend"] == "ray" and {r["status"] for r in out["runs"]} == {"done"}
    assert len(out["runs"]) == 4 and _rows(store)["runs"] == 4
    for run_id, updated in done_before.items():  # finished runs were found, not trained again
        assert store_obj.get_run(run_id).updated_at == updated


def test_cli_ctrl_c_cancels_outstanding_ray_tasks_and_leaves_runs_pending(ray_head, tmp_path):
    address, env = ray_head
    store = tmp_path / "store"
    env = dict(env, SM_TEST_SLOW_S="60")
    args = [*SM, "sweep", "--net", "cluster_nets:slow", "--dataset", "synthetic", "--train-limit", "100",
            "--batch-size", "50", "--test-limit", "20", "--epochs", "1", "--grid", "seed=0,1",
            "--backend", "ray", "--address", address, "--store", str(store)]
    driver = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (store / "store.sqlite").exists():
        time.sleep(0.1)
    time.sleep(2.0)  # tasks submitted and sleeping in their workers
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode not in (0, None)
    assert "Traceback" not in err
    with sqlite3.connect(store / "store.sqlite") as conn:
        states = [s for (s,) in conn.execute("SELECT status FROM runs")]
        files = list((store / "runs").rglob("*.safetensors"))
    assert states and set(states) <= {"pending", "interrupted"} and files == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
        (["--address", "nonsense"], "must be auto, HOST:PORT"),
        (["--cpus-per-run", "64"], "largest node"),
        (["--gpus-per-run", "1"], "largest node"),
    ],
)
def test_cli_bad_cluster_requests_are_one_error_line_and_write_nothing(ray_head, tmp_path, extra, message):
    address, env = ray_head
    store = tmp_path / "store"
    args = [*SM, "sweep", "--dataset", "synthetic", "--train-limit", "100", "--batch-size", "50",
            "--epochs", "1", "--grid", "seed=0,1", "--backend", "ray", "--store", str(store)]
    if "--address" not in extra:
        extra = [*extra, "--address", address]
    result = subprocess.run([*args, *extra], env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not store.exists()


def test_cli_names_the_extra_to_install_when_ray_is_missing(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from sharpminima.cli.app import main; "
            f"main(['sweep', '--dataset', 'synthetic', '--grid', 'seed=0', '--backend', 'ray', "
            f"'--store', {str(tmp_path / 'store')!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pip install 'sharpminima[ray]'" in result.stderr, result.stderr
    assert not (tmp_path / "store").exists()


