import json

import pytest

from sharpminima.cli.app import main
from sm_testing import check_figure, png_dpi


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
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


def test_measure_is_one_json_document_and_reused(capsys, trained):
    store, ids = trained
    capsys.readouterr()
    args = ["measure", ids[0], "--what", "keskar_sharpness,hessian,trace", "--num-samples", "200", "--eps",
            "1e-3", "--eps", "5e-4", "--bn", "both", "--num-probes", "4", "--param", "max_iters=3",
            "--store", str(store), "--json"]
    code, out, _ = run_cli(capsys, *args)
    doc = json.loads(out)
    rows = doc["measurements"]
    assert code == 0 and doc["run_id"] == ids[0] and len(rows) == 2 * (2 + 1 + 1)
    assert {r["kind"] for r in rows} == {"keskar_sharpness", "hessian_eigenvalues", "hessian_trace"}
    for r in rows:
        assert {"kind", "value", "settings", "cost", "reused"} <= set(r)
        assert r["settings"]["bn_mode"] in ("batch", "eval") and r["settings"]["num_samples"] == 200
        assert not r["reused"]
    sharp = [r for r in rows if r["kind"] == "keskar_sharpness"]
    assert all(r["value"] >= 0 and r["settings"]["max_iters"] == 3 for r in sharp)
    assert {r["settings"]["eps"] for r in sharp} == {1e-3, 5e-4}
    assert next(r for r in rows if r["kind"] == "hessian_eigenvalues")["settings"]["max_iters"] == 3
    trace = next(r for r in rows if r["kind"] == "hessian_trace")
    assert trace["stderr"] is not None and trace["settings"]["num_probes"] == 4
    code, out2, _ = run_cli(capsys, *args)  # second call: read from the store, same numbers
    again = json.loads(out2)["measurements"]
    assert [r["value"] for r in again] == [r["value"] for r in rows] and all(r["reused"] for r in again)


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_trace_method_is_a_parameter(capsys, trained, method):
    store, ids = trained
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "measure", ids[0], "--what", "hessian_trace", "--num-samples", "100",
                           "--num-probes", "12", "--param", f"method={method}", "--store", str(store),
                           "--json")
    (row,) = json.loads(out)["measurements"]
    assert code == 0 and row["settings"]["method"] == method and row["stderr"] > 0
    assert row["cost"]["num_hvp"] <= 12
    code, _, err = run_cli(capsys, "measure", ids[0], "--what", "hessian_trace", "--param", "method=exact",
                           "--store", str(store))
    assert code == 2 and "method" in err and "\n" not in err.strip()


def test_deprecated_flags_still_work_with_a_warning(capsys, trained):
    store, ids = trained
    code, out, err = run_cli(capsys, "measure", ids[0], "--what", "sharpness", "--samples", "100",
                             "--maxiter", "2", "--store", str(store), "--json")
    assert code == 0, err
    assert "--samples is deprecated" in err and "--maxiter is deprecated" in err
    (row,) = json.loads(out)["measurements"]
    assert row["settings"]["max_iters"] == 2 and row["settings"]["num_samples"] == 100


def test_text_output_prints_each_result(capsys, trained):
    store, ids = trained
    code, out, err = run_cli(capsys, "measure", ids[0], "--what", "weight_norm,keskar_sharpness",
                             "--num-samples", "100", "--max-iters", "2", "--store", str(store))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"measuring {ids[0]}") and lines[1].startswith("weight_norm: ")
    assert lines[2].startswith("keskar_sharpness: ")


def test_measure_other_kinds(capsys, trained):
    store, ids = trained
    code, out, _ = run_cli(capsys, "measure", ids[0], "--what", "weight-norm,distance,average-sharpness",
                           "--num-samples", "100", "--store", str(store), "--json")
    rows = {r["kind"]: r for r in json.loads(out)["measurements"]}
    assert code == 0 and rows["distance_from_init"]["value"] > 0 and rows["weight_norm"]["value"] > 0


def test_noise_scale_of_a_batchnorm_net_uses_running_statistics(capsys, trained):
    # per-example gradients are defined with running statistics only: the measure fixes eval
    store, ids = trained
    code, out, err = run_cli(capsys, "measure", ids[0], "--what", "noise-scale", "--num-samples", "100",
                             "--bn", "batch", "--store", str(store), "--json")
    assert code == 0, err
    (row,) = json.loads(out)["measurements"]
    assert row["settings"]["bn_mode"] == "eval" and row["value"] > 0


def test_measure_errors(capsys, trained):
    store, ids = trained
    code, _, err = run_cli(capsys, "measure", ids[0], "--what", "vibes", "--store", str(store))
    assert code == 2 and "unknown measure 'vibes'" in err
    code, _, err = run_cli(capsys, "measure", ids[0], "--bn", "train", "--store", str(store))
    assert code == 2 and "--bn must be one of batch, eval or both" in err
    code, _, err = run_cli(capsys, "measure", ids[0], "--param", "rho=1", "--store", str(store))
    assert code == 2 and "--param rho: no chosen measure takes it" in err
    code, _, err = run_cli(capsys, "measure", ids[0], "--eps", "-1", "--store", str(store))
    assert code == 2 and "eps must be a positive finite number" in err
    code, _, err = run_cli(capsys, "measure", "--store", str(store))
    assert code == 2 and "give a RUN id" in err
    code, _, err = run_cli(capsys, "measure", ids[0], "--num-samples", "-5", "--store", str(store))
    assert code == 2 and "--num-samples must be a positive integer" in err
    code, _, err = run_cli(capsys, "measure", ids[0], "--plot", str(store), "--store", str(store))
    assert code == 2 and "--plot must end in .png, .pdf or .svg" in err


def test_measure_help_lists_the_registry(capsys):
    code, out, _ = run_cli(capsys, "measure", "--help")
    assert code == 0
    for name in ("keskar_sharpness", "relative_flatness", "hessian_trace", "gradient_noise_scale"):
        assert name in out


def test_interpolate_writes_figure_and_numbers(capsys, trained, tmp_path):
    store, ids = trained
    out = tmp_path / "fig3.png"
    code, _, err = run_cli(capsys, "interpolate", ids[0], ids[1], "--points", "5", "--num-samples", "100",
                           "--out", str(out), "--store", str(store))
    assert code == 0, err
    numbers = json.loads(out.with_suffix(".json").read_text())
    # exactly the 5 requested points; the two nearest 0 and 1 move onto them (evaluated exactly)
    assert numbers["alphas"] == [-1.0, 0.0, 0.5, 1.0, 2.0] and len(numbers["train_loss"]) == 5
    assert out.stat().st_size > 5000
    code, _, err = run_cli(capsys, "interpolate", ids[0], ids[1], "--path", "zigzag", "--store", str(store))
    assert code == 2 and "--path must be linear or curvilinear" in err


def test_epsilon_study_with_plot(capsys, trained, tmp_path):
    store, ids = trained
    plot = tmp_path / "eps.png"
    args = ["measure", ids[0], "--what", "epsilon-study", "--eps", "1e-4", "--eps", "1e-3", "--num-samples",
            "100", "--max-iters", "3", "--store", str(store), "--json"]
    code, out, err = run_cli(capsys, *args, "--plot", str(plot))
    assert code == 0, err
    (row,) = json.loads(out)["measurements"]
    assert row["kind"] == "epsilon_study" and row["settings"]["eps"] == [1e-4, 1e-3]
    assert plot.stat().st_size > 5000 and png_dpi(plot.read_bytes()) >= 200
    code, _, err = run_cli(capsys, *args, "--plot", str(tmp_path / "eps.pdf"))  # the stored study, redrawn
    assert code == 0, err
    assert (tmp_path / "eps.pdf").read_bytes().startswith(b"%PDF")


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures the CLI writes, as it writes them (through ``figstyle.save_figure_as``)."""
    from sharpminima import figstyle

    saved = []
    save = figstyle.save_figure_as

    def keep(fig, path, option="the figure file"):
        saved.append(fig)
        return save(fig, path, option)

    monkeypatch.setattr(figstyle, "save_figure_as", keep)
    return saved


def test_cli_plots_are_in_the_figure_style_and_labelled(capsys, trained, tmp_path, saved_figures):
    store, ids = trained
    out = tmp_path / "path.svg"
    code, _, err = run_cli(capsys, "interpolate", ids[0], ids[1], "--points", "5", "--num-samples", "100",
                           "--out", str(out), "--store", str(store))
    assert code == 0, err
    assert out.read_bytes().startswith(b"<?xml") and out.with_suffix(".json").is_file()
    code, _, err = run_cli(capsys, "measure", ids[0], "--what", "epsilon-study", "--eps", "1e-4", "--eps",
                           "1e-3", "--num-samples", "100", "--max-iters", "3", "--store", str(store),
                           "--plot", str(tmp_path / "eps.png"))
    assert code == 0, err
    path_fig, eps_fig = saved_figures
    for fig in saved_figures:
        check_figure(fig)
    assert "B=50" in path_fig.axes[0].get_xlabel() and "B=200" in path_fig.axes[0].get_xlabel()
    assert "Keskar sharpness" in eps_fig.axes[0].get_title()
