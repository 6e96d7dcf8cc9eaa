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
