"""Cluster backends: the quick correlation study on Ray against the local backend, and costs per run.

Usage (from the repository root, on an idle machine; about 15 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_backends.py            # prints markdown for RESULTS.md
    .venv/bin/python benchmarks/bench_backends.py --quick    # smaller study, fewer runs

What it measures, one process per command so each starts cold as a user's would:

1. ``sharpminima study correlation --preset quick`` with the local backend and with
   ``--backend ray`` on a private local Ray cluster of this machine's CPUs (each in a
   fresh store, measures included), wall time of the whole command and the ratio.
2. Per-run overheads of the Ray path, from ``--runs`` tiny runs (F1, 64 samples, one
   epoch, so training itself is negligible) trained by ``RayBackend.train_many`` in one
   process: the cluster's start, then the wall time per run with everything the driver
   does (submit, wait, import), against the same runs trained by ``train`` locally.
3. The driver's store write per run: :func:`~sharpminima.store.transfer.import_run` of
   a finished F1 run (784-1200-...-10 network, init/final/last checkpoints, 3 epochs).

From those it projects the driver's limit on a 1,000-run grid on 64 GPUs (printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _study(store: Path, out: Path, extra: list[str], quick: bool) -> float:
    cmd = [sys.executable, "-m", "sharpminima", "--quiet", "study", "correlation", "--preset", "quick",
           "--store", str(store), "--out", str(out), "--json", *extra]
    if quick:
        cmd += ["--grid", "batch_size=64,2048", "--grid", "lr=0.001", "--epochs", "2"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def _per_run(num_runs: int) -> dict[str, float]:
    import ray
    import torch

    from sharpminima.backends import get_backend
    from sharpminima.config import TrainConfig
    from sharpminima.store import Store
    from sharpminima.store.transfer import export_run, import_run
    from sharpminima.train import train

    base = TrainConfig(net="f1", dataset="mnist", train_limit=64, test_limit=64, epochs=1, batch_size=64)
    configs = [base.replace(seed=s) for s in range(num_runs)]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        out["ray_start_s"] = time.perf_counter() - t0
        backend = get_backend("ray", cpus_per_run=1)
        t0 = time.perf_counter()
        backend.train_many(Store(Path(tmp) / "ray"), configs)
        out["ray_per_run_s"] = (time.perf_counter() - t0) / num_runs
        ray.shutdown()
        local = Store(Path(tmp) / "local")
        t0 = time.perf_counter()
        for config in configs:
            train(config, store=local)
        out["local_per_run_s"] = (time.perf_counter() - t0) / num_runs
        # The driver's write of one real F1 run: export once, import into fresh stores.
        run = train(TrainConfig(net="f1", dataset="mnist", train_limit=2000, test_limit=500, epochs=3),
                    store=local)
        bundle = export_run(local, run.id)
        out["bundle_mb"] = sum(len(b) for b in bundle["files"].values()) / 1e6
        times = []
        for i in range(5):
            dst = Store(Path(tmp) / f"dst{i}")
            t0 = time.perf_counter()
            import_run(dst, bundle)
            times.append(time.perf_counter() - t0)
        out["import_s"] = statistics.median(times)
        out["threads"] = torch.get_num_threads()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller study and fewer runs (a smoke run)")
    parser.add_argument("--runs", type=int, default=None,
                        help="tiny runs for the per-run overhead (default 20)")
    args = parser.parse_args()
    runs = args.runs or (6 if args.quick else 20)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        local = _study(t / "local", t / "out-local", [], args.quick)
        on_ray = _study(t / "ray", t / "out-ray", ["--backend", "ray"], args.quick)
    per = _per_run(runs)
    # Conservative: all of Ray's extra time per tiny run counted as serial driver work.
    driver_s = per["import_s"] + max(0.0, per["ray_per_run_s"] - per["local_per_run_s"])
    print(f"## Cluster backends: Ray against local ({time.strftime('%Y-%m-%d')})\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"command: `.venv/bin/python benchmarks/bench_backends.py{' --quick' if args.quick else ''}`.\n")
    print("| quantity | value |\n|---|---|")
    grid = " (smaller grid)" if args.quick else ""
    print(f"| study correlation quick{grid}, local backend | {local:.1f} s |")
    print(f"| the same with `--backend ray` (private local cluster) | {on_ray:.1f} s |")
    print(f"| ratio Ray / local | {on_ray / local:.2f}x |")
    print(f"| Ray cluster start (`ray.init`) | {per['ray_start_s']:.1f} s |")
    print(f"| tiny run ({runs} runs), Ray, all driver work included | "
          f"{per['ray_per_run_s'] * 1e3:.0f} ms per run |")
    print(f"| the same runs trained locally with `train` | {per['local_per_run_s'] * 1e3:.0f} ms per run |")
    print(f"| driver's import of one F1 run ({per['bundle_mb']:.1f} MB of checkpoints) | "
          f"{per['import_s'] * 1e3:.0f} ms |")
    print(f"\nProjection for a 1,000-run grid on 64 GPUs: the driver spends about {driver_s * 1e3:.0f} ms "
          f"per finished run (import plus the whole dispatch overhead), "
          f"{driver_s * 1000 / 60:.1f} min for all 1,000. With 64 runs in flight it keeps up as long "
          f"as one run lasts more than 64 x {driver_s:.3f} s = {64 * driver_s:.1f} s; shorter runs "
          "would queue at the driver (and its store), longer ones (every run of the study) leave it "
          "idle most of the time.")

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
