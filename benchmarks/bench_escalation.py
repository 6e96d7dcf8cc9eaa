"""The Keskar maximiser's escalation: what it costs where it is not needed, what it finds where it is.

Three measurements on one machine, in one run:

1. **F1 minima (non-zero gradient)**: F1 trained on the first ``--samples`` MNIST training
   images with batch 256 (SB) and batch ``--lb-batch`` (LB), Keskar sharpness (eps 1e-3,
   10 L-BFGS-B iterations, BatchNorm in batch mode) on the same images, with the default
   (``escalate_stuck=True``) and with the paper's search alone (``escalate_stuck=False``,
   the code path of every earlier release). Reported: the gradient passes of each and their
   ratio (the budget is 1.10x), the median seconds over ``--repeats`` interleaved runs,
   and whether the values agree bit for bit.
2. **The same minima against a many-start reference**: ``keskar_sharpness_multistart``
   with ``--reference-starts`` L-BFGS-B starts; the default's value as a fraction of it.
3. **Stationary starts**: a diagonal bowl of ``--bowl-dim`` coordinates started at its
   minimum: the value without and with escalation against the closed form, and the passes.

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
from typing import Any

import torch

from sharpminima.config import TrainConfig
from sharpminima.data import load
from sharpminima.landscape import ModelObjective, flatten_params, keskar_sharpness
from sharpminima.landscape.sharpness import keskar_sharpness_multistart
from sharpminima.train import train


def minima(
    samples: int, lb_batch: int, epochs: int
) -> tuple[dict[str, tuple[torch.nn.Module, str]], Any]:
    """SB and LB F1 minima on the first ``samples`` MNIST images, and that data."""
    ds = load("mnist", train_limit=samples)
    out = {}
    for regime, bs in (("SB", 256), ("LB", lb_batch)):
        cfg = TrainConfig(net="f1", batch_size=bs, epochs=epochs, seed=0, train_limit=samples)
        run = train(cfg, dataset=ds)
        acc = run.final["train_acc"]
        out[regime] = (run.model, f"batch {bs}, {epochs} epochs, train accuracy {acc:.1f}%")
    return out, ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--lb-batch", type=int, default=2_500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-starts", type=int, default=16)
    parser.add_argument("--bowl-dim", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.lb_batch, args.epochs, args.repeats = 2_000, 1_000, 2, 1
        args.reference_starts, args.bowl_dim = 3, 1_000
    started = time.perf_counter()
    lines = [f"## Keskar maximiser: escalation at stuck starts ({datetime.date.today().isoformat()})", ""]
    lines.append(
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    lines.append(f"- Command: `{' '.join(['.venv/bin/python', *sys.argv])}`")
    nets, ds = minima(args.samples, args.lb_batch, args.epochs)
    lines.append(f"- Data: the first {args.samples:,} MNIST training images (sharpness over the same)")
    lines += [
        "",
        "### 1. F1 minima: the default against the paper's search alone",
        "",
        "| minimum | value (default) | value (paper) | identical | gradient passes default / paper | "
        "ratio | seconds default / paper | search |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    ref_rows = []
    for regime, (model, what) in nets.items():
        obj = ModelObjective(model, ds.x_train, ds.y_train, chunk_size=1000)
        x = flatten_params(model)
        secs: dict[bool, list[float]] = {True: [], False: []}
        res = {}
        for _ in range(args.repeats):
            for esc in (True, False):
                t0 = time.perf_counter()
                res[esc] = keskar_sharpness(obj, x, eps=1e-3, escalate_stuck=esc)
                secs[esc].append(time.perf_counter() - t0)
        d, p = res[True], res[False]
        grad_d, grad_p = d.cost.num_grad, p.cost.num_grad
        lines.append(
            f"| {regime} ({what}) | {d.value:.6g} | {p.value:.6g} | {d.value == p.value} | "
            f"{grad_d} / {grad_p} | {grad_d / grad_p:.2f}x | "
            f"{statistics.median(secs[True]):.2f} / {statistics.median(secs[False]):.2f} | {d.search} |"
        )
        t0 = time.perf_counter()
        ref = keskar_sharpness_multistart(obj, x, eps=1e-3, num_starts=args.reference_starts, seed=0)
        ref_rows.append((regime, d.value, ref, time.perf_counter() - t0))
    lines += [
        "",
        f"### 2. The same minima against {args.reference_starts} L-BFGS-B starts",
        "",
        "| minimum | default | reference (best of starts) | default / reference | spread of starts | "
        "starts disagree (5%) | reference seconds |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for regime, value, ref, sec in ref_rows:
        lines.append(
            f"| {regime} | {value:.6g} | {ref.value:.6g} | {value / ref.value:.3f} | {ref.spread:.3g} | "
            f"{ref.disagree} | {sec:.1f} |"
        )

    # 3. a stationary start
    n = args.bowl_dim
    g = torch.Generator().manual_seed(0)
    c = torch.randn(n, generator=g)
    h = torch.rand(n, generator=g) + 0.5

    def bowl(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (h * (v - c) ** 2).sum()

    exact = 100 * 0.5 * float((h.double() * (1e-3 * (c.double().abs() + 1)) ** 2).sum())
    lines += [
        "",
        f"### 3. A bowl of {n:,} coordinates started at its minimum (closed form {exact:.6g})",
        "",
        "| search | value | relative error | gradient passes | seconds | path |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for esc in (False, True):
        t0 = time.perf_counter()
        r = keskar_sharpness(bowl, c.clone(), eps=1e-3, escalate_stuck=esc)
        sec = time.perf_counter() - t0
        lines.append(
            f"| {'default' if esc else 'paper alone'} | {r.value:.6g} | {abs(r.value - exact) / exact:.2e} | "
            f"{r.cost.num_grad} | {sec:.2f} | {r.search} |"
        )
    lines += ["", f"Total {time.perf_counter() - started:.0f} s.", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
