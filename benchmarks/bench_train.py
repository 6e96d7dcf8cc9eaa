"""F1 training throughput: sharpminima's loop against the idiomatic DataLoader loop.

Usage (from the repository root; about 6 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_train.py            # full run, prints markdown
    .venv/bin/python benchmarks/bench_train.py --quick    # a smoke run (~1 minute)

What it does, all in one process so every variant meets the same machine:

1. Measures the machine's fp32 matmul peak: a (4096 x 4096) @ (4096 x 4096) ``torch.mm``,
   best of several, at the start and again at the end.
2. For batch 256 (the paper's SB) and 6000 (LB, 10% of MNIST) builds every variant below
   with its own F1 from seed 0, warms each up with one full epoch (the compiled variant
   compiles there; that epoch's time is reported), then runs ``--rounds`` rounds in which
   every variant trains one full epoch (a seeded shuffle over all 60,000 samples), in a
   rotated order, so slow drift and other load on the machine hit all variants alike.
3. Reports per variant the median samples/s over rounds, min-max, the median over rounds
   of the per-round ratio to the DataLoader loop (paired, so robust to drift), and the
   fraction of the measured peak reached, counting GEMM FLOPs exactly (forward and
   weight gradient of every Linear, input gradient of all but the first; BatchNorm,
   ReLU, bias and loss FLOPs are not counted).
4. Cross-checks with ``sharpminima.train.train`` itself: the seconds its loop logs for one
   epoch.

The variants:

* ``dataloader``: what a user writes: ``DataLoader(TensorDataset(x, y), shuffle=True)``,
  ``torch.optim.Adam`` with defaults, ``zero_grad()``, CE, backward, step.
* ``loop, unfused Adam``: sharpminima's loop (data held in memory, batches indexed from a
  seeded permutation) with ``torch.optim.Adam`` as before this change (for-loop kernels).
* ``loop (default)``: the loop exactly as ``train()`` runs it: ``make_optimizer`` (fused
  Adam) and ``make_step``.
* ``loop, foreach Adam``: bit-identical to the unfused update; measured, not used.
* ``loop, 1 thread``: the default with ``torch.set_num_threads(1)``.
* ``loop + compile (opt-in)``: ``method_args=(("compile", True),)``; compiled cold (its own
  empty Inductor cache) so the first-epoch column shows the full compile cost.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Cold-compile measurement: an empty Inductor cache, set before torch is imported.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_inductor_"))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from sharpminima.config import TrainConfig  # noqa: E402
from sharpminima.data.base import Dataset  # noqa: E402
from sharpminima.models import build  # noqa: E402
from sharpminima.train import batch_indices, make_optimizer, make_step, train  # noqa: E402

SEED = 0


# ------------------------------------------------------------------------------ setup


def load_data() -> tuple[Dataset, str]:
    """Real MNIST if the data package can load it, else synthetic data of MNIST's shape."""
    try:
        from sharpminima.data import load

        data = load("mnist")
        return data, f"real MNIST ({data.source})"
    except Exception as exc:  # noqa: BLE001 - any failure means "fall back", and we say why
        g = torch.Generator().manual_seed(SEED)
        x = torch.rand(70_000, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (70_000,), generator=g)
        data = Dataset("synthetic", x[:60_000], y[:60_000], x[60_000:], y[60_000:], 10)
        return data, f"synthetic uniform (60000, 1, 28, 28) (MNIST failed: {exc})"


def f1() -> nn.Module:
    """F1 as ``train()`` builds it, initialised from the benchmark's seed."""
    torch.manual_seed(SEED)
    return build("f1", (1, 28, 28), 10)


def gemm_flops_per_sample(model: nn.Module) -> int:
    """Exact GEMM FLOPs of one training sample (2 per multiply-add).

    Forward ``2 * in * out`` and weight gradient ``2 * in * out`` for every Linear; input
    gradient ``2 * in * out`` for all but the first (the data needs no gradient).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    per_layer = [2 * m.in_features * m.out_features for m in linears]
    return 3 * sum(per_layer) - per_layer[0]


def matmul_peak(n: int = 4096, repeats: int = 5) -> tuple[float, float]:
    """Best and median GFLOP/s of an (n x n) @ (n x n) fp32 ``torch.mm``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return max(rates), statistics.median(rates)


# --------------------------------------------------------------------------- variants


def busy_cpu_seconds() -> tuple[float, float]:
    """(all processes, this process) CPU seconds so far, from /proc/stat and os.times()."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = math.nan
    t = os.times()
    return busy, t.user + t.system


@dataclass
class Variant:
    """A training loop that can run one epoch on demand and keeps its timings."""

    name: str
    run_epoch: Callable[[int], None]
    threads: int | None = None
    first_epoch_s: float = 0.0
    rates: list[float] = field(default_factory=list)

    def epoch(self, epoch: int) -> float:
        """Train one epoch and return its wall seconds."""
        saved = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            t0 = time.perf_counter()
            self.run_epoch(epoch)
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(saved)


def dataloader_variant(data: Dataset, batch_size: int) -> Variant:
    """The idiomatic loop a user writes with a DataLoader over a TensorDataset."""
    model = f1()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(SEED))

    def run_epoch(epoch: int) -> None:
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()

    return Variant("dataloader (idiomatic)", run_epoch)


def loop_variant(
    name: str,
    data: Dataset,
    config: TrainConfig,
    make_opt: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    threads: int | None = None,
) -> Variant:
    """The inner loop of ``sharpminima.train.loop._train``, line for line."""
    model = f1()
    opt = make_opt(model) if make_opt else make_optimizer(model.parameters(), config)
    step = make_step(config)
    x, y, n = data.x_train, data.y_train, data.num_train
    dev = torch.device("cpu")

    def run_epoch(epoch: int) -> None:
        model.train()
        loss_sum = torch.zeros(())
        for idx in batch_indices(n, config.batch_size, config.seed, epoch, dev):
            loss_sum += step(model, opt, x[idx], y[idx]) * idx.numel()
        float(loss_sum)

    return Variant(name, run_epoch, threads)


def variants(data: Dataset, batch_size: int, quick: bool) -> list[Variant]:
    """All variants measured at one batch size (see the module docstring)."""
    cfg = TrainConfig(net="f1", dataset="mnist", batch_size=batch_size, seed=SEED)

    def adam(**kw: bool) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=cfg.betas,
                                          eps=cfg.adam_eps, **kw)

    out = [
        dataloader_variant(data, batch_size),
        loop_variant("loop, unfused Adam (before)", data, cfg, adam()),
        loop_variant("loop (default: fused Adam)", data, cfg),
    ]
    if not quick:
        out += [
            loop_variant("loop, foreach Adam", data, cfg, adam(foreach=True)),
            loop_variant("loop (default), 1 thread", data, cfg, threads=1),
        ]
    out.append(loop_variant("loop + compile (opt-in)", data,
                            cfg.replace(method_args=(("compile", True),))))
    return out


# -------------------------------------------------------------------------- measuring


@dataclass
class BatchResult:
    """Timings of every variant at one batch size."""

    batch_size: int
    variants: list[Variant]
    logged_rate: float  # samples/s from the seconds train() logs for one epoch
    other_cores: float  # mean CPU use of other processes during the timed rounds, in cores


def measure(data: Dataset, batch_size: int, rounds: int, quick: bool) -> BatchResult:
    """Warm up every variant with one epoch, then time ``rounds`` interleaved epochs each."""
    vs = variants(data, batch_size, quick)
    n = data.num_train
    for v in vs:
        v.first_epoch_s = v.epoch(0)
        print(f"  [{batch_size}] {v.name}: first epoch {v.first_epoch_s:.1f}s", file=sys.stderr)
    (all0, self0), wall0 = busy_cpu_seconds(), time.perf_counter()
    for r in range(rounds):
        k = r % len(vs)
        for v in vs[k:] + vs[:k]:
            v.rates.append(n / v.epoch(r + 1))
        print(f"  [{batch_size}] round {r + 1}/{rounds} done", file=sys.stderr)
    (all1, self1), wall1 = busy_cpu_seconds(), time.perf_counter()
    other_cores = ((all1 - all0) - (self1 - self0)) / (wall1 - wall0)
    cfg = TrainConfig(net="f1", dataset="mnist", batch_size=batch_size, seed=SEED, epochs=1)
    run = train(cfg, dataset=data, device="cpu")
    return BatchResult(batch_size, vs, n / run.history[-1]["seconds"], max(other_cores, 0.0))


# -------------------------------------------------------------------------- reporting


def markdown(
    results: list[BatchResult],
    data_note: str,
    flops_per_sample: int,
    peaks: list[tuple[float, float]],
    command: str,
    seconds: float,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    """The section to paste into benchmarks/RESULTS.md."""
    peak = max(p[0] for p in peaks)
    lines = [
        f"## F1 training throughput ({datetime.date.today().isoformat()})",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores "
        f"({_cpu_name()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        f"- Command: `{command}` ({seconds / 60:.1f} min)",
        f"- Data: {data_note}",
        f"- fp32 matmul peak (4096^3 torch.mm, best of 5): {peaks[0][0]:.1f} GFLOP/s at the "
        f"start, {peaks[-1][0]:.1f} at the end (medians {peaks[0][1]:.1f}, "
        f"{peaks[-1][1]:.1f}); the % of peak below uses {peak:.1f}",
        f"- GEMM FLOPs per training sample: {flops_per_sample:,} (exact count, see script)",
        f"- Load average at start / end: {_fmt_load(loads[0])} / {_fmt_load(loads[1])} "
        "(other work on the machine lowers every number; the ratios are paired per round)",
        "",
    ]
    for res in results:
        base = res.variants[0].rates
        lines += [
            f"### Batch {res.batch_size} ({len(base)} rounds of one epoch each)",
            "",
            f"Other processes used {res.other_cores:.2f} of the {os.cpu_count()} cores on "
            "average while the rounds ran.",
            "",
            "| variant | samples/s (median) | min - max | vs dataloader (median of "
            "per-round ratios) | % of peak | first epoch s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for v in res.variants:
            med = statistics.median(v.rates)
            ratio = statistics.median(a / b for a, b in zip(v.rates, base, strict=True))
            lines.append(
                f"| {v.name} | {med:,.0f} | {min(v.rates):,.0f} - {max(v.rates):,.0f} | "
                f"{ratio:.3f}x | {100 * med * flops_per_sample / 1e9 / peak:.1f}% | "
                f"{v.first_epoch_s:.1f} |"
            )
        lines += [
            "",
            f"`train()` cross-check: the epoch seconds the loop itself logs give "
            f"{res.logged_rate:,.0f} samples/s "
            f"({100 * res.logged_rate * flops_per_sample / 1e9 / peak:.1f}% of peak).",
            "",
        ]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fmt_load(load: tuple[float, ...]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def main() -> None:
    """Parse arguments, measure, print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per variant")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 6000])
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, fewer variants: a smoke run, not for RESULTS.md")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    data, data_note = load_data()
    peaks = [matmul_peak()]
    flops = gemm_flops_per_sample(f1())
    results = [measure(data, bs, rounds, args.quick) for bs in args.batch_sizes]
    peaks.append(matmul_peak())
    command = " ".join([".venv/bin/python", "benchmarks/bench_train.py", *sys.argv[1:]])
    print(markdown(results, data_note, flops, peaks, command, time.perf_counter() - t_start,
                   (load_start, os.getloadavg())))


if __name__ == "__main__":
    main()
