"""The GPU benchmark script runs end to end (tiny sizes, on the CPU).

It is only ever run for real on a lent GPU machine, where device time is scarce; this
smoke run keeps it from rotting in between.
"""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_quick_writes_every_section(bench_gpu, tmp_path, capsys):
    results = bench_gpu.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert set(results) == {"c2_training", "trials", "c2_landscape", "precision"}
    assert [r["batch_size"] for r in results["c2_training"]] == [16, 64]
    for r in results["c2_training"]:
        assert min(r["plain_s"], r["resident_s"], r["ours_s"]) > 0
        assert r["speedup"] == pytest.approx(r["plain_s"] / r["ours_s"])
        assert r["bf16_s"] is None and r["bf16_speedup"] is None
    assert [r["net"] for r in results["trials"]] == ["f1", "c1"]
    for r in results["trials"]:
        assert r["vec_s"] > 0 and r["one_s"] == pytest.approx(r["seq_s"] / 2)
    land = results["c2_landscape"]
    assert land["sharpness"] >= 0 and land["sharpness_evals"] >= 2 and land["hvps"] >= 2
    assert land["sharpness_other_tf32"] == pytest.approx(land["sharpness"])  # TF32 flags: no-ops on CPU
    prec = {r["precision"]: r for r in results["precision"]}
    assert list(prec) == ["fp32", "fp32 again", "tf32"]  # bf16 convolutions crawl on a CPU: skipped
    assert prec["fp32"]["weights_rel_diff"] == 0 and prec["fp32 again"]["weights_rel_diff"] == 0
    assert prec["tf32"]["weights_rel_diff"] == 0  # on a CPU the fast path is off: the same run
    assert all(r["epochs"] == 2 and 0 <= r["test_acc"] <= 100 for r in prec.values())
    saved = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert saved["results"]["c2_landscape"]["top_eigenvalue"] == pytest.approx(land["top_eigenvalue"])
    md = (tmp_path / "bench_gpu.md").read_text()
    assert "quick smoke run" in md and "| F1 | 16 | 2 |" in md and "Keskar sharpness" in md
    assert "| tf32 | 2 |" in md and "C1 training" in md
    assert md in capsys.readouterr().out
    assert not list(tmp_path.glob(".bench_gpu*"))  # no temp files left behind


def test_bench_gpu_refuses_cuda_without_a_gpu(bench_gpu, monkeypatch):
    monkeypatch.setattr(bench_gpu.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="sees no GPU"):
        bench_gpu.main(["--quick", "--device", "cuda"])


def test_bench_gpu_records_a_failed_section_and_runs_the_rest(bench_gpu, tmp_path, monkeypatch):
    def broken(args, dev):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setitem(bench_gpu.SECTIONS, "c2_training", broken)
    results = bench_gpu.main(["--quick", "--device", "cpu", "--out", str(tmp_path),
                              "--sections", "c2_training", "trials"])
    assert results["c2_training"] == {"error": "RuntimeError: CUDA out of memory"}
    assert [r["net"] for r in results["trials"]] == ["f1", "c1"]
    md = (tmp_path / "bench_gpu.md").read_text()
    assert "**c2_training** failed: RuntimeError: CUDA out of memory" in md
