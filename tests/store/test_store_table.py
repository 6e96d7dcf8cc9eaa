"""The store as a table: Store.to_pandas() and `sharpminima runs export` (CSV, Parquet)."""

from __future__ import annotations

import math

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from sharpminima.errors import ConfigError  # noqa: E402
from sharpminima.store import Store  # noqa: E402
from sharpminima.store.table import export_runs, run_rows  # noqa: E402


def _config(batch_size: int, seed: int = 0) -> dict:
    return {"net": "f1", "batch_size": batch_size, "seed": seed, "epochs": 20, "betas": [0.9, 0.999]}


@pytest.fixture
def store(tmp_path) -> Store:
    st = Store(tmp_path / "store")
    a, _ = st.get_or_create_run(_config(256), "a" * 16)
    b, _ = st.get_or_create_run(_config(6000), "b" * 16)
    st.get_or_create_run(_config(6000, seed=1), "c" * 16)  # pending, no results
    st.set_status(a.id, "done", summary={"epochs": 12, "test_acc": 98.1, "train_loss": 0.01})
    st.set_status(b.id, "diverged", "loss became NaN", summary={"epochs": 3, "train_loss": math.nan})
    st.add_measurement(a.id, "keskar_sharpness", {"eps": 1e-3}, 5.5, {}, {})
    st.add_measurement(a.id, "keskar_sharpness", {"eps": 5e-4}, 2.0, {}, {})
    st.add_measurement(b.id, "keskar_sharpness", {"eps": 1e-3}, 300.0, {}, {})
    st.add_measurement(b.id, "hessian_trace", {"num_probes": 10}, math.nan, {}, {})
    return st


def test_one_row_per_run_with_config_results_and_measures_as_columns(store):
    frame = store.to_pandas()
    assert list(frame["run_id"]) == [r.id for r in store.list_runs()] and len(frame) == 3
    row = frame.set_index("run_id").loc["a" * 12]
    assert row["status"] == "done" and row["batch_size"] == 256 and row["seed"] == 0
    assert row["epochs"] == 20 and row["trained_epochs"] == 12  # the cap beside what it trained
    assert row["test_acc"] == pytest.approx(98.1) and row["betas"] == "[0.9,0.999]"
    assert row["keskar_sharpness[eps=0.001]"] == 5.5 and row["keskar_sharpness[eps=0.0005]"] == 2.0
    diverged = frame.set_index("run_id").loc["b" * 12]
    assert diverged["message"] == "loss became NaN" and math.isnan(diverged["hessian_trace"])
    assert diverged["keskar_sharpness[eps=0.001]"] == 300.0
    pending = frame.set_index("run_id").loc["c" * 12]
    assert pending["status"] == "pending" and pd.isna(pending["test_acc"])
    assert list(store.to_pandas(status="done")["run_id"]) == ["a" * 12]


def test_a_kind_measured_once_per_run_is_named_by_its_kind_alone(tmp_path):
    st = Store(tmp_path / "s")
    run, _ = st.get_or_create_run(_config(256), "d" * 16)
    st.add_measurement(run.id, "top_eigenvalue", {"k": 1}, 7.0, {}, {})
    assert run_rows(st)[0]["top_eigenvalue"] == 7.0


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trips_and_leaves_no_temp_file(store, tmp_path, fmt):
    path = tmp_path / f"runs.{fmt}"
    assert export_runs(store, path) == 3
    back = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    expected = store.to_pandas()
    assert list(back.columns) == list(expected.columns)
    assert list(back["run_id"]) == list(expected["run_id"])
    values = back["keskar_sharpness[eps=0.001]"].tolist()
    assert values[:2] == [5.5, 300.0] and pd.isna(values[2])
    assert back["status"].tolist() == ["done", "diverged", "pending"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs." + fmt, "store"]


def test_export_errors_are_config_errors(store, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format"):
        export_runs(store, tmp_path / "runs.xlsx")
    with pytest.raises(ConfigError, match="is a folder"):
        export_runs(store, tmp_path, "csv")


def test_cli_runs_export(store, tmp_path, capsys):
    from sharpminima.cli.app import main

    out = tmp_path / "sweep.csv"
    with pytest.raises(SystemExit) as exc:
        main(["runs", "export", str(out), "--store", str(store.root)])
    assert exc.value.code in (None, 0)
    assert "wrote 3 runs" in capsys.readouterr().out and len(pd.read_csv(out)) == 3
    with pytest.raises(SystemExit) as exc:
        main(["runs", "export", str(tmp_path / "x.json"), "--store", str(store.root)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: unknown export format") and err.count("\n") == 1
