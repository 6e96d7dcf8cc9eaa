"""Data-parallel scaling: F1 training steps (SB 256, LB 6000) and an HVP over 1 and 2 processes.

Usage (from the repository root; run it on an otherwise idle machine)::

    .venv/bin/python benchmarks/bench_distributed.py            # full run, prints markdown
    .venv/bin/python benchmarks/bench_distributed.py --quick    # a smoke run (~20 s)

What it does:

1. For 1 process (plain step, no DDP) and for W = 2 processes (gloo on CPU, spawned, each
   with ``cpu_count / W`` threads, through :class:`sharpminima.train.parallel.DataParallelStep`,
   i.e. DDP + all-reduce BatchNorm exactly as ``torchrun -m sharpminima train`` runs it),
   times F1 training steps on MNIST-shaped data (MNIST if cached, else synthetic) at batch
   256 (SB) and 6000 (LB): ``--warmup`` steps, then the median of ``--repeats`` timings of
   ``--steps`` steps. Throughput is global samples per second; the parallel efficiency is
   ``throughput(W) / (W * throughput(1))``.
2. Times a Hessian-vector product of F1's mean loss over ``--hvp-samples`` samples
   (chunks of 1000, BN batch mode), single process vs :func:`shard_objective` over W.
3. With CUDA, the same for 1 GPU.
4. Prints the communication volume per step at 8-64 GPUs from F1's parameter count and
   evaluates the paper's Appendix C condition ``I_l / I_s < B_s / (f_s(P) B_l)`` with the
   measured SB efficiency and the iterations of our quick reproduction (SB 5 epochs of
   batch 256, LB 15 epochs of batch 6000, where LB tested better; ``--sb-epochs``,
   ``--lb-epochs``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _data(num: int):
    from sharpminima.data import load

    try:
        data = load("mnist")
        name = "mnist"
    except Exception:  # not fetched: same shapes, generated
        data = load("synthetic", num_train=num, num_test=10)
        name = "synthetic"
    return data.x_train[:num], data.y_train[:num], name


def _time_steps(step, model, opt, x, y, batch: int, steps: int, warmup: int, repeats: int) -> float:
    """Median seconds per step over ``repeats`` timings of ``steps`` steps."""
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        step(model, opt, x[idx], y[idx])

    for _ in range(warmup):
        one()
    times = []
    for _ in range(repeats):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def _time_hvp(objective, repeats: int) -> float:
    from sharpminima.landscape.objective import flatten_params

    x0 = flatten_params(objective.model if hasattr(objective, "model") else objective.local.model)
    v = torch.randn(x0.numel(), generator=torch.Generator().manual_seed(1))
    objective.hvp(x0, v)  # warm-up
    times = []
    for _ in range(repeats):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        t0 = time.perf_counter()
        objective.hvp(x0, v)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(args: argparse.Namespace, device: str = "cpu") -> dict:
    """Time SB/LB steps and one HVP in this process (inside a process group if one is active)."""
    from sharpminima import distributed
    from sharpminima.config import TrainConfig
    from sharpminima.landscape.sharded import shard_objective
    from sharpminima.models import build
    from sharpminima.train.methods import make_step
    from sharpminima.train.optim import make_optimizer
    from sharpminima.train.parallel import parallel_step

    x, y, name = _data(max(args.lb, args.hvp_samples))
    x, y = x.to(device), y.to(device)
    out: dict = {"data": name}
    for label, batch in (("sb", args.sb), ("lb", args.lb)):
        torch.manual_seed(0)
        model = build("f1", (1, 28, 28), 10).to(device)
        config = TrainConfig(net="f1", batch_size=batch)
        opt = make_optimizer(model.parameters(), config)
        step = parallel_step(make_step(config), model)
        model.train()
        out[label] = _time_steps(step, model, opt, x, y, batch, args.steps, args.warmup, args.repeats)
    torch.manual_seed(0)
    model = build("f1", (1, 28, 28), 10).to(device)
    n = args.hvp_samples
    objective = shard_objective(model, x[:n], y[:n], bn_mode="batch", chunk_size=1000)
    out["hvp"] = _time_hvp(objective, args.repeats)
    out["params"] = sum(p.numel() for p in model.parameters())
    out["world"] = distributed.world_size()
    return out


def _rank_main(rank: int, world: int, port: int, args: argparse.Namespace, result_dir: str) -> None:
    import json

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = measure(args)
        if rank == 0:
            Path(result_dir, "result.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def run_world(world: int, args: argparse.Namespace) -> dict:
    """Measure with ``world`` gloo processes (spawned)."""
    import json

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world, port, args, tmp), nprocs=world, join=True)
        return json.loads(Path(tmp, "result.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (~20 s)")
    parser.add_argument("--world", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--sb", type=int, default=256)
    parser.add_argument("--lb", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hvp-samples", type=int, default=10_000)
    parser.add_argument("--sb-epochs", type=float, default=5.0, help="SB epochs to the compared accuracy")
    parser.add_argument("--lb-epochs", type=float, default=15.0, help="LB epochs to the compared accuracy")
    parser.add_argument("--num-train", type=int, default=60_000)
    args = parser.parse_args(argv)
    if args.quick:
        args.lb, args.steps, args.warmup, args.repeats, args.hvp_samples = 1000, 2, 2, 2, 2000
    t_start = time.perf_counter()
    single = measure(args)
    parallel = run_world(args.world, args)
    gpu = measure(args, "cuda") if torch.cuda.is_available() else None
    w = args.world

    def thr(r: dict, key: str, batch: int) -> float:
        return batch / r[key]

    lines = [
        f"## Data-parallel scaling ({'quick' if args.quick else 'full'} run)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch "
        f"{torch.__version__}; F1 ({single['params']:,} parameters) on {single['data']} "
        f"(1, 28, 28); 1 process with {torch.get_num_threads()} threads vs {w} gloo processes with "
        f"{max(1, (os.cpu_count() or 1) // w)} each; median of {args.repeats} x {args.steps} steps.",
        "",
        *(["**Quick run: too few steps for meaningful numbers, a smoke test.**", ""] if args.quick else []),
        "| what | 1 process | " + f"{w} processes | speed-up | parallel efficiency |",
        "|---|---|---|---|---|",
    ]
    eff: dict[str, float] = {}
    for key, batch, label in (("sb", args.sb, "SB"), ("lb", args.lb, "LB")):
        one, par = thr(single, key, batch), thr(parallel, key, batch)
        eff[key] = par / (w * one)
        lines.append(
            f"| {label} step, batch {batch} | {one:,.0f} samples/s | {par:,.0f} samples/s | "
            f"{par / one:.2f}x | {eff[key]:.2f} |"
        )
    hvp_speedup = single["hvp"] / parallel["hvp"]
    lines.append(
        f"| HVP, {args.hvp_samples:,} samples | {single['hvp'] * 1e3:.0f} ms | "
        f"{parallel['hvp'] * 1e3:.0f} ms | {hvp_speedup:.2f}x | {hvp_speedup / w:.2f} |"
    )
    if gpu is not None:
        lines += [
            "",
            f"1 GPU ({torch.cuda.get_device_name()}): SB {thr(gpu, 'sb', args.sb):,.0f} samples/s, "
            f"LB {thr(gpu, 'lb', args.lb):,.0f} samples/s, HVP {gpu['hvp'] * 1e3:.1f} ms.",
        ]
    mbytes = single["params"] * 4 / 1e6
    lines += [
        "",
        "### Communication per step at 8-64 GPUs",
        "",
        f"A ring all-reduce of F1's {single['params']:,} float32 gradients ({mbytes:.1f} MB) sends "
        "and receives `2 (W-1)/W` times that per GPU per step (BatchNorm adds 2 x 2 x 2,560 floats).",
        "",
        "| GPUs | MB per GPU per step | SB samples per GPU | LB samples per GPU | "
        "all-reduce at 10 GB/s | at 100 GB/s |",
        "|---|---|---|---|---|---|",
    ]
    for gpus in (8, 16, 32, 64):
        volume = 2 * (gpus - 1) / gpus * mbytes
        lines.append(
            f"| {gpus} | {volume:.1f} | {args.sb / gpus:.0f} | {6000 / gpus:.0f} | "
            f"{volume / 10e3 * 1e3:.2f} ms | {volume / 100e3 * 1e3:.3f} ms |"
        )
    n = args.num_train
    i_s, i_l = args.sb_epochs * math.ceil(n / args.sb), args.lb_epochs * math.ceil(n / 6000)
    ratio, bound = i_l / i_s, args.sb / 6000
    f_needed = bound / ratio
    lines += [
        "",
        "SB's per-GPU work shrinks to a few samples while the volume stays the same, so SB is",
        "communication-bound long before LB: an epoch of SB makes 23x more all-reduces than LB.",
        "",
        "### Appendix C: when LB pays off",
        "",
        f"LB is faster when `I_l / I_s < B_s / (f_s(P) B_l)`. From our quick reproduction "
        f"(F1 on MNIST: SB {args.sb_epochs:g} epochs = {i_s:,.0f} steps of {args.sb}, LB "
        f"{args.lb_epochs:g} epochs = {i_l:,.0f} steps of 6000, LB tested as well or better): "
        f"`I_l / I_s = {ratio:.3f}` and `B_s / B_l = {bound:.4f}`, so LB wins when SB's parallel "
        f"efficiency `f_s(P) < {f_needed:.2f}`. Measured here: `f_s({w}) = {eff['sb']:.2f}` "
        f"({'LB pays off' if eff['sb'] < f_needed else 'SB is still faster'} at {w} CPU processes; "
        f"LB's own efficiency {eff['lb']:.2f}, the paper takes it as 1). At 8-64 GPUs, SB's "
        "efficiency drops as its per-GPU batch falls to 32-4 samples, the regime where the "
        "condition holds.",
        "",
        f"_Wall time of this benchmark: {time.perf_counter() - t_start:.0f} s._",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
