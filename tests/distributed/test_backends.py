"""Ray and SLURM (submitit) backends with the real engines: one writer, retries, resumes.

In-process tests share one local Ray cluster (``ray.init(num_cpus=2)``); the ``--address``
tests start a head node with ``ray start --head`` in a subprocess and stop it at the end.
SLURM runs through submitit's own local executor (the same job arrays, as processes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("submitit")

from sharpminima.backends import get_backend  # noqa: E402
from sharpminima.config import TrainConfig  # noqa: E402
from sharpminima.errors import ConfigError, StoreError  # noqa: E402
from sharpminima.store import Store, load_checkpoint  # noqa: E402
from sharpminima.store.transfer import export_run, import_run  # noqa: E402
from sharpminima.sweep import expand_grid, parse_grid  # noqa: E402
from sharpminima.train import train  # noqa: E402

HERE = Path(__file__).parent
BASE = TrainConfig(net="f1", dataset="synthetic", train_limit=200, test_limit=50, epochs=2, batch_size=50)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local 2-CPU Ray cluster for the in-process tests; workers can import cluster_nets.

    Yields the file whose absence makes ``cluster_nets:dies_once`` kill its worker (the
    environment is set before ``ray.init``, so every worker process inherits it).
    """
    marker = tmp_path_factory.mktemp("ray") / "killed"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p),
           "SM_TEST_DRIVER_PID": str(os.getpid()), "SM_TEST_KILL_MARKER": str(marker)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # address="local": always a new cluster, never one a killed earlier run left behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield marker
    ray.shutdown()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _weights(store: Store, run_id: str) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(store.root / "runs" / run_id / "final.safetensors")
    return tensors


# ----------------------------------------------------------------------------- transfer
def test_bundle_round_trip_is_exact_and_import_is_idempotent(tmp_path):
    src, dst = Store(tmp_path / "a"), Store(tmp_path / "b")
    run = train(BASE, store=src)
    src.add_measurement(run.id, "keskar_sharpness", {"eps": 1e-3}, 12.5, {"num_grad": 3}, {"x": 1})
    bundle = export_run(src, run.id)
    assert import_run(dst, bundle) == run.id
    assert import_run(dst, bundle) == run.id  # a second import of a finished run changes nothing
    assert dst.get_run(run.id).status == "done" and dst.get_run(run.id).summary == src.get_run(run.id).summary
    assert dst.epochs(run.id) == src.epochs(run.id)
    assert [m["value"] for m in dst.measurements(run.id)] == [12.5]
    for name, tensor in _weights(src, run.id).items():
        assert torch.equal(tensor, _weights(dst, run.id)[name])
    again = train(BASE, store=dst)  # the imported run is found finished, not retrained
    assert again.id == run.id and len(dst.list_runs()) == 1


@pytest.mark.parametrize("name", ["../escape.json", "/etc/passwd", "a/../../b", ""])
def test_bundle_with_a_path_outside_its_run_folder_is_refused(tmp_path, name):
    src, dst = Store(tmp_path / "a"), Store(tmp_path / "b")
    run = train(BASE, store=src)
    bundle = export_run(src, run.id)
    bundle["files"][name] = b"x"
    with pytest.raises(StoreError, match="outside its run folder"):
        import_run(dst, bundle)
    assert dst.list_runs() == [] and not (tmp_path / "escape.json").exists()


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "kubernetes"}, "unknown backend"),
        ({"name": "local", "address": "auto"}, "only with --backend ray or slurm"),
        ({"name": "ray", "cpus_per_run": -1}, "--cpus-per-run"),
        ({"name": "ray", "gpus_per_run": float("nan")}, "--gpus-per-run"),
        ({"name": "ray", "cpus_per_run": 0}, "> 0"),
        ({"name": "ray", "partition": "gpu"}, "SLURM option"),
        ({"name": "slurm", "address": "auto"}, "Ray option"),
        ({"name": "slurm", "gpus_per_run": 0.5}, "whole number"),
        ({"name": "slurm", "time_min": 0}, "--time"),
        ({"name": "ray", "max_retries": -2}, "--max-retries"),
    ],
)
def test_bad_backend_options_are_config_errors(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=message):
        get_backend(name, **kwargs)


# ----------------------------------------------------------------------------- Ray, in process
def test_ray_trains_each_run_once_with_the_weights_of_local_training(ray_cluster, tmp_path):
    store = Store(tmp_path / "store")
    configs = expand_grid(BASE, parse_grid(["batch_size=50,100", "seed=0,1"]))
    seen: list[tuple[str, str]] = []
    backend = get_backend("ray", cpus_per_run=1)  # two runs at once; each still trains with num_threads
    final = backend.train_many(store, configs, progress=lambda run_id, status: seen.append((run_id, status)))
    assert sorted(final) == sorted(c.hash()[:12] for c in configs)
    assert set(final.values()) == {"done"} and len(seen) == 4 and len({r for r, _ in seen}) == 4
    # The same run id gives the same weights whichever backend trained it.
    local = Store(tmp_path / "local")
    ref = train(configs[0], store=local)
    for name, tensor in _weights(local, ref.id).items():
        assert torch.equal(tensor, _weights(store, ref.id)[name]), name
    seen.clear()  # a rerun submits nothing: every run is found finished in the store
    assert backend.train_many(store, configs, progress=lambda r, s: seen.append((r, s))) == final
    assert seen == []


def test_ray_retries_a_killed_worker_and_records_a_raising_run_as_failed(ray_cluster, tmp_path):
    marker = ray_cluster
    store = Store(tmp_path / "store")
    dies = BASE.replace(net="cluster_nets:dies_once")
    raises = BASE.replace(net="cluster_nets:raises")
    plain = BASE.replace(seed=5)
    final = get_backend("ray", max_retries=2).train_many(store, [dies, raises, plain])
    assert marker.exists()  # a worker really died mid-run
    assert final[dies.hash()[:12]] == "done" and final[plain.hash()[:12]] == "done"
    assert final[raises.hash()[:12]] == "failed"
    assert "cannot be built" in store.get_run(raises.hash()[:12]).message
    assert len(store.list_runs()) == 3  # each run exactly once
    assert [e["epoch"] for e in store.epochs(dies.hash()[:12])] == [1, 2]  # each epoch once


def test_ray_warm_start_ships_its_parent_run(ray_cluster, tmp_path):
    store = Store(tmp_path / "store")
    parent = BASE.replace(save_every_epoch=True)
    parent_id = parent.hash()[:12]
    child = BASE.replace(batch_size=100, init_from=f"{parent_id}@1")
    final = get_backend("ray").train_many(store, [child, parent])  # order does not matter
    assert final == {child.hash()[:12]: "done", parent_id: "done"}
    with pytest.raises(ConfigError, match="no run"):
        get_backend("ray").train_many(store, [BASE.replace(init_from="nosuchrun123@1")])


def test_study_and_reproduce_run_their_training_on_ray(ray_cluster, tmp_path, capsys):
    from sharpminima.cli.app import main

    store = tmp_path / "store"
    with pytest.raises(SystemExit) as exc:
        main(["study", "correlation", "--dataset", "synthetic", "--grid", "batch_size=50,100",
              "--epochs", "1", "--train-limit", "200", "--test-limit", "50", "--measures", "weight_norm",
              "--measure-samples", "100", "--bootstrap", "20", "--backend", "ray", "--store", str(store),
              "--out", str(tmp_path / "study"), "--json"])
    assert exc.value.code in (None, 0), capsys.readouterr().err
    runs = Store(store).list_runs()
    assert len(runs) == 2 and all(r.status == "done" for r in runs)
    assert all(r.machine for r in runs)


# ----------------------------------------------------------------------------- SLURM via submitit
def test_slurm_job_array_with_the_local_executor_trains_retries_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH")))))
    monkeypatch.setenv("SM_TEST_DRIVER_PID", str(os.getpid()))
    monkeypatch.setenv("SM_TEST_KILL_MARKER", str(tmp_path / "killed"))
    store = Store(tmp_path / "store")
    configs = [BASE, BASE.replace(seed=1), BASE.replace(net="cluster_nets:dies_once"),
               BASE.replace(net="cluster_nets:raises")]
    backend = get_backend("slurm", slurm_cluster="local", max_retries=1, time_min=5)
    backend.poll_s = 0.2
    final = backend.train_many(store, configs)
    ids = [c.hash()[:12] for c in configs]
    assert [final[i] for i in ids] == ["done", "done", "done", "failed"]
    assert (tmp_path / "killed").exists() and "cannot be built" in store.get_run(ids[3]).message
    assert len(store.list_runs()) == 4 and (store.root / "slurm").is_dir()
    seen: list[str] = []
    backend.train_many(store, configs[:3], progress=lambda r, s: seen.append(r))
    assert seen == []  # finished runs are not submitted again


def test_slurm_without_sbatch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    with pytest.raises(ConfigError, match="no `sbatch`"):
        get_backend("slurm").check()
