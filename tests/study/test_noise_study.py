import inspect
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _noise_worker import NOISY, TINY
from matplotlib.container import ErrorbarContainer

from sharpminima.cli.app import main
from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import FunctionObjective
from sharpminima.store import Store
from sharpminima.store.provenance import code_version
from sharpminima.study import noise as noise_study
from sharpminima.study import noise_figures
from sharpminima.study.noise import get_noise_preset, run_noise_study
from sharpminima.study.noise_report import write_noise_report
from sharpminima.study.tradeoff import (
    bootstrap_tradeoff,
    fit_tradeoff,
    preconditioned_sharpness,
    stability_threshold,
    steps_to_target,
)
from sharpminima.train import make_step, train
from sharpminima.train.noise_methods import anisotropic_noise, isotropic_noise, noise_coefficient
from sm_testing import check_figure, make_tiny, small_mlp

WORKER = Path(__file__).with_name("_noise_worker.py")


def _run_worker(store_dir, mode, at):
    return subprocess.run(
        [sys.executable, str(WORKER), str(store_dir), mode, str(at)],
        capture_output=True,
        text=True,
        timeout=300,
    )


# ----------------------------------------------------------------------------- noise injection
@pytest.fixture(scope="module", autouse=True)
def _one_thread_measures():
    """Tiny models: one torch thread (the study's runs use the preset's ``num_threads=1``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Thousands of tiny autograd calls: one thread avoids pool hand-offs (much faster on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(3, 2).double()
    x = torch.randn(batch, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (batch,), generator=g)
    return model, x, y


def _per_example_grads(model, x, y):
    rows = []
    for i in range(len(x)):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows)  # (B, P)


def _draws(fn, model, x, y, c, num):
    torch.manual_seed(0)
    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    params = list(model.parameters())
    return torch.stack([torch.cat([t.reshape(-1) for t in fn(losses, params, c)]) for _ in range(num)])


def test_anisotropic_noise_has_the_small_batch_covariance(one_thread):
    model, x, y = _problem()
    big, small = 8, 2
    c = noise_coefficient(big, small)
    g = _per_example_grads(model, x, y)
    dev = g - g.mean(0)
    sample_cov = dev.T @ dev / (big - 1)  # S_B, unbiased
    expected = (1 / small - 1 / big) * sample_cov  # the stated covariance
    assert torch.allclose(c**2 / big**2 * dev.T @ dev, expected)
    n = _draws(anisotropic_noise, model, x, y, c, 2000)
    assert n.mean(0).abs().max() < 4 * n.std(0).max() / math.sqrt(2000)  # mean zero
    cov = torch.cov(n.T)
    assert torch.trace(cov) == pytest.approx(float(torch.trace(expected)), rel=0.1)
    assert torch.linalg.norm(cov - expected) / torch.linalg.norm(expected) < 0.15


def test_isotropic_noise_has_the_same_trace_and_no_structure(one_thread):
    model, x, y = _problem()
    c = noise_coefficient(8, 2)
    g = _per_example_grads(model, x, y)
    dev = g - g.mean(0)
    trace = float(torch.trace((1 / 2 - 1 / 8) * dev.T @ dev / 7))
    n = _draws(isotropic_noise, model, x, y, c, 2000)
    cov = torch.cov(n.T)
    assert torch.trace(cov) == pytest.approx(trace, rel=0.1)
    num_params = n.shape[1]
    assert torch.linalg.norm(cov - trace / num_params * torch.eye(num_params)) < 0.15 * trace


def test_noise_method_is_unbiased_and_off_for_small_batches(one_thread):
    data = make_tiny()
    xb, yb = data.x_train[:40].flatten(1), data.y_train[:40]

    def update(config, seed):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 4))
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        torch.manual_seed(seed)
        make_step(config)(model, opt, xb, yb)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before

    plain = update(TrainConfig(optimizer="sgd"), 0)
    noisy = TrainConfig(optimizer="sgd", method="batch_noise", method_args=(("noise_batch_size", 4),))
    mean = torch.stack([update(noisy, s) for s in range(150)]).mean(0)
    assert torch.linalg.norm(mean - plain) < 0.2 * torch.linalg.norm(plain)
    off = TrainConfig(optimizer="sgd", method="batch_noise", method_args=(("noise_batch_size", 40),))
    assert torch.allclose(update(off, 1), plain)
    with pytest.raises(ConfigError, match="option 'structure' must be one of"):
        make_step(noisy.replace(method_args=(("structure", "pink"),)))
    with pytest.raises(ConfigError, match="needs per-example cross-entropy"):
        make_step(noisy.replace(loss="mse"))


def test_killed_noisy_run_resumes_bit_identical(tmp_path):
    reference = train(NOISY, dataset=make_tiny(), store=Store(tmp_path / "ref"), model_factory=small_mlp)
    proc = _run_worker(tmp_path / "killed", "train", 8)  # 6 steps per epoch: mid-epoch 2
    assert proc.returncode == -9, proc.stderr
    resumed = train(NOISY, dataset=make_tiny(), store=Store(tmp_path / "killed"), model_factory=small_mlp)
    assert resumed.status == "done"
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- trade-off and stability
def test_tradeoff_fit_recovers_known_s_min_and_e_min():
    sizes = [16, 32, 64, 128, 256, 1024, 4096]
    g = torch.Generator().manual_seed(0)
    steps = [(100 + 6400 / b) * (1 + 0.02 * float(torch.randn(1, generator=g))) for b in sizes]
    fit = bootstrap_tradeoff(sizes, steps, num_bootstrap=200)
    assert fit["s_min"] == pytest.approx(100, rel=0.05)
    assert fit["e_min"] == pytest.approx(6400, rel=0.05)
    assert fit["ci"][0] < 64 < fit["ci"][1] and fit["b_crit"] == pytest.approx(64, rel=0.1)
    exact = fit_tradeoff(sizes, [100 + 6400 / b for b in sizes])
    assert exact["b_crit"] == pytest.approx(64) and exact["rel_rmse"] < 1e-9
    with pytest.raises(ConfigError, match="two or more different batch sizes"):
        fit_tradeoff([64, 64], [10, 11])
    with pytest.raises(ConfigError, match="positive batch sizes and step counts"):
        fit_tradeoff([32, 64], [0, 11])


def test_steps_to_target_interpolates_and_says_never():
    assert steps_to_target([2.0, 1.0, 0.5], 10, 0.5) == 30
    assert steps_to_target([2.0, 1.0, 0.25], 10, 0.5) == pytest.approx(25)  # halfway in log
    assert steps_to_target([2.0, 1.0], 10, 0.1) is None
    assert steps_to_target([0.2], 10, 1.0, initial_loss=None) == 10


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_on_a_quadratic_diverges_just_above_the_threshold(momentum):
    curvature = 4.0

    def final(lr):
        x = torch.ones(1, requires_grad=True)
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
        for _ in range(1500):
            opt.zero_grad()
            (0.5 * curvature * x**2).sum().backward()
            opt.step()
        return abs(float(x.detach()))

    for lr in (0.01, 0.1, 0.4):
        assert stability_threshold("sgd", lr, momentum=momentum) == pytest.approx(2 * (1 + momentum) / lr)
    lr_edge = 2 * (1 + momentum) / curvature  # the lr at which the curvature meets the threshold
    assert stability_threshold("sgd", lr_edge, momentum=momentum) == pytest.approx(curvature)
    above = final(1.01 * lr_edge)
    assert final(0.99 * lr_edge) < 1.0 and (math.isnan(above) or above > 1e3)


def test_adam_threshold_and_preconditioned_sharpness_match_the_closed_form():
    assert stability_threshold("adam", 1e-3, beta1=0.9) == pytest.approx(3.8 / (0.1 * 1e-3))
    a = torch.diag(torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64))
    a[0, 1] = a[1, 0] = 0.5
    precond = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)
    x = torch.zeros(3, dtype=torch.float64)
    obj = FunctionObjective(lambda v: 0.5 * v @ a @ v, x)
    res = preconditioned_sharpness(obj, x, precond, tol=1e-10, max_iters=3)
    exact = float(torch.linalg.eigvals(torch.diag(1 / precond) @ a).real.max())
    assert res["value"] == pytest.approx(exact, rel=1e-8)
    with pytest.raises(ConfigError, match="no stability threshold for optimizer 'lion'"):
        stability_threshold("lion", 1e-3)
    with pytest.raises(ConfigError, match="positive learning rate"):
        stability_threshold("sgd", 0.0)


# ----------------------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Kill the study mid-way (kill -9), then rerun it here, recording what trains."""
    root = tmp_path_factory.mktemp("noise")
    proc = _run_worker(root / "store", "study", 5)
    assert proc.returncode == -9, proc.stderr
    store = Store(root / "store")
    before = {r.id: r for r in store.list_runs()}
    done = {i for i, r in before.items() if r.status == "done"}
    trained = []
    mp = pytest.MonkeyPatch()
    import sharpminima.train.loop as loop

    real = loop.run_epochs

    def recording(trials, *args, **kwargs):
        trained.extend(t.files.run_id for t in trials)
        return real(trials, *args, **kwargs)

    mp.setattr(loop, "run_epochs", recording)
    try:
        res = run_noise_study(TINY, store=store, dataset=make_tiny(), model_factory=small_mlp)
    finally:
        mp.undo()
    return root, store, res, done, trained


def test_study_resumes_after_kill_without_retraining_finished_runs(resumed):
    _, store, res, done, trained = resumed
    assert len(done) >= 3  # the kill came after some runs had finished
    assert not done & set(trained)
    assert all(r.status == "done" for r in store.list_runs())
    assert {r["batch_size"] for r in res["critical"]["runs"]} == {25, 100, 300}
    env = res["environment"]  # every run of the store is the study's, trained by this code
    assert env["runs_trained_by"] == {code_version(): len(store.list_runs())}
    counted = env["measurements_last_call"]
    assert counted["computed"] + counted["read_from_store"] > 0
    assert counted["computed"] <= len(store.measurements())


def test_study_has_every_section_and_reports_bad_input(resumed):
    root, _, res, _, _ = resumed
    assert res["skipped_batch_sizes"] == [1000]
    assert any("exceed the 300 training samples" in w for w in res["warnings"])
    for key in noise_study.SECTIONS:
        assert key in res
    fit = res["critical"]["fit"]
    assert fit is None or fit["s_min"] >= 0
    assert len(res["structure"]["rows"]) == 4 and res["structure"]["alignment"]
    assert [len(r["points"]) >= 2 for r in res["escape"]["runs"]] == [True, True]
    assert res["stability"]["sgd"][0]["threshold"] == pytest.approx(2 * 1.9 / 0.025)
    md, page = write_noise_report(root / "out", res, ("png",))
    text = md.read_text()
    assert "exceed the 300 training samples" in text and "## 6. What it means" in text
    assert (root / "out" / "noise_critical.png").exists() and page.exists()


#: Each figure of the noise study and the section of the results it draws.
NOISE_FIGURES = {
    "critical_figure": "critical",
    "temperature_figure": "temperature",
    "structure_figure": "structure",
    "escape_figure": "escape",
    "stability_figure": "stability",
}


@pytest.mark.parametrize(("name", "section"), NOISE_FIGURES.items())
def test_noise_figures_are_labelled_for_a_paper(resumed, name, section):
    """The study's own results, walked as the reports' figures are (``sm_testing.check_figure``)."""
    _, _, res, _, _ = resumed
    check_figure(getattr(noise_figures, name)(res[section]))


def test_every_noise_figure_is_walked():
    built = {name for name, func in inspect.getmembers(noise_figures, inspect.isfunction)
             if func.__module__ == noise_figures.__name__ and not name.startswith("_")}
    assert built == set(NOISE_FIGURES)


def test_noise_figures_draw_points_not_bars_and_sharpness_on_a_log_axis(resumed):
    _, _, res, _, _ = resumed
    structure = noise_figures.structure_figure(res["structure"])
    assert not any(ax.containers for ax in structure.axes)  # no bars: an accuracy axis has no zero
    temperature = noise_figures.temperature_figure(res["temperature"])
    sharp = next(ax for ax in temperature.axes if "sharpness" in ax.get_ylabel())
    assert sharp.get_yscale() == "log"
    runs = {}  # x -> the runs' sharpness drawn there
    for points in sharp.collections:
        for x, y in np.asarray(points.get_offsets()):
            runs.setdefault(round(float(x), 12), []).append(float(y))
    bars = [c for c in sharp.containers if isinstance(c, ErrorbarContainer)]
    assert bars
    for bar in bars:
        (x,), (centre,) = bar.lines[0].get_data()
        values = runs[round(float(x), 12)]
        assert centre == pytest.approx(math.exp(np.mean(np.log(values))))  # the geometric mean
        if len(values) > 1:
            (low, high), = [seg[:, 1] for seg in bar.lines[2][0].get_segments()]
            assert low > 0 and low * high == pytest.approx(centre**2)  # symmetric in log space


def test_target_never_reached_is_reported_not_raised(resumed, monkeypatch):
    root, store, _, _, _ = resumed
    res = run_noise_study(
        TINY.replace(loss_target=1e-9), store=store, dataset=make_tiny(), model_factory=small_mlp
    )
    crit = res["critical"]
    assert crit["fit"] is None and sorted(crit["not_reached"]) == [25, 100, 300]
    check_figure(noise_figures.critical_figure(crit))
    assert any("never reached training loss" in w for w in res["warnings"])
    md, _ = write_noise_report(root / "never", res, ("png",))
    assert "Cannot say" in md.read_text()


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "huge"], "unknown noise-study preset 'huge'"),
        (["--lb", "100000"], "the large batch 100000 exceeds the 300 training samples"),
        (["--batch-sizes", "32,x"], "--batch-sizes must be comma-separated integers"),
        (["--lrs", "-1"], "--lrs must be positive numbers"),
    ],
)
def test_cli_errors_are_one_line(capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.setitem(noise_study.PRESETS, "quick", TINY.replace(net="f1", dataset="synthetic"))
    code, _, err = _cli(capsys, "study", "noise", "--store", str(tmp_path), *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_cli_reports_bad_input_and_finishes(capsys, tmp_path, monkeypatch):
    small = TINY.replace(net="_noise_worker:tiny_net", dataset="synthetic", temp_batch_sizes=(25,))
    monkeypatch.setitem(noise_study.PRESETS, "quick", small)
    out = tmp_path / "out"
    args = ["study", "noise", "--store", str(tmp_path / "store"), "--out", str(out), "--figure-format", "png"]
    code, stdout, err = _cli(capsys, *args, "--batch-sizes", "25,100000", "--loss-target", "1e-9")
    assert code == 0, err
    assert "warning: batch size(s) [100000] exceed the 300 training samples" in stdout
    assert "warning: batch size(s) [25] never reached training loss 1e-09" in stdout
    assert "B_crit: cannot say" in stdout and (out / "study.html").exists()
    assert "never reached training loss" in (out / "study.md").read_text()
    code, stdout, _ = _cli(capsys, "study", "report", "--out", str(out), "--figure-format", "png")
    assert code == 0 and "study.html" in stdout


def test_get_noise_preset_rejects_bad_values():
    with pytest.raises(ConfigError, match="must be smaller than the large batch"):
        get_noise_preset("quick", sb=512, lb=256)
    with pytest.raises(ConfigError, match="loss target must be positive"):
        get_noise_preset("quick", loss_target=-1.0)
    with pytest.raises(ConfigError, match="needs a run store"):
        run_noise_study(TINY, store=None, dataset=make_tiny(), model_factory=small_mlp)
