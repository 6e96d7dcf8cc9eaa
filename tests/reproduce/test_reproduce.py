import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from repro_cases import TINY

from sharpminima.errors import ConfigError
from sharpminima.report import write_report
from sharpminima.report.doc import environment_rows, num
from sharpminima.reproduce import QUICK, get_preset, reproduce, resolve_experiments
from sharpminima.store import Store
from sharpminima.store.provenance import code_version


def _without_timing(obj):
    """Results minus wall-clock fields, which differ between two identical computations."""
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items()
                if k not in ("seconds",) and not k.endswith("_cost") and k != "cost"}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    store = Store(root / "store")
    t0 = time.perf_counter()
    results = reproduce(TINY, store=store, out=root / "out")
    return root, store, results, time.perf_counter() - t0


def test_every_quick_experiment_produces_its_section(done):
    _, store, results, _ = done
    assert set(results["experiments"]) == set(QUICK.experiments)
    assert len(store.list_runs()) == 4  # two trials of SB and of LB, nothing else


def test_table2_has_both_regimes_over_the_trials(done):
    t2 = done[2]["experiments"]["table2"]["f1"]
    assert t2["sb"]["test_acc"]["n"] == 2 and t2["lb"]["batch_size"] == 200  # 10% of 2000


def test_sharpness_table_covers_subspaces_eps_and_bn_modes(done):
    rows = done[2]["experiments"]["sharpness"]["f1"]
    assert len(rows) == 2 * 2 * 2  # subspaces x eps x BN modes
    for r in rows:
        assert r["sb"]["n"] == 2 and all(v >= 0 for v in r["sb"]["values"] + r["lb"]["values"])


def test_parametric_plots_span_the_paper_grid(done):
    fig3 = done[2]["experiments"]["fig3"]["f1"]
    assert set(fig3) == {"linear", "curvilinear"}
    lin = fig3["linear"]
    assert len(lin["alphas"]) == 7 and lin["alphas"][0] == -1.0 and lin["alphas"][-1] == 2.0


def test_distance_hessian_and_stopping_sections(done):
    ex = done[2]["experiments"]
    assert ex["distance"]["f1"]["ratio"]["n"] == 2
    assert ex["hessian"]["f1"]["sb"]["top_eigenvalue"] is not None
    assert any(r["rule"].startswith("plateau") for r in ex["stopping"]["f1"])


def test_parametric_plot_runs_from_sb_at_alpha0_to_lb_at_alpha1(done):
    from sharpminima.landscape.objective import ModelObjective, flatten_params
    from sharpminima.train.checkpointing import load_run

    root, store, results, _ = done
    t2 = results["experiments"]["table2"]["f1"]
    for path in ("linear", "curvilinear"):
        res = results["experiments"]["fig3"]["f1"][path]
        for regime, alpha in (("sb", 0.0), ("lb", 1.0)):
            run, data = load_run(store, t2[regime]["runs"][0])
            obj = ModelObjective(
                run.model, data.x_train[: TINY.interp_samples], data.y_train[: TINY.interp_samples],
                bn_mode="batch", chunk_size=TINY.chunk_size,
            )
            want = float(obj(flatten_params(run.model)))
            got = res["train_loss"][res["alphas"].index(alpha)]
            assert got == pytest.approx(want, rel=1e-5), (path, regime)


def test_bn_test_evaluates_the_final_weights_as_stated(done):
    import torch

    root, store, results, _ = done
    ex = results["experiments"]
    rows = ex["bn_test"]["f1"]
    # eval mode, chunks of 256 (SB), 1000, LB batch (200 here: 10% of 2000), own batch
    assert [r["sb_how"]["chunk_size"] for r in rows] == [1000, 200, 256, 1000, 256]
    assert [r["lb_how"]["chunk_size"] for r in rows] == [1000, 200, 256, 1000, 200]
    assert rows[0]["sb_how"]["bn_mode"] == "eval" and all(r["lb_how"]["bn_mode"] == "batch" for r in rows[1:])
    # Eval mode is Table 2's test accuracy.
    t2 = ex["table2"]["f1"]
    for regime in ("sb", "lb"):
        assert rows[0][regime]["mean"] == pytest.approx(t2[regime]["test_acc"]["mean"], abs=1e-6)
    # Batch statistics, recomputed by hand for one LB run: chunks of 200 in training-mode BN.
    from sharpminima.train.checkpointing import load_run

    run, data = load_run(store, t2["lb"]["runs"][0])
    model = run.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    correct = 0
    with torch.no_grad():
        for xb, yb in zip(data.x_test.split(200), data.y_test.split(200), strict=True):
            # functional batch statistics without touching the running buffers
            out = torch.func.functional_call(model, {k: v.clone() for k, v in before.items()}, (xb,))
            correct += int((out.argmax(1) == yb).sum())
    assert rows[1]["lb"]["values"][0] == pytest.approx(100.0 * correct / len(data.y_test), abs=1e-9)
    gap = rows[-1]["gap"]
    assert gap["mean"] == pytest.approx(rows[-1]["sb"]["mean"] - rows[-1]["lb"]["mean"])


def test_report_has_tables_figures_and_settings(done):
    root, _, results, _ = done
    md, page = write_report(root / "out", results)
    text = md.read_text()
    for heading in ("Did the paper's claims hold?", "Table 2", "Tables 3 and 4", "Figure 2",
                    "Figures 3 and 7", "Distance from the initial weights", "Hessian view",
                    "stopping rule", "BatchNorm at test time", "Settings the paper leaves open",
                    "Machine, versions"):
        assert heading in text, heading
    assert "205.14" in text  # the paper's F1 LB sharpness beside ours
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 5 and "<table>" in html
    assert (root / "out" / "fig3_f1.png").stat().st_size > 5000


def test_rerun_redoes_nothing(done):
    root, store, results, first_seconds = done
    n_meas = len(store.measurements())
    t0 = time.perf_counter()
    first = results["environment"]["measurements_last_call"]
    again = reproduce(TINY, store=store, out=root / "out")
    assert len(store.measurements()) == n_meas and len(store.list_runs()) == 4
    assert again["experiments"] == results["experiments"]
    # the folder says that its numbers were read from the store, and which commit trained the runs
    assert first == {"computed": n_meas, "read_from_store": 0}  # a fresh store: nothing was read
    assert again["environment"]["measurements_last_call"] == {"computed": 0, "read_from_store": n_meas}
    assert again["environment"]["runs_trained_by"] == {code_version(): 4}
    rows = dict(environment_rows(again["environment"]))
    assert rows["runs trained by (commit)"] == f"{code_version()} (4 runs)"
    assert rows["measurements in the last call"].startswith("0 computed, ")
    assert time.perf_counter() - t0 < first_seconds / 2


def test_killed_reproduction_finishes_the_same(done, tmp_path):
    root, _, results, _ = done
    store_dir, out = tmp_path / "store", tmp_path / "out"
    worker = Path(__file__).with_name("_reproduce_worker.py")
    proc = subprocess.Popen([sys.executable, str(worker), str(store_dir), str(out)])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill once some work is stored, mid-way
        if (store_dir / "store.sqlite").exists() and Store(store_dir).list_runs(status="done"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(store_dir)
    finished_before = {r.id for r in store.list_runs(status="done")}
    assert finished_before, "the worker was killed before any run finished"
    again = reproduce(TINY, store=store, out=out)
    assert _without_timing(again["experiments"]) == _without_timing(results["experiments"])
    after = {r.id: r for r in store.list_runs()}
    for run_id in finished_before:  # finished runs were not trained again
        assert after[run_id].status == "done"
    # bit-reproducible: same seeds, machine and versions give the same weights in both stores
    from sharpminima.landscape.objective import flatten_params
    from sharpminima.train.checkpointing import load_run

    first = done[1]
    for run_id in after:
        a, _ = load_run(first, run_id)
        b, _ = load_run(store, run_id)
        assert torch.equal(flatten_params(a.model), flatten_params(b.model))


def test_single_experiment_and_aliases(tmp_path):
    assert resolve_experiments(TINY, ["table3", "table4", "fig7"]) == ["sharpness", "fig3"]
    with pytest.raises(ConfigError, match="unknown experiment 'fig9'"):
        resolve_experiments(TINY, ["fig9"])
    res = reproduce(dataclasses.replace(TINY, trials=1), store=Store(tmp_path / "s"),
                    out=tmp_path / "o", experiments=["table2"])
    assert list(res["experiments"]) == ["table2"]
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["experiments"]["table2"]["f1"]["sb"]["test_acc"]["n"] == 1


def test_preset_errors():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="unknown preset fields"):
        get_preset("quick", colour="red")


def test_paper_only_experiments_run_and_report(tmp_path):
    preset = dataclasses.replace(
        TINY, trials=1, batch_sizes=(50, 200, 5000), sweep_epochs=1, warm_sb_epochs=2,
        warm_points=(0, 2), warm_lb_epochs=1, along_training=1, subspaces=("full",), eps=(1e-3,),
        bn_modes=("batch",), experiments=("fig4", "fig5", "fig6"),
    )
    res = reproduce(preset, store=Store(tmp_path / "s"), out=tmp_path / "o")
    ex = res["experiments"]
    assert [r["batch_size"] for r in ex["fig4"]["f1"]] == [50, 200]  # 5000 > 2000 samples: skipped
    assert all(r["sharpness"] >= 0 for r in ex["fig4"]["f1"])
    assert [r["sb_epochs"] for r in ex["fig5"]["f1"]["rows"]] == [0, 2]
    fig6 = ex["fig6"]["f1"]
    assert [p["epoch"] for p in fig6["sb"]] == [1, 2] and [p["epoch"] for p in fig6["lb"]] == [1, 2, 3]
    md, _ = write_report(tmp_path / "o", res)
    text = md.read_text()
    for heading in ("Figure 4", "Figure 5", "Figure 6"):
        assert heading in text
    along = text.split("## Figure 6")[1].split("![")[0]  # Figure 6's numbers, in a table
    assert "| regime | epoch | training loss | sharpness |" in along
    for regime in ("sb", "lb"):
        for p in fig6[regime]:
            row = f"| {regime.upper()} | {p['epoch']} | {num(p['train_loss'])} | {num(p['sharpness'])} |"
            assert row in along


def test_vectorised_trials_are_the_runs_a_sequential_reproduction_reuses(tmp_path):
    preset = dataclasses.replace(TINY, trials=3, experiments=("table2",))
    store = Store(tmp_path / "s")
    # An unrelated finished run in the same store must not count towards the training time.
    from sharpminima.config import TrainConfig
    from sharpminima.train import train

    other = train(TrainConfig(net="f1", dataset="synthetic", batch_size=100, epochs=1, seed=7), store=store)
    vec = reproduce(preset, store=store, out=tmp_path / "v", vectorize=True)
    runs = {r.id: r for r in store.list_runs()}
    assert len(runs) == 1 + 2 * 3
    t2 = vec["experiments"]["table2"]["f1"]
    used = t2["sb"]["runs"] + t2["lb"]["runs"]
    assert sorted(vec["run_seconds"]) == sorted(used) and other.id not in vec["run_seconds"]
    assert vec["train_seconds"] == pytest.approx(sum(runs[i].summary["seconds"] for i in used), rel=1e-3)
    # Each vectorised trial is the run its own config names: same hash, seed and epochs.
    for regime in ("sb", "lb"):
        configs = [TrainConfig.from_dict(runs[i].config) for i in t2[regime]["runs"]]
        assert sorted(c.seed for c in configs) == [0, 1, 2]
        assert all(runs[i].status == "done" for i in t2[regime]["runs"])
        assert all(runs[i].config_hash == c.hash() for i, c in zip(t2[regime]["runs"], configs, strict=True))
        assert t2[regime]["epochs"] == [configs[0].epochs] * 3
    # A sequential reproduction over the same store trains nothing and reports the same runs.
    seq = reproduce(preset, store=store, out=tmp_path / "q", vectorize=False)
    assert len(store.list_runs()) == len(runs)
    assert seq["experiments"]["table2"] == vec["experiments"]["table2"]


def test_the_cli_reuses_the_reproductions_measurement(done, capsys):
    from sharpminima.cli.app import main

    root, store, results, _ = done
    run_id = results["experiments"]["table2"]["f1"]["sb"]["runs"][0]
    before = len(store.measurements(run_id=run_id))
    with pytest.raises(SystemExit) as exc:
        main(["measure", run_id, "--what", "keskar_sharpness", "--num-samples", str(TINY.sharpness_samples),
              "--chunk-size", str(TINY.chunk_size), "--eps", "1e-3", "--max-iters", str(TINY.max_iters),
              "--bn", "both", "--store", str(root / "store"), "--json"])
    rows = json.loads(capsys.readouterr().out)["measurements"]
    assert exc.value.code == 0 and len(rows) == 2 and all(r["reused"] for r in rows)
    assert len(store.measurements(run_id=run_id)) == before
    sharp = results["experiments"]["sharpness"]["f1"]
    table = {(r["bn_mode"], r["eps"]): r for r in sharp if r["subspace"] == "full"}
    for row in rows:
        assert row["value"] == table[(row["settings"]["bn_mode"], 1e-3)]["sb"]["values"][0]


def test_headlines_carry_intervals_over_trials(done):
    from sharpminima import intervals

    ex = done[2]["experiments"]
    t2 = ex["table2"]["f1"]
    sb, lb = t2["sb"]["test_acc"], t2["lb"]["test_acc"]
    assert len(sb["values"]) == 2 and sb["ci"][0] <= sb["mean"] <= sb["ci"][1]
    assert t2["gap"] == intervals.difference(sb["values"], lb["values"])
    for row in ex["sharpness"]["f1"]:
        r = row["ratio"]
        assert r == intervals.ratio(row["sb"]["values"], row["lb"]["values"])
        assert r["ci"][0] <= r["value"] <= r["ci"][1]
        # one search record per trial, saying which path ran
        assert [s["run"] for s in row["sb"]["search"]] == row["sb"]["runs"]
        assert all(s["search"] in ("lbfgsb", "lbfgsb+restarts") for s in row["lb"]["search"])


def test_the_report_lists_per_trial_values_and_intervals(done):
    root, _, results, _ = done
    md, _ = write_report(root / "report-intervals", results)
    text = Path(md).read_text()
    assert "95% interval" in text and "Per trial" in text
    for v in results["experiments"]["sharpness"]["f1"][0]["sb"]["values"]:
        assert f"{v:.4g}" in text


def test_trials_start_at_the_presets_seed(tmp_path):
    from sharpminima.reproduce.common import trial_runs
    from sharpminima.reproduce.context import Context

    p = dataclasses.replace(TINY, seed=5, trials=2, sb_epochs=1, lb_epochs=1)
    ctx = Context(store=Store(tmp_path / "s"), preset=p, device=__import__("torch").device("cpu"))
    runs = trial_runs(ctx, "f1")
    assert [r.config.seed for r in runs["sb"]] == [5, 6]


def test_a_logged_reproduction_prints_stage_lines(done, capsys):
    from sharpminima.cli.app import main

    root, _, _, _ = done
    sets = [f"--set={k}={v}" for k, v in (
        ("dataset", "synthetic"), ("sb_epochs", 2), ("lb_epochs", 3), ("sharpness_samples", 300),
        ("hessian_samples", 300), ("trace_probes", 4), ("interp_points", 7), ("interp_samples", 300),
        ("max_iters", 3), ("chunk_size", 150), ("eps", "0.001,0.0005"))]
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "table2", "sharpness", "--trials", "2", *sets, "--store", str(root / "store"),
              "--out", str(root / "logged")])
    err = capsys.readouterr().err
    assert exc.value.code == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("reproduce quick:")]
    assert any("[1/2 table2]" in ln for ln in lines) and any("[2/2 sharpness]" in ln for ln in lines)
    assert all("% of the work" in ln and "elapsed" in ln for ln in lines[:-1])
    assert lines[-1].startswith("reproduce quick: done in")
