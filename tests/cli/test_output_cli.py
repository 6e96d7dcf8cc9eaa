"""What the command line prints: one JSON document, progress, results as they finish, labels."""

import json

import pytest
import typer

from sharpminima.cli.app import app, main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    for bs in ("50", "200"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--net", "f1", "--dataset", "synthetic", "--train-limit", "400",
                  "--test-limit", "100", "--epochs", "1", "--batch-size", bs, "--store", str(store),
                  "--json"])
        assert exc.value.code == 0
    from sharpminima.store import Store

    runs = sorted(Store(store).list_runs(), key=lambda r: r.config["batch_size"])
    return store, [r.id for r in runs]


def _measurements(store, run_id):
    from sharpminima.store import Store

    return [m for m in Store(store).measurements() if m.get("run_id", run_id) == run_id]


def _commands(group, prefix: str = ""):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer ships its own copy of click)
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


ROOT = typer.main.get_command(app)


def test_every_boolean_option_is_a_plain_flag():
    for name, cmd in _commands(ROOT):
        for param in cmd.params:
            boolean = isinstance(param.default, bool) or param.secondary_opts
            if param.param_type_name == "option" and boolean:
                assert param.is_flag, f"{name} {param.opts} takes a value; make it a flag"


def test_every_command_that_writes_results_has_json_and_device_defaults_to_auto():
    for name, cmd in _commands(ROOT):
        opts = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts}
        if name in ("measure", "interpolate", "train", "reproduce", "report", "study correlation",
                    "study report", "runs list", "runs show", "sweep"):
            assert "--json" in opts, name
        device = next((p for p in cmd.params if "--device" in getattr(p, "opts", ())), None)
        if device is not None:
            assert device.default is None and "auto" in device.help, name  # auto everywhere


def test_json_takes_no_value(capsys, trained):
    store, ids = trained
    code, out, err = run_cli(capsys, "runs", "list", "--store", str(store), "--json", "true")
    assert code == 2 and out == "" and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_measure_checks_every_measurement_before_the_first(capsys, trained):
    store, ids = trained
    before = len(_measurements(store, ids[0]))
    code, out, err = run_cli(capsys, "measure", ids[0], "--what", "keskar_sharpness,noise-scale",
                             "--param", "num_examples=100000", "--num-samples", "100", "--max-iters", "2",
                             "--store", str(store))
    assert code == 2 and "num_examples=100000 is more than the 100 samples" in err
    assert "keskar_sharpness:" not in out and len(_measurements(store, ids[0])) == before
    code, _, err = run_cli(capsys, "measure", ids[0], "--what", "weight_norm,interpolation",
                           "--store", str(store))
    assert code == 2 and "interpolation needs a second point" in err


def test_measure_prints_and_stores_each_result_before_a_later_one_fails(capsys, trained, monkeypatch):
    from sharpminima.errors import SharpMinimaError
    from sharpminima.landscape import registry

    store, ids = trained
    real = registry.run

    def fail_on_trace(measure, inputs, params):
        if measure.name == "hessian_trace":
            raise SharpMinimaError("the trace broke")
        return real(measure, inputs, params)

    monkeypatch.setattr(registry, "run", fail_on_trace)
    args = ["measure", ids[0], "--what", "weight_norm,hessian_trace", "--num-samples", "100",
            "--num-probes", "2", "--store", str(store)]
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and "the trace broke" in err and "weight_norm:" in out
    code, out, err = run_cli(capsys, *args, "--json")
    doc = json.loads(out)  # still one document: the finished measurement and the error
    assert code == 2 and [r["kind"] for r in doc["measurements"]] == ["weight_norm"]
    assert doc["measurements"][0]["reused"] and doc["error"] == "the trace broke"


def test_measure_shows_a_line_per_stage_unless_quiet(capsys, trained):
    store, ids = trained
    args = ["measure", ids[0], "--what", "weight_norm,spectral_density", "--num-samples", "100",
            "--num-probes", "2", "--lanczos-steps", "4", "--store", str(store), "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0
    assert f"measure {ids[0]}: [1/2] weight_norm" in err and "[2/2] spectral_density (bn batch)" in err
    rows = json.loads(out)["measurements"]  # one document on stdout, progress on stderr
    density = rows[1]
    assert density["settings"]["num_probes"] == 2 and density["settings"]["lanczos_steps"] == 4
    assert density["cost"]["num_hvp"] <= 2 * 4  # the sizes given, not 10 x 50 products
    code, out, err = run_cli(capsys, "--quiet", *args)
    assert code == 0 and err == ""


def test_interpolate_gives_the_points_asked_for_and_labels_its_ends(capsys, trained, tmp_path):
    store, ids = trained
    out = tmp_path / "path.png"
    code, stdout, err = run_cli(capsys, "interpolate", ids[0], ids[1], "--points", "5", "--num-samples",
                                "100", "--out", str(out), "--store", str(store), "--json")
    assert code == 0, err
    numbers = json.loads(stdout)
    assert numbers["alphas"] == [-1.0, 0.0, 0.5, 1.0, 2.0] and len(numbers["train_loss"]) == 5
    assert (numbers["label_a"], numbers["label_b"]) == ("B=50", "B=200")  # from the runs' settings
    code, _, err = run_cli(capsys, "interpolate", ids[0], ids[1], "--points", "3", "--store", str(store))
    assert code == 2 and "need at least 4 points" in err


def test_end_labels_fall_back_to_the_run_ids_as_written():
    from sharpminima.cli.measure_cmd import end_labels

    same = {"batch_size": 256, "lr": 1e-3, "seed": 0}
    assert end_labels(same, same, "ab12cd", "ef34ab") == ("ab12cd", "ef34ab")
    assert end_labels(same, {**same, "lr": 0.01}, "a", "b") == ("lr=0.001", "lr=0.01")
    sgd, adam = {**same, "optimizer": "sgd"}, {**same, "optimizer": "adam"}
    assert end_labels(sgd, adam, "a", "b") == ("sgd", "adam")


def test_interpolate_help_reads_whole(capsys):
    code, out, _ = run_cli(capsys, "interpolate", "--help")
    assert code == 0 and "Points from --alpha-min to --alpha-max" in " ".join(out.split())


def test_study_plan_json_is_one_document(capsys):
    code, out, err = run_cli(capsys, "study", "correlation", "--dataset", "synthetic", "--grid",
                             "batch_size=50,100", "--plan", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert [r["batch_size"] for r in plan["runs"]] == [50, 100] and plan["measures"]
