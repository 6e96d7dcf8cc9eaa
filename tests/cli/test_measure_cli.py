import json

import pytest

from sharpminima.cli.app import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    ids = []
    for bs in ("50", "200"):
        try:
            main(["train", "--net", "f1", "--dataset", "synthetic", "--train-limit", "400",
                  "--test-limit", "100", "--epochs", "1", "--batch-size", bs, "--store", str(store),
                  "--json"])
        except SystemExit as exc:
            assert exc.code == 0
    from sharpminima.store import Store

    ids = [r.id for r in Store(store).list_runs()]
    return store, ids


def test_measure_json_lines_and_reuse(capsys, trained):
    store, ids = trained
    capsys.readouterr()
    args = ["measure", ids[0], "--what", "sharpness,hessian,trace", "--samples", "200", "--eps", "1e-3",
            "--eps", "5e-4", "--bn", "both", "--trace-samples", "4", "--maxiter", "3", "--store", str(store),
            "--json"]
    code, out, _ = run_cli(capsys, *args)
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and len(rows) == 2 * (2 + 1 + 1)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"keskar_sharpness", "hessian_eigenvalues", "hessian_trace"}
    for r in rows:
        assert {"kind", "value", "settings"} <= set(r) and r["settings"]["bn_mode"] in ("batch", "eval")
    sharp = [r for r in rows if r["kind"] == "keskar_sharpness"]
    assert all(r["value"] >= 0 for r in sharp) and {r["settings"]["eps"] for r in sharp} == {1e-3, 5e-4}
    trace = next(r for r in rows if r["kind"] == "hessian_trace")
    assert trace["stderr"] is not None
    code, out2, _ = run_cli(capsys, *args)  # second call: read from the store, same numbers
    assert [json.loads(line)["value"] for line in out2.strip().splitlines()] == [r["value"] for r in rows]


def test_measure_other_kinds(capsys, trained):
    store, ids = trained
    code, out, _ = run_cli(capsys, "measure", ids[0], "--what", "weight-norm,distance,average-sharpness",
                           "--samples", "100", "--store", str(store), "--json")
    rows = {json.loads(line)["kind"]: json.loads(line) for line in out.strip().splitlines()}
    assert code == 0 and rows["distance_from_init"]["value"] > 0 and rows["weight_norm"]["value"] > 0


def test_measure_errors(capsys, trained):
    store, ids = trained
    code, _, err = run_cli(capsys, "measure", ids[0], "--what", "vibes", "--store", str(store))
    assert code == 2 and "unknown measure(s) ['vibes']" in err
    code, _, err = run_cli(capsys, "measure", ids[0], "--bn", "train", "--store", str(store))
    assert code == 2 and "--bn must be one of batch, eval or both" in err


def test_interpolate_writes_figure_and_numbers(capsys, trained, tmp_path):
    store, ids = trained
    out = tmp_path / "fig3.png"
    code, _, err = run_cli(capsys, "interpolate", ids[0], ids[1], "--points", "5", "--samples", "100",
                           "--out", str(out), "--store", str(store))
    assert code == 0, err
    numbers = json.loads(out.with_suffix(".json").read_text())
    # the 5 requested points plus alpha = 0 and 1, which are always evaluated exactly
    assert numbers["alphas"] == [-1.0, -0.25, 0.0, 0.5, 1.0, 1.25, 2.0] and len(numbers["train_loss"]) == 7
    assert out.stat().st_size > 5000
    code, _, err = run_cli(capsys, "interpolate", ids[0], ids[1], "--path", "zigzag", "--store", str(store))
    assert code == 2 and "--path must be linear or curvilinear" in err


def test_epsilon_study_with_plot(capsys, trained, tmp_path):
    store, ids = trained
    plot = tmp_path / "eps.png"
    code, out, err = run_cli(capsys, "measure", ids[0], "--what", "epsilon-study", "--eps", "1e-4",
                             "--eps", "1e-3", "--samples", "100", "--maxiter", "3", "--plot", str(plot),
                             "--store", str(store), "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["kind"] == "epsilon_study" and row["settings"]["eps"] == [1e-4, 1e-3]
    assert plot.stat().st_size > 5000
