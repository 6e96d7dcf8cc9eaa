"""Report text drawn from hand-made results dicts (no training)."""

from pathlib import Path

import pytest

from sharpminima.report.build import Doc, pm
from sharpminima.report.sections import _hessian, _verdict, build_document
from sharpminima.reproduce import get_preset


def test_pm_keeps_small_values_readable():
    assert pm({"mean": 98.268, "std": 0.175, "n": 5}) == "98.27 ± 0.17"
    assert pm({"mean": 0.005074911, "std": 0.0025250, "n": 5}) == "0.00507 ± 0.00252"
    assert pm({"mean": 0.0, "std": 0.0, "n": 2}) == "0.00 ± 0.00"
    assert pm({"mean": None, "std": None, "n": 0}) == "-"


def test_one_trial_prints_no_spread():
    assert pm({"mean": 98.51, "std": 0.0, "n": 1}) == "98.51"
    assert pm({"mean": 51.019, "std": 0.0, "n": 1}, sig=3) == "51.0"


def test_sharpness_keeps_significant_figures_not_decimals():
    assert pm({"mean": 324.879, "std": 124.76, "n": 2}, sig=3) == "325 ± 125"
    assert pm({"mean": 16.558, "std": 8.764, "n": 2}, sig=3) == "16.6 ± 8.8"
    assert pm({"mean": 0.275, "std": 0.0312, "n": 2}, sig=3) == "0.275 ± 0.031"


def test_differences_are_signed_and_ratios_never_read_zero():
    from sharpminima.report.build import ratio_num, signed
    from sharpminima.report.sections import ratio_text

    assert [signed(-0.3717), signed(0.08), signed(-0.001), signed(None)] == ["-0.37", "+0.08", "+0.00", "-"]
    assert ratio_num(0.0123) == "0.0123x" and ratio_num(167.3) == "167x" and ratio_num(1.04) == "1.04x"
    assert ratio_text(0.04) == "0.0400x"
    assert ratio_text({"value": 0.0412, "ci": [0.01, 0.2]}) == "0.0412x [0.0100, 0.200]"


def test_tables_align_text_left_and_numbers_right(tmp_path: Path):
    doc = Doc(tmp_path)
    doc.table(["method", "regime", "test acc", "gap", "epochs", "note"],
              [["sb", "SB", "97.91 ± 0.08", "+0.00", "5, 5", "a long remark"],
               ["lb", "LB", "98.32", "-0.41", "15", "-"]])
    md = doc.markdown().splitlines()
    assert md[1] == "|:---|:---|---:|---:|---:|:---|"
    page = doc.html("t")
    assert "<td class='n'>97.91 ± 0.08</td>" in page and "<td class='s'>a long remark</td>" in page
    assert "<th class='n'>test acc</th>" in page and "<th class='s'>method</th>" in page
    assert ".n,.s{white-space:nowrap}" in page  # numbers and short text never wrap
    doc.table(["remark"], [["x" * 31], ["`" + "y" * 28 + "`"]])
    page = doc.html("t")
    assert "<td>" + "x" * 31 + "</td>" in page  # long text may wrap
    assert "<td class='s'><code>" + "y" * 28 + "</code></td>" in page  # 28 characters as shown


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


@pytest.mark.parametrize(("lb_eig", "lb_tr"), [(0.1647, 3.782), (3.3, 39.2), (3.3, 3.0)])
def test_the_hessian_claim_of_one_trial_cannot_say(tmp_path: Path, lb_eig, lb_tr):
    doc = Doc(tmp_path)
    _verdict(doc, {"experiments": {"hessian": _hessian_results(0.228, lb_eig, 4.805, lb_tr)}})
    md = _text(doc)
    line = next(x for x in md.splitlines() if "the Hessian agrees" in x)
    assert f"top eigenvalue {lb_eig / 0.228:.2f}x" in line and line.endswith("| cannot say |")


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
    warm = [{"sb_epochs": 0, "sharpness": 250.0}, {"sb_epochs": 20, "sharpness": 0.02}]
    along = {"sb": [{"sharpness": v} for v in (4.0, 0.4, 1.5, 2.0)],
             "lb": [{"sharpness": v} for v in (170.0, 400.0, 250.0, 300.0)]}
    few = _verdict_lines(tmp_path, {"fig4": {"f1": rising}, "fig5": {"f1": {"rows": warm}},
                                    "fig6": {"f1": along}})
    # Three batch sizes and two warm starts give no interval: the verdict cannot say.
    assert len(few) == 3 and all(line.endswith("| cannot say |") for line in few[:2])
    assert "Spearman rho = +1.00, no interval, over 3 batch sizes" in few[0]
    assert few[2].endswith("| held |")  # Figure 6: LB/SB ratio over epochs, interval above 1
    many = [{"batch_size": b, "sharpness": float(b), "test_acc": 99.0 - b / 1e4}
            for b in (256, 512, 1000, 2000, 4000, 6000, 10000, 20000)]
    warm_many = [{"sb_epochs": k, "sharpness": 250.0 / (k + 1), "test_acc": 98.0 + k / 100}
                 for k in (0, 1, 2, 5, 10, 20)]
    held = _verdict_lines(tmp_path, {"fig4": {"f1": many}, "fig5": {"f1": {"rows": warm_many}}})
    assert len(held) == 4 and all(line.endswith("| held |") for line in held)
    assert any("test accuracy falls as the batch size grows" in line for line in held)
    flipped = [dict(r, sharpness=1.0 / r["sharpness"], test_acc=90.0 + r["batch_size"] / 1e4) for r in many]
    failed = _verdict_lines(tmp_path, {"fig4": {"f1": flipped}, "fig6": {"f1": {"sb": along["lb"],
                                                                                "lb": along["sb"]}}})
    assert len(failed) == 3 and all(line.endswith("| did not hold |") for line in failed)


def _sharpness_row(sb_values, lb_values):
    from sharpminima.reproduce.common import ratio, stats

    sb, lb = stats(sb_values), stats(lb_values)
    return {"subspace": "full", "eps": 1e-3, "bn_mode": "batch", "sb": sb, "lb": lb, "ratio": ratio(sb, lb)}


@pytest.mark.parametrize(
    ("sb", "lb", "held"),
    [
        ([10.0, 12.0, 11.0], [300.0, 320.0, 290.0], ("held", "held")),  # interval well above 10x
        ([10.0, 12.0, 11.0], [30.0, 33.0, 31.0], ("held", "did not hold")),
        ([5.0, 30.0, 12.0], [150.0, 120.0, 100.0], ("held", "cannot say")),
        ([10.0, 40.0, 12.0], [15.0, 8.0, 30.0], ("cannot say", "did not hold")),
        ([100.0, 120.0, 110.0], [10.0, 12.0, 11.0], ("did not hold", "did not hold")),
        ([261.0, 255.0, 267.0], [270.0, 240.0, 300.0], ("cannot say", "did not hold")),  # 1.0x
    ],
)
def test_the_sharpness_verdict_reads_the_interval_not_the_point(tmp_path: Path, sb, lb, held):
    lines = _verdict_lines(tmp_path, {"sharpness": {"f1": [_sharpness_row(sb, lb)]}})
    assert len(lines) == 2 and all("x [" in line and "LB/SB = 167x" in line for line in lines)
    assert tuple(line.rsplit("|", 2)[1].strip() for line in lines) == held


def _table2_row(sb_test, lb_test, sb_train=(99.0, 99.2, 99.1), lb_train=(99.0, 99.1, 99.2)):
    from sharpminima.reproduce.common import gap, stats

    sb = {"test_acc": stats(list(sb_test)), "train_acc": stats(list(sb_train))}
    lb = {"test_acc": stats(list(lb_test)), "train_acc": stats(list(lb_train))}
    return {"sb": sb, "lb": lb, "gap": gap(sb["test_acc"], lb["test_acc"])}


@pytest.mark.parametrize(
    ("sb", "lb", "held"),
    [
        ((98.0, 98.1, 98.2), (97.0, 97.1, 97.2), "| held |"),
        ((97.0, 97.1, 97.2), (98.0, 98.1, 98.2), "| did not hold |"),
        ((98.0, 97.0, 98.5), (97.8, 98.1, 97.5), "| cannot say |"),
    ],
)
def test_the_gap_verdict_reads_welchs_interval(tmp_path: Path, sb, lb, held):
    lines = _verdict_lines(tmp_path, {"table2": {"f1": _table2_row(sb, lb)}})
    line = next(x for x in lines if "LB tests worse" in x)
    assert held in line and "95% interval" in line and "3+3 trials" in line


def test_the_report_cites_the_paper_by_arxiv_id_and_nothing_outside_the_repo(tmp_path: Path):
    doc = Doc(tmp_path)
    build_document(doc, {"preset": get_preset("quick").to_dict(), "experiments": {}})
    md = _text(doc)
    assert "arXiv:1609.04836" in md
    assert "PAPER.md" not in md and "Measured here" not in md


def _summary(values):
    from sharpminima.reproduce.common import stats

    return {"test_acc": stats(values), "train_loss": stats([0.01] * len(values)),
            "sharpness": stats([10.0 * v for v in values]), "seconds": stats([1.0] * len(values)),
            "epochs": [5] * len(values), "runs": [f"r{v}" for v in values], "not_done": []}


def test_one_report_shows_one_baseline_per_setting(tmp_path: Path):
    from sharpminima.report.remedies_report import conservative_section, init_section, remedies_section

    rem = {"f1": [{"name": "sb", "label": "SB (baseline)", "regime": "sb", **_summary([97.9, 98.0])},
                  {"name": "lb", "label": "LB (baseline)", "regime": "lb", **_summary([98.3, 98.4])},
                  {"name": "sam", "label": "SAM (rho 0.05)", "regime": "lb", "paper": "",
                   **_summary([98.2])}]}
    # Results written before the sweeps shared the baseline kept a first-trial copy of it.
    cs = {"f1": {"rows": [{"lambda": 1e-3, "inner_iters": 3, **_summary([98.5])}],
                 "sb": _summary([97.9]), "lb": _summary([98.3])}}
    init = {"f1": [{"init": "default", "scale": 1.0, "sb": _summary([97.9]), "lb": _summary([98.3]),
                    "gap": -0.4}]}
    doc = Doc(tmp_path)
    remedies_section(doc, rem)
    conservative_section(doc, cs, rem)
    init_section(doc, init, rem)
    md = _text(doc)
    assert md.count("97.95 ± 0.07") == 3 and md.count("98.35 ± 0.07") == 3  # table, sweep, init
    assert "97.90 |" not in md
    tables = [line for line in md.splitlines() if line.startswith("|:") or line.startswith("|-")]
    assert max(line.count("|") - 1 for line in tables) <= 8  # no ten-column table


def test_the_claims_table_lists_the_papers_findings_about_methods(tmp_path: Path):
    sb = {"name": "sb", "label": "SB", "regime": "sb", **_summary([97.9, 98.0, 97.95])}
    lb = {"name": "lb", "label": "LB", "regime": "lb", **_summary([98.3, 98.4, 98.35])}
    sharp_sb = dict(sb, sharpness=sb["sharpness"] | {"values": [10.0, 12.0, 11.0]})
    conservative = {"name": "conservative", "label": "conservative", "regime": "lb",
                    "paper": "minima stay sharp", **_summary([98.2, 98.3, 98.25])}
    conservative["sharpness"] = conservative["sharpness"] | {"values": [300.0, 320.0, 310.0]}
    once = {"name": "adversarial", "label": "FGSM", "regime": "lb", "paper": "no gain", **_summary([98.6])}
    lines = _verdict_lines(tmp_path, {"remedies": {"f1": [sharp_sb, lb, conservative, once]}})
    assert any("conservative LB minima stay sharper than SB's" in x and x.endswith("| held |") for x in lines)
    assert any("adversarial gives no gain" in x and "1 trial: no interval" in x
               and x.endswith("| cannot say |") for x in lines)


def test_environment_rows_format_provenance_and_show_odd_values_as_they_are():
    from sharpminima.report.doc import environment_rows

    rows = dict(environment_rows({"code_files": ["a.py", "b.py"],
                                  "runs_trained_by": {"abc1234": 1, "def5678": 2},
                                  "measurements_last_call": {"computed": 3, "read_from_store": 4}}))
    assert rows == {"source files loaded (listed in the results JSON)": 2,
                    "runs trained by (commit)": "abc1234 (1 run), def5678 (2 runs)",
                    "measurements in the last call": "3 computed, 4 read from the run store"}
    odd = {"code_files": 3, "runs_trained_by": 5, "measurements_last_call": "x"}  # a hand-edited file
    assert dict(environment_rows(odd)) == odd
