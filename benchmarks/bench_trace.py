"""Which Hessian trace estimator to use at trained F1 minima: Hutchinson, Hutch++ or XTrace.

F1 is trained on the first ``--train-samples`` MNIST images with batch 256 (SB) and batch
``--lb-batch`` (LB). At each minimum the Hessian of the mean cross-entropy over the first
``--samples`` of those images (BatchNorm in eval mode) is built once, with its gradient
graph kept, and each estimator runs with ``--budgets`` products over ``--seeds`` seeds
(interleaved). All three are unbiased, so the spread of the values over seeds is the
actual error of one run. Reported per estimator and budget: the mean, that spread
relative to the mean, the mean standard error the estimator reports and the ratio
spread / reported (above 1: the reported error is optimistic), and the median seconds.

To say why one estimator wins, the top ``--top`` eigenvalues (Lanczos) are compared with
the trace: Hutch++ and XTrace gain only where a few eigenvalues carry much of the trace.

The result is a markdown section on stdout, for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from sharpminima.config import TrainConfig
from sharpminima.data import load
from sharpminima.landscape import ModelObjective, flatten_params, hessian_eigenvalues
from sharpminima.landscape.operators import resolve_operator
from sharpminima.landscape.trace import TRACE_METHODS, estimate_trace
from sharpminima.train import train


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    """Train the two minima, run the estimators, print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lb-batch", type=int, default=2_500)
    parser.add_argument("--samples", type=int, default=2_000, help="images in the Hessian's loss")
    parser.add_argument("--budgets", type=int, nargs="+", default=[24, 96])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.train_samples, args.epochs, args.lb_batch, args.samples = 1_000, 1, 500, 256
        args.budgets, args.seeds, args.top = [12], 2, 3
    started = time.perf_counter()
    ds = load("mnist", train_limit=args.train_samples)
    lines = [f"## Hessian trace estimators at trained F1 minima ({datetime.date.today().isoformat()})", ""]
    lines.append(
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    lines.append(f"- Command: `{' '.join(['.venv/bin/python', *sys.argv])}`")
    lines.append(
        f"- F1 trained {args.epochs} epochs on the first {args.train_samples:,} MNIST images; the "
        f"Hessian of the mean cross-entropy over the first {args.samples:,}, BatchNorm in eval mode; "
        f"{args.seeds} seeds per cell"
    )
    lines += [
        "",
        "| minimum | top-" + str(args.top) + " eigenvalues / trace | estimator | products | mean | "
        "spread over seeds / mean | reported stderr / mean | spread / reported | median seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    x_all, y_all = ds.x_train, ds.y_train
    for regime, bs in (("SB", 256), ("LB", args.lb_batch)):
        log(f"training {regime} (batch {bs})")
        cfg = TrainConfig(net="f1", batch_size=bs, epochs=args.epochs, seed=0, train_limit=args.train_samples)
        model = train(cfg, dataset=ds).model
        obj = ModelObjective(model, x_all[: args.samples], y_all[: args.samples], bn_mode="eval")
        x = flatten_params(model)
        op = resolve_operator(obj, x, None)
        log(f"{regime}: top {args.top} eigenvalues")
        top = hessian_eigenvalues(obj, x, k=args.top, tol=1e-4, operator=op)
        rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for seed in range(args.seeds):
            log(f"{regime}: seed {seed}")
            for budget in args.budgets:
                for method in TRACE_METHODS:
                    t0 = time.perf_counter()
                    r = estimate_trace(op, method=method, num_probes=budget, seed=seed)
                    seconds = time.perf_counter() - t0
                    rows.setdefault((method, budget), []).append((r.value, r.stderr, seconds))
        pooled = statistics.fmean(v for cell in rows.values() for v, _, _ in cell)
        share = sum(top.values) / pooled
        for budget in args.budgets:
            for method in TRACE_METHODS:
                cell = rows[(method, budget)]
                values = [v for v, _, _ in cell]
                mean = statistics.fmean(values)
                spread = statistics.stdev(values)
                reported = statistics.fmean(s for _, s, _ in cell)
                seconds = statistics.median(t for _, _, t in cell)
                lines.append(
                    f"| {regime} | {share:.3f} | {method} | {budget} | {mean:.4g} | "
                    f"{spread / abs(mean):.3f} | "
                    f"{reported / abs(mean):.3f} | {spread / reported:.2f} | {seconds:.2f} |"
                )
    lines += [
        "",
        "The spread from few seeds is itself uncertain by about 1/sqrt(2 (seeds - 1)) of its value.",
        "",
        f"Total {time.perf_counter() - started:.0f} s.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
