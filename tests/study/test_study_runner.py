import json
import math

import pytest

from sharpminima.cli.app import main
from sharpminima.errors import ConfigError
from sharpminima.store import Store
from sharpminima.store.provenance import code_version
from sharpminima.study import get_preset, run_study
from sharpminima.study.measures import FAMILIES
from sharpminima.study.report import write_study_report
from sm_testing import make_tiny, small_mlp

# A 2x2 grid on a tiny problem: every measure family, with the cheapest settings.
TINY = get_preset(
    "quick", net="small_mlp", dataset="tiny", grid=(("batch_size", (50, 100)), ("seed", (0, 1))), epochs=2,
    train_limit=None, measure_samples=120, chunk_size=60, eps=(1e-3,), max_iters=2, subspace_dim=5,
    hessian_max_iters=4, trace_probes=3, average_draws=2, noise_examples=20, flatness_draws=1,
    loss_threshold=10.0, num_bootstrap=50,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    store = Store(root / "store")
    data = make_tiny()
    res = run_study(TINY, store=store, dataset=data, model_factory=small_mlp)
    return root, store, data, res


def test_every_run_is_trained_measured_and_stored(study):
    root, store, _, res = study
    assert len(res["runs"]) == 4 and len(store.list_runs()) == 4
    assert res["excluded"] == {"total": 4, "included": 4}
    stored = {m["kind"] for m in store.measurements()}
    assert {"keskar_sharpness", "hessian_eigenvalues", "hessian_trace", "gradient_noise_scale",
            "pacbayes_flatness", "weight_norm", "distance_from_init"} <= stored
    names = [m["name"] for m in res["measures"]]
    assert {m["family"] for m in res["measures"]} == set(FAMILIES)
    assert "hparam: batch_size" in names and "hparam: seed" not in names
    for run in res["runs"]:
        assert run["gap_error"] == pytest.approx(run["train_acc"] - run["test_acc"])
        assert set(run["measures"]) == set(names)
        assert all(math.isfinite(m["value"]) for m in run["measures"].values())
    assert len(res["correlations"]) == 2 * len(names)
    c = next(c for c in res["correlations"] if c["measure"] == "hparam: batch_size" and c["gap"] == "loss")
    assert set(c["granulated"]) == {"batch_size", "seed"} and c["n"] == 4
    assert res["costs"]["Hessian trace"]["num_hvp"] == 3


def test_rerun_trains_and_measures_nothing(study, monkeypatch):
    _, store, data, first = study
    before = {(m["run_id"], m["kind"], m["params_hash"]): m["created_at"] for m in store.measurements()}

    monkeypatch.setattr("sharpminima.train.loop.run_epochs", _fail)
    again = run_study(TINY, store=store, dataset=data, model_factory=small_mlp)
    after = {(m["run_id"], m["kind"], m["params_hash"]): m["created_at"] for m in store.measurements()}
    assert after == before
    assert all(m["reused"] for r in again["runs"] for name, m in r["measures"].items()
               if not name.startswith(("hparam", "final train loss")))
    measured = sum(not name.startswith(("hparam", "final train loss"))
                   for r in first["runs"] for name in r["measures"])
    assert first["environment"]["measurements_last_call"] == {"computed": measured, "read_from_store": 0}
    assert again["environment"]["measurements_last_call"] == {"computed": 0, "read_from_store": measured}
    assert again["environment"]["runs_trained_by"] == {code_version(): 4}
    assert again["correlations"] == first["correlations"]


def test_runs_above_the_loss_threshold_are_excluded_and_counted(study, tmp_path):
    _, store, data, _ = study
    strict = TINY.replace(loss_threshold=1e-9, measures=("weight_norm",))
    res = run_study(strict, store=store, dataset=data, model_factory=small_mlp)
    assert res["excluded"] == {"total": 4, "included": 0, "train loss above threshold": 4}
    assert all(r["measures"] == {} for r in res["runs"])
    assert all(c["n"] == 0 for c in res["correlations"])
    md, _ = write_study_report(tmp_path / "out", res)  # a report with nothing to rank still renders
    assert "0 of 4 runs" in md.read_text()


def test_report_has_tables_and_figures(study):
    root, _, _, res = study
    md, page = write_study_report(root / "out", res)
    text = md.read_text()
    for heading in ("Which measure predicts", "Runs", "Ranking by the test - train error",
                    "What each measure costs"):
        assert heading in text
    assert "psi(batch_size)" in text and "[" in text
    assert page.read_text().count("data:image/png;base64,") == 4
    assert (root / "out" / "study_scatter_error.png").stat().st_size > 10_000


def test_batch_size_above_the_training_set_is_a_config_error():
    bad = TINY.replace(grid=(("batch_size", (50, 5000)),))
    with pytest.raises(ConfigError, match="batch size 5000 exceeds the 600 training samples"):
        run_study(bad, dataset=make_tiny(), model_factory=small_mlp)


def _fail(*args, **kwargs):
    raise AssertionError("trained again")


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


CLI = ["study", "correlation", "--net", "f1", "--dataset", "synthetic", "--grid", "batch_size=50,100",
       "--grid", "seed=0,1", "--epochs", "1", "--train-limit", "200", "--test-limit", "100",
       "--measures", "weight_norm,distance_init,train_loss,hparam", "--measure-samples", "100",
       "--loss-threshold", "100", "--bootstrap", "20"]


def test_cli_runs_the_study_and_a_rerun_trains_nothing(capsys, tmp_path, monkeypatch):
    args = [*CLI, "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")]
    code, out, err = _cli(capsys, *args, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["excluded"]["included"] == 4 and (tmp_path / "out" / "study.html").exists()
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    assert len({r["run_id"] for r in study["runs"]}) == 4
    assert [m["name"] for m in study["measures"]] == [
        "weight norm", "distance from init", "final train loss", "hparam: batch_size"]
    store = Store(tmp_path / "store")
    n_meas = len(store.measurements())
    assert n_meas == 4 * 2  # weight norm and distance; loss and batch size come from the run
    monkeypatch.setattr("sharpminima.train.loop.run_epochs", _fail)
    code, out, _ = _cli(capsys, *args)
    assert code == 0 and "4 of 4 runs" in out and "report:" in out
    assert len(store.measurements()) == n_meas
    code, out, _ = _cli(capsys, "study", "report", "--out", str(tmp_path / "out"))
    assert code == 0 and "study.html" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grid", "depth=1,2"], "cannot vary 'depth'"),
        (["--grid", "lr=1e-3", "--grid", "lr=1e-4"], "given twice"),
        (["--measures", "vibes"], "unknown measure"),
        (["--preset", "huge"], "unknown study preset"),
        (["--train-limit", "40"], "batch size 50 exceeds the 40 training samples"),
    ],
)
def test_cli_errors_are_one_line(capsys, tmp_path, extra, message):
    code, _, err = _cli(capsys, *CLI, *extra, "--store", str(tmp_path), "--plan")
    assert code == 2 and message in err and err.count("\n") == 1


def test_cli_plan_prints_runs_and_measures(capsys, tmp_path):
    code, out, _ = _cli(capsys, *CLI, "--store", str(tmp_path), "--plan")
    assert code == 0 and "4 runs x 4 measures" in out and "hparam: batch_size" in out
    assert not (tmp_path / "store.sqlite").exists()
