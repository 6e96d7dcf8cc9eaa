"""Vectorised trials and batched landscape evaluation against their one-at-a-time paths.

Usage (from the repository root, on an otherwise idle machine)::

    .venv/bin/python benchmarks/bench_trials.py            # full run, prints markdown (~15 min, 2 cores)
    .venv/bin/python benchmarks/bench_trials.py --quick    # a smoke run (~30 s), not for RESULTS.md
    .venv/bin/python benchmarks/bench_trials.py --device cuda

What it measures, all in one process so both paths meet the same machine:

1. **Trials**: K F1 trials (seeds 0..K-1, same data, same batch size) trained
   ``--epochs`` epochs by :func:`sharpminima.train.vectorized.train_vectorized` (one
   batched computation) and by K calls of :func:`sharpminima.train.train`, for each batch
   size, ``--repeats`` times in alternating order. Reported: the training seconds per epoch
   (the loop's own ``seconds``, evaluation excluded) of all K trials together, and of one
   sequential trial, the median ratio vectorised / sequential over repeats, the wall time
   with evaluation, and the largest relative difference in final training loss between
   the two paths (rounding-level for SGD; Adam on F1 amplifies rounding, see
   ``sharpminima.train.vectorized``).
2. **Interpolation**: :func:`sharpminima.landscape.interpolate` between two F1 networks,
   ``--points`` grid points on ``--samples`` training samples, BatchNorm in batch mode,
   evaluated one point at a time and batched (``auto_group_size`` points per pass). Reported:
   seconds of each, the ratio, and the largest relative difference of the losses.

The machine's load average is printed at the start and the end: on a 2-core CPU other
processes slow two-thread PyTorch down by far more than their share.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch

from sharpminima.config import TrainConfig
from sharpminima.data.base import Dataset
from sharpminima.landscape import ModelObjective, flatten_params
from sharpminima.landscape.batched import DEFAULT_GROUP_SIZE
from sharpminima.landscape.interpolate import interpolate
from sharpminima.models import build
from sharpminima.store.provenance import cpu_model
from sharpminima.train import train
from sharpminima.train.vectorized import train_vectorized


def load_data(quick: bool) -> tuple[Dataset, str]:
    """Real MNIST if the data package can load it, else synthetic data of MNIST's shape."""
    try:
        if quick:
            raise RuntimeError("--quick uses synthetic data")
        from sharpminima.data import load

        data = load("mnist")
        return data, f"real MNIST ({data.source})"
    except Exception as exc:  # noqa: BLE001 - any failure means "fall back", and we say why
        g = torch.Generator().manual_seed(0)
        x = torch.rand(70_000, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (70_000,), generator=g)
        data = Dataset("synthetic", x[:60_000], y[:60_000], x[60_000:], y[60_000:], 10)
        return data, f"synthetic uniform (60000, 1, 28, 28) ({exc})"


def _epoch_seconds(runs: list) -> float:
    """Training seconds per epoch of all runs together (the loop's own timing)."""
    return sum(sum(h["seconds"] for h in r.history) / len(r.history) for r in runs)


def bench_trials(data: Dataset, args: argparse.Namespace, dev: torch.device) -> list[dict]:
    """Time vectorised against sequential trials per batch size."""
    rows = []
    seeds = list(range(args.trials))
    for batch_size in args.batch_sizes:
        cfg = TrainConfig(net="f1", dataset=data.name, batch_size=batch_size, epochs=args.epochs,
                          optimizer=args.optimizer, train_limit=args.train_limit,
                          test_limit=args.test_limit)
        ratios, vec_s, seq_s, one_s, vec_wall, seq_wall, diffs = [], [], [], [], [], [], []
        for rep in range(args.repeats):
            order = ("vec", "seq") if rep % 2 == 0 else ("seq", "vec")
            result = {}
            for which in order:
                print(f"  batch {batch_size}, repeat {rep + 1}: {which}", file=sys.stderr)
                t0 = time.perf_counter()
                if which == "vec":
                    runs = train_vectorized(cfg, seeds, dataset=data, device=dev)
                else:
                    runs = [train(cfg.replace(seed=s), dataset=data, device=dev) for s in seeds]
                result[which] = (runs, time.perf_counter() - t0)
            (vruns, vwall), (sruns, swall) = result["vec"], result["seq"]
            v, s = _epoch_seconds(vruns), _epoch_seconds(sruns)
            ratios.append(v / s)
            vec_s.append(v)
            seq_s.append(s)
            one_s.append(s / len(sruns))
            vec_wall.append(vwall)
            seq_wall.append(swall)
            diffs.append(max(abs(a.final["train_loss"] - b.final["train_loss"]) / abs(b.final["train_loss"])
                             for a, b in zip(vruns, sruns, strict=True)))
        rows.append({"batch_size": batch_size, "vec": statistics.median(vec_s),
                     "seq": statistics.median(seq_s), "one": statistics.median(one_s),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "vec_wall": statistics.median(vec_wall),
                     "seq_wall": statistics.median(seq_wall), "loss_diff": max(diffs)})
    return rows


def bench_interpolation(data: Dataset, args: argparse.Namespace, dev: torch.device) -> dict:
    """Time batched against one-at-a-time interpolation between two F1 networks."""
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(build("f1", (1, 28, 28), 10).to(dev))
    x, y = data.x_train[: args.samples].to(dev), data.y_train[: args.samples].to(dev)
    obj = ModelObjective(nets[0], x, y, bn_mode="batch", chunk_size=1000)
    xa, xb = flatten_params(nets[0]), flatten_params(nets[1])
    alphas = torch.linspace(-1.0, 2.0, args.points, dtype=torch.float64)
    times: dict[bool, list[float]] = {False: [], True: []}
    losses: dict[bool, torch.Tensor] = {}
    for rep in range(args.repeats):
        for batched in ((False, True) if rep % 2 == 0 else (True, False)):
            print(f"  interpolation, repeat {rep + 1}: batched={batched}", file=sys.stderr)
            t0 = time.perf_counter()
            res = interpolate(obj, xa, xb, alphas=alphas, batched=batched)
            times[batched].append(time.perf_counter() - t0)
            losses[batched] = res.train_loss
    one, many = statistics.median(times[False]), statistics.median(times[True])
    diff = float(((losses[True] - losses[False]).abs() / losses[False].abs()).max())
    return {"one": one, "batched": many, "ratio": many / one, "num_points": int(losses[True].numel()),
            "loss_diff": diff}


def main() -> None:
    """Parse arguments, measure, print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run, not for RESULTS.md")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 6000])
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--points", type=int, default=25, help="interpolation grid points")
    parser.add_argument("--samples", type=int, default=10_000, help="interpolation training samples")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: auto)")
    args = parser.parse_args()
    args.train_limit, args.test_limit = None, None
    if args.quick:
        args.trials, args.epochs, args.batch_sizes, args.repeats = 3, 1, [256], 1
        args.train_limit, args.test_limit = 1536, 500
        args.points, args.samples = 7, 1000
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = datetime.datetime.now(datetime.UTC)
    load0 = os.getloadavg()
    data, source = load_data(args.quick)
    trials = bench_trials(data, args, dev)
    interp = bench_interpolation(data, args, dev)
    load1 = os.getloadavg()
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    lines = [
        f"## Vectorised trials and batched interpolation{' (quick smoke run)' if args.quick else ''}",
        "",
        f"- Machine: {device_name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, device `{dev}`",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; load average at start {load0[0]:.2f}, at end {load1[0]:.2f}",
        f"- Command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- Data: {source}" + (f", first {args.train_limit} training samples" if args.train_limit else ""),
        "",
        f"**{args.trials} F1 trials, {args.epochs} epoch(s), {args.optimizer}**: training seconds per "
        "epoch (evaluation excluded), all trials together; ratio = vectorised / sequential "
        f"(median of {args.repeats}, min - max).",
        "",
        "| batch | vectorised s/epoch | sequential s/epoch | one trial s/epoch | ratio | "
        "vectorised / one trial | wall vec / seq (with eval) | max rel. diff final train loss |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in trials:
        lines.append(
            f"| {r['batch_size']} | {r['vec']:.2f} | {r['seq']:.2f} | {r['one']:.2f} | "
            f"{r['ratio']:.2f} ({r['ratio_min']:.2f} - {r['ratio_max']:.2f}) | {r['vec'] / r['one']:.2f} | "
            f"{r['vec_wall']:.1f} / {r['seq_wall']:.1f} s | {r['loss_diff']:.1e} |"
        )
    lines += [
        "",
        f"**Interpolation** between two F1 networks, {interp['num_points']} points, {args.samples} "
        f"samples, BN batch mode, at most {DEFAULT_GROUP_SIZE} points per batched pass:",
        "",
        "| one at a time s | batched s | ratio batched / one | max rel. diff of losses |",
        "|---:|---:|---:|---:|",
        f"| {interp['one']:.2f} | {interp['batched']:.2f} | {interp['ratio']:.2f} | "
        f"{interp['loss_diff']:.1e} |",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
