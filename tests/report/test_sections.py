"""Report text drawn from hand-made results dicts (no training)."""

from pathlib import Path

import pytest

from sharpminima.report.build import Doc, pm
from sharpminima.report.sections import _hessian, _verdict, build_document
from sharpminima.reproduce import get_preset


def test_pm_keeps_small_values_readable():
    assert pm({"mean": 98.268, "std": 0.175, "n": 5}) == "98.27 ± 0.17 (n=5)"
    assert pm({"mean": 0.005074911, "std": 0.0025250, "n": 5}) == "0.00507 ± 0.0025 (n=5)"
    assert pm({"mean": 0.0, "std": 0.0, "n": 2}) == "0.00 ± 0.00 (n=2)"
    assert pm({"mean": None, "std": None, "n": 0}) == "-"


def _text(doc: Doc) -> str:
    return doc.markdown()


def _hessian_results(sb_eig, lb_eig, sb_tr, lb_tr):
    row = {"bn_mode": "batch", "samples": 100, "sharpness": 1.0, "sharpness_eps": 1e-3, "trace_stderr": 0.1}
    return {
        "f1": {
            "sb": row | {"top_eigenvalue": sb_eig, "trace": sb_tr},
            "lb": row | {"top_eigenvalue": lb_eig, "trace": lb_tr},
        }
    }


@pytest.mark.parametrize(
    ("lb_eig", "lb_tr", "held"), [(0.1647, 3.782, "| no |"), (3.3, 39.2, "| yes |"), (3.3, 3.0, "| partly |")]
)
def test_verdict_says_whether_the_hessian_agrees(tmp_path: Path, lb_eig, lb_tr, held):
    doc = Doc(tmp_path)
    _verdict(doc, {"experiments": {"hessian": _hessian_results(0.228, lb_eig, 4.805, lb_tr)}})
    md = _text(doc)
    line = next(x for x in md.splitlines() if "the Hessian agrees" in x)
    assert f"top eigenvalue {lb_eig / 0.228:.2f}x" in line and held in line


def test_hessian_section_explains_why_measures_can_disagree(tmp_path: Path):
    doc = Doc(tmp_path)
    _hessian(doc, _hessian_results(0.228, 0.1647, 4.805, 3.782))
    assert "higher-order growth" in _text(doc)


def test_notes_are_printed_before_the_verdict(tmp_path: Path):
    doc = Doc(tmp_path)
    res = {
        "preset": get_preset("quick").to_dict(),
        "notes": ["Figure 3 was corrected after the run."],
        "experiments": {},
    }
    build_document(doc, res)
    md = _text(doc)
    assert md.index("Figure 3 was corrected") < md.index("Did the paper's claims hold?")


def _verdict_lines(tmp_path: Path, experiments: dict) -> list[str]:
    doc = Doc(tmp_path)
    _verdict(doc, {"experiments": experiments})
    return [x for x in _text(doc).splitlines() if x.startswith("| F1")]


def test_figure_verdicts_follow_the_numbers(tmp_path: Path):
    rising = [{"batch_size": b, "sharpness": s} for b, s in ((256, 1.0), (1000, 70.0), (6000, 250.0))]
    falling = [dict(r, sharpness=1000.0 / r["sharpness"]) for r in rising]
    warm = [{"sb_epochs": 0, "sharpness": 250.0}, {"sb_epochs": 20, "sharpness": 0.02}]
    along = {"sb": [{"sharpness": 4.0}, {"sharpness": 0.4}],
             "lb": [{"sharpness": 170.0}, {"sharpness": 400.0}]}
    yes = _verdict_lines(tmp_path, {"fig4": {"f1": rising}, "fig5": {"f1": {"rows": warm}},
                                    "fig6": {"f1": along}})
    assert len(yes) == 3 and all(line.endswith("| yes |") for line in yes)
    assert "Spearman rho = +1.00 over 3 batch sizes" in yes[0]
    no = _verdict_lines(tmp_path, {
        "fig4": {"f1": falling},
        "fig5": {"f1": {"rows": [warm[0], dict(warm[1], sharpness=300.0)]}},
        "fig6": {"f1": {"sb": along["lb"], "lb": along["sb"]}},
    })
    assert len(no) == 3 and all(line.endswith("| no |") for line in no)


def _sharpness_row(sb_values, lb_values):
    from sharpminima.reproduce.common import ratio, stats

    sb, lb = stats(sb_values), stats(lb_values)
    return {"subspace": "full", "eps": 1e-3, "bn_mode": "batch", "sb": sb, "lb": lb, "ratio": ratio(sb, lb)}


@pytest.mark.parametrize(
    ("sb", "lb", "held"),
    [
        ([10.0, 12.0, 11.0], [300.0, 320.0, 290.0], "| yes |"),  # interval well above 10x
        ([10.0, 12.0, 11.0], [30.0, 33.0, 31.0], "| partly (sharper, but < 10x) |"),
        ([5.0, 30.0, 12.0], [150.0, 120.0, 100.0], "whether by >= 10x is not settled"),
        ([10.0, 40.0, 12.0], [15.0, 8.0, 30.0], "not settled: the 95% interval includes 1"),
        ([100.0, 120.0, 110.0], [10.0, 12.0, 11.0], "| no (SB sharper) |"),
    ],
)
def test_the_sharpness_verdict_reads_the_interval_not_the_point(tmp_path: Path, sb, lb, held):
    (line,) = [x for x in _verdict_lines(tmp_path, {"sharpness": {"f1": [_sharpness_row(sb, lb)]}})
               if "sharper" in x.split("|")[1]]
    assert held in line and "x [" in line  # the ratio and its interval


def _table2_row(sb_test, lb_test, sb_train=(99.0, 99.2, 99.1), lb_train=(99.0, 99.1, 99.2)):
    from sharpminima.reproduce.common import gap, stats

    sb = {"test_acc": stats(list(sb_test)), "train_acc": stats(list(sb_train))}
    lb = {"test_acc": stats(list(lb_test)), "train_acc": stats(list(lb_train))}
    return {"sb": sb, "lb": lb, "gap": gap(sb["test_acc"], lb["test_acc"])}


@pytest.mark.parametrize(
    ("sb", "lb", "held"),
    [
        ((98.0, 98.1, 98.2), (97.0, 97.1, 97.2), "| yes |"),
        ((97.0, 97.1, 97.2), (98.0, 98.1, 98.2), "| no (LB tested better) |"),
        ((98.0, 97.0, 98.5), (97.8, 98.1, 97.5), "not settled"),
    ],
)
def test_the_gap_verdict_reads_welchs_interval(tmp_path: Path, sb, lb, held):
    lines = _verdict_lines(tmp_path, {"table2": {"f1": _table2_row(sb, lb)}})
    line = next(x for x in lines if "LB tests worse" in x)
    assert held in line and "95% interval" in line and "3+3 trials" in line
