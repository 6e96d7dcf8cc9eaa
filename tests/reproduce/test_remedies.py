"""The remedies experiments end to end on a tiny synthetic problem, and their report."""

import pytest

from sharpminima.errors import ConfigError
from sharpminima.report import write_report
from sharpminima.report.remedies_report import gap_opens
from sharpminima.reproduce import get_preset, reproduce
from sharpminima.reproduce.presets import ALL_REMEDIES
from sharpminima.reproduce.remedies import REMEDIES, get_remedy
from sharpminima.store import Store

NAMES = ("warm-start", "sam", "batch-exp", "augment", "conservative")

TINY = get_preset(
    "remedies", dataset="synthetic", trials=1, sb_epochs=2, lb_epochs=3, sharpness_samples=100,
    max_iters=2, chunk_size=100, eps=(1e-3,), train_limit=600, remedies=NAMES, warm_epochs=1,
    lambda_sweep=(1e-3,), inner_iters_sweep=(1, 3), inits=(("default", 1.0), ("orthogonal", 0.5)),
    dynamics_every=2, dynamics_samples=100, noise_examples=50, dynamics_optimizers=(("sgd", 0.05),),
)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("remedies")
    store = Store(root / "store")
    results = reproduce(TINY, store=store, out=root / "out")
    return root, store, results


def test_every_preset_remedy_is_registered():
    assert set(ALL_REMEDIES) <= set(REMEDIES)
    with pytest.raises(ConfigError, match="unknown remedy 'nope'"):
        get_remedy("nope")


def test_remedies_table_has_sb_lb_and_each_method(done):
    _, store, results = done
    rows = results["experiments"]["remedies"]["f1"]
    names = [(r["name"], r["regime"]) for r in rows]
    assert names[:2] == [("sb", "sb"), ("lb", "lb")]
    for name in NAMES:
        assert (name, "lb") in names
        if REMEDIES[name].sb_too:
            assert (name, "sb") in names
    by = {(r["name"], r["regime"]): r for r in rows}
    for r in rows:
        assert r["test_acc"]["n"] == 1 and r["sharpness"]["n"] == 1 and r["sharpness"]["mean"] >= 0
    # The config each method ran with is what the remedy promises.
    runs = {rec.id: rec for rec in store.list_runs()}
    sam_cfg = runs[by[("sam", "lb")]["runs"][0]].config
    assert sam_cfg["method"] == "sam" and sam_cfg["batch_size"] == 60  # LB = 10% of 600
    grow = runs[by[("batch-exp", "lb")]["runs"][0]].config
    # Growth starts at min(256, LB); on this tiny set LB = 60 < 256, so the rate is 1.
    assert grow["batch_size"] == 60 and grow["batch_schedule"] == "exponential"
    assert dict(grow["batch_schedule_args"])["rate"] == 1.0
    warm = runs[by[("warm-start", "lb")]["runs"][0]].config
    assert warm["init_from"] and runs[warm["init_from"]].config["epochs"] == 1
    assert runs[by[("augment", "sb")]["runs"][0]].config["augment"] == "paper"


def test_sweeps_init_study_and_dynamics(done):
    _, _, results = done
    ex = results["experiments"]
    cs = ex["conservative_sweep"]["f1"]
    assert [(r["lambda"], r["inner_iters"]) for r in cs["rows"]] == [(1e-3, 1), (1e-3, 3)]
    # The paper's cell (1e-3, 3 inner steps) is the remedies table's conservative run itself.
    conservative = next(r for r in ex["remedies"]["f1"] if r["name"] == "conservative")
    assert cs["rows"][1]["runs"] == conservative["runs"] != cs["rows"][0]["runs"]
    init = ex["init_study"]["f1"]
    assert [(r["init"], r["scale"]) for r in init] == [("default", 1.0), ("orthogonal", 0.5)]
    # One set of runs per setting: the sweep's and the init study's baselines are the table's.
    base = {r["regime"]: r["runs"] for r in ex["remedies"]["f1"] if r["name"] in ("sb", "lb")}
    assert cs["sb"]["runs"] == init[0]["sb"]["runs"] == base["sb"]
    assert cs["lb"]["runs"] == init[0]["lb"]["runs"] == base["lb"]
    assert all(r["gap"] is not None for r in init)
    dyn = ex["dynamics"]["f1"]
    assert set(dyn) == {"sgd/sb", "sgd/lb"}
    lb = dyn["sgd/lb"]
    assert lb["stability_line"] == pytest.approx(2 * 1.9 / 0.05)
    assert [p["epoch"] for p in lb["points"]] == [1, 2, 3]
    for p in lb["points"]:
        assert p["top_eigenvalue"] > 0 and p["sharpness"] >= 0 and p["noise_scale"] == p["noise_scale"]


def test_report_sections(done):
    root, _, results = done
    md, page = write_report(root / "out", results)
    text = md.read_text()
    for heading in ("What closes the gap", "Conservative training", "Initialization study",
                    "Optimization dynamics"):
        assert heading in text, heading
    for name in ("remedies_f1", "conservative_f1", "dynamics_f1"):
        assert (root / "out" / f"{name}.png").stat().st_size > 5000


def test_rerun_trains_nothing(done):
    root, store, _ = done
    before = len(store.list_runs())
    n_meas = len(store.measurements())
    reproduce(TINY, store=store, out=root / "out")
    assert len(store.list_runs()) == before and len(store.measurements()) == n_meas


def test_gap_opens_finds_the_first_drop():
    pairs = ((256, 98.0), (1000, 97.8), (4000, 97.2), (8000, 90))
    rows = [{"batch_size": b, "test_acc": a} for b, a in pairs]
    assert gap_opens(rows) == 4000
    assert gap_opens(rows, tolerance=10) is None
    assert gap_opens(rows[:1]) is None


def test_batch_increase_remedy_reaches_the_lb_size():
    """Two equal growth factors at 1/2 and 3/4 of training end exactly at LB (no lr decay)."""
    from types import SimpleNamespace

    from sharpminima.config import TrainConfig
    from sharpminima.reproduce.presets import QUICK
    from sharpminima.train.schedules import EpochContext, make_schedule

    class Ctx(SimpleNamespace):
        def config(self, net, regime, seed, **changes):
            return TrainConfig(batch_size=6000 if regime == "lb" else 256, epochs=15).replace(**changes)

        def data(self, net):
            return SimpleNamespace(num_train=60_000)

    ctx = Ctx(preset=QUICK)
    cfg = ctx.config("f1", "lb", 0, **REMEDIES["batch-increase"].changes(ctx, "f1", 0))
    schedule = make_schedule(cfg, 60_000)
    plans = [schedule.plan(e, EpochContext(None, None, [])) for e in range(1, 16)]
    sizes = [p.batch_size for p in plans]
    assert sizes[0] == 256 and sizes[-1] == 6000 and sizes == sorted(sizes)
    assert len(set(sizes)) == 3
    assert all(schedule.lr(0, e, p) == pytest.approx(cfg.lr) for e, p in enumerate(plans, 1))
