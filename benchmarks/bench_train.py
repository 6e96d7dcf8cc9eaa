"""F1 training throughput: sharpminima's loop against the idiomatic DataLoader loop.

Usage (from the repository root; about 7 minutes on an idle 2-core machine)::

    .venv/bin/python benchmarks/bench_train.py            # full run, prints markdown
    .venv/bin/python benchmarks/bench_train.py --quick    # a smoke run (~2 minutes)

What it does, all in one process so every variant meets the same machine:

1. Measures the machine's fp32 matmul peak: a (4096 x 4096) @ (4096 x 4096) ``torch.mm``,
   best of 5, at the start and the end, and best of 2 before every round (the % of peak
   of a round divides by the peak measured just before it: the host's speed drifts).
2. For batch 256 (the paper's SB) and 6000 (LB, 10% of MNIST) builds every variant below
   with its own F1 from seed 0 and warms each up (3 steps, plus the epoch's last, smaller
   batch for the loop variants: the compiled variant compiles both shapes there, from an
   empty Inductor cache, so its warm-up time is the full cold compile cost). Then
   ``--rounds`` (20) rounds in which every variant trains whole steps until it has done
   15,000 samples (about a second; each variant continues its own seeded epochs, last
   smaller batch and reshuffle included, from chunk to chunk, so 20 rounds are 5 epochs),
   in a rotated order, so drift hits all variants alike. Each round first waits
   (``--quiet-wait`` s at most) until other processes leave the cores idle: two OpenMP
   threads that lose a core to another process stall at every barrier.
3. Reports per variant the median samples/s over rounds, min - max, the median over
   rounds of the per-round ratio to the DataLoader loop (paired, so robust to drift), and
   the fraction of the measured peak reached, counting GEMM FLOPs exactly (forward and
   weight gradient of every Linear, input gradient of all but the first; BatchNorm,
   ReLU, bias and loss FLOPs are not counted).
4. Cross-checks with ``sharpminima.train.train`` itself (the seconds its loop logs for one
   epoch), and times the step's GEMMs alone: the ceiling no loop can beat.

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
  empty Inductor cache) so the warm-up column shows the full compile cost.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import itertools
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# Cold-compile measurement: an empty Inductor cache, set before torch is imported.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="bench_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from sharpminima.config import TrainConfig  # noqa: E402
from sharpminima.data.base import Dataset  # noqa: E402
from sharpminima.models import build  # noqa: E402
from sharpminima.store.provenance import cpu_model  # noqa: E402
from sharpminima.train import batch_indices, make_optimizer, make_step, train  # noqa: E402

SEED = 0
#: Steps each variant runs before timing (the loop variants add the epoch's last batch).
WARM_UP_STEPS = 3
#: Samples per timed chunk (whole steps; ~1 s): short, interleaved chunks see the same
#: machine, as this host's speed drifts by tens of percent over tens of seconds.
CHUNK_SAMPLES = 15_000


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


def gemm_ceiling(model: nn.Module, batch_size: int, repeats: int = 7) -> float:
    """GFLOP/s of one training step's GEMMs alone (same shapes and kernels, no other work).

    The best of ``repeats`` runs (a ceiling, measured like the peak) of the sequence:
    forward ``addmm(b, x, W^T)``, weight gradient ``g^T @ x`` and input gradient ``g @ W``
    (all but the first layer) per Linear. A training step can reach at most this.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ops: list[Callable[[], Tensor]] = []
    for i, lin in enumerate(linears):
        w, b = lin.weight.detach(), lin.bias.detach()
        x = torch.randn(batch_size, lin.in_features)
        g = torch.randn(batch_size, lin.out_features)
        ops += [lambda w=w, b=b, x=x: torch.addmm(b, x, w.t()), lambda g=g, x=x: g.t().mm(x)]
        if i > 0:
            ops.append(lambda g=g, w=w: g.mm(w))
    for op in ops:
        op()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for op in ops:
            op()
        times.append(time.perf_counter() - t0)
    return batch_size * gemm_flops_per_sample(model) / min(times) / 1e9


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


def other_cores(seconds: float = 0.25) -> float:
    """CPU use of other processes over the next ``seconds``, in cores."""
    (all0, self0), t0 = busy_cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    (all1, self1), t1 = busy_cpu_seconds(), time.perf_counter()
    return max(((all1 - all0) - (self1 - self0)) / (t1 - t0), 0.0)


def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait until other processes use under ``threshold`` cores, at most ``max_wait`` s.

    Returns the seconds waited. On a shared machine two OpenMP threads that lose a core
    to another process stall at every barrier, so a contended epoch can be many times
    slower; waiting for a quiet moment makes the rounds comparable.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait and other_cores() > threshold:
        pass
    return time.perf_counter() - t0


@dataclass
class Variant:
    """A training loop run in chunks of steps, continuing through epochs between chunks."""

    name: str
    steps: Iterator[int]  # each next() trains one step and returns its number of samples
    warm_up: Callable[[], None]
    threads: int | None = None
    warm_up_s: float = 0.0
    rates: list[float] = field(default_factory=list)

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        saved = torch.get_num_threads()

        @contextlib.contextmanager
        def ctx() -> Iterator[None]:
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            try:
                yield
            finally:
                torch.set_num_threads(saved)

        return ctx()

    def time_warm_up(self) -> None:
        """Run the warm-up steps and keep their wall seconds."""
        with self._threads():
            t0 = time.perf_counter()
            self.warm_up()
            self.warm_up_s = time.perf_counter() - t0

    def run(self, samples: int) -> float:
        """Train whole steps until ``samples`` samples are done; return the wall seconds."""
        with self._threads():
            done, t0 = 0, time.perf_counter()
            while done < samples:
                done += next(self.steps)
            seconds = time.perf_counter() - t0
        self.rates.append(done / seconds)
        return seconds


def dataloader_variant(data: Dataset, batch_size: int) -> Variant:
    """The idiomatic loop a user writes with a DataLoader over a TensorDataset."""
    model = f1()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(SEED))

    def train_step(xb: Tensor, yb: Tensor) -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()

    def steps() -> Iterator[int]:
        while True:  # one epoch per pass
            model.train()
            for xb, yb in loader:
                train_step(xb, yb)
                yield len(xb)

    def warm_up() -> None:
        for xb, yb in itertools.islice(loader, WARM_UP_STEPS):
            train_step(xb, yb)

    return Variant("dataloader (idiomatic)", steps(), warm_up)


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

    def steps() -> Iterator[int]:
        for epoch in itertools.count(1):
            model.train()
            loss_sum = torch.zeros(())
            for idx in batch_indices(n, config.batch_size, config.seed, epoch, dev):
                loss_sum += step(model, opt, x[idx], y[idx]) * idx.numel()
                yield idx.numel()
            float(loss_sum)

    def warm_up() -> None:  # a few full batches and the last one (a second shape to compile)
        batches = batch_indices(n, config.batch_size, config.seed, 0, dev)
        for idx in batches[:WARM_UP_STEPS] + batches[-1:]:
            step(model, opt, x[idx], y[idx])

    return Variant(name, steps(), warm_up, threads)


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
    ceiling: float  # GFLOP/s of the step's GEMMs alone, see gemm_ceiling
    ceiling_peak: float  # matmul peak measured just before the ceiling
    round_peaks: list[float]  # matmul peak measured just before each round
    other_cores: float  # mean CPU use of other processes during the timed rounds, in cores


def measure(
    data: Dataset, batch_size: int, rounds: int, quick: bool, quiet_wait: float
) -> BatchResult:
    """Warm up every variant, then time ``rounds`` interleaved chunks of steps of each."""
    vs = variants(data, batch_size, quick)
    for v in vs:
        wait_for_quiet(quiet_wait)
        v.time_warm_up()
        print(f"  [{batch_size}] {v.name}: warm-up {v.warm_up_s:.1f}s", file=sys.stderr)
    other_s = timed_s = 0.0
    round_peaks = []
    for r in range(rounds):
        wait_for_quiet(quiet_wait)
        round_peaks.append(matmul_peak(repeats=2)[0])
        k = r % len(vs)
        for v in vs[k:] + vs[:k]:
            (all0, self0) = busy_cpu_seconds()
            seconds = v.run(CHUNK_SAMPLES)
            (all1, self1) = busy_cpu_seconds()
            other_s += max((all1 - all0) - (self1 - self0), 0.0)
            timed_s += seconds
        print(f"  [{batch_size}] round {r + 1}/{rounds} done", file=sys.stderr)
    cfg = TrainConfig(net="f1", dataset="mnist", batch_size=batch_size, seed=SEED, epochs=1)
    wait_for_quiet(quiet_wait)
    run = train(cfg, dataset=data, device="cpu")
    wait_for_quiet(quiet_wait)
    ceiling_peak = matmul_peak(repeats=3)[0]
    ceiling = gemm_ceiling(f1(), batch_size)
    return BatchResult(batch_size, vs, data.num_train / run.history[-1]["seconds"], ceiling,
                       ceiling_peak, round_peaks, other_s / timed_s)


# -------------------------------------------------------------------------- reporting


def markdown(
    results: list[BatchResult],
    data_note: str,
    flops_per_sample: int,
    peaks: list[tuple[float, float]],
    command: str,
    seconds: float,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
    quiet_wait: float,
) -> str:
    """The section to paste into benchmarks/RESULTS.md."""
    lines = [
        f"## F1 training throughput ({datetime.date.today().isoformat()})",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores "
        f"({cpu_model()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        f"- Command: `{command}` ({seconds / 60:.1f} min)",
        f"- Data: {data_note}",
        f"- fp32 matmul peak (4096^3 torch.mm, best of 5): {peaks[0][0]:.1f} GFLOP/s at the "
        f"start, {peaks[-1][0]:.1f} at the end (medians {peaks[0][1]:.1f}, "
        f"{peaks[-1][1]:.1f}). This CPU's speed drifts even with no other process running "
        "(a shared host), so every % of peak below divides by a peak measured (best of 2) "
        "just before the same round, not by one number for the whole run",
        f"- GEMM FLOPs per training sample: {flops_per_sample:,} (exact count, see script)",
        f"- Load average at start / end: {_fmt_load(loads[0])} / {_fmt_load(loads[1])} "
        "(other work on the machine lowers every number; the ratios are paired per round)",
        "",
    ]
    for res in results:
        base = res.variants[0].rates
        peaks_r = res.round_peaks
        lines += [
            f"### Batch {res.batch_size} ({len(base)} rounds of {CHUNK_SAMPLES:,}+ samples "
            "per variant)",
            "",
            f"Other processes used {res.other_cores:.2f} of the {os.cpu_count()} cores on "
            "average during the timed chunks (each round first waits, up to "
            f"{quiet_wait:.0f} s, for them to go quiet). Peaks before the rounds: "
            + ", ".join(f"{p:.0f}" for p in peaks_r) + " GFLOP/s.",
            "",
            "| variant | samples/s (median) | min - max | vs dataloader: median of "
            "per-round ratios (min - max) | % of peak: median over rounds | warm-up s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for v in res.variants:
            med = statistics.median(v.rates)
            ratios = [a / b for a, b in zip(v.rates, base, strict=True)]
            pct = [100 * a * flops_per_sample / 1e9 / p for a, p in zip(v.rates, peaks_r,
                                                                       strict=True)]
            lines.append(
                f"| {v.name} | {med:,.0f} | {min(v.rates):,.0f} - {max(v.rates):,.0f} | "
                f"{statistics.median(ratios):.3f}x ({min(ratios):.2f} - {max(ratios):.2f}) | "
                f"{statistics.median(pct):.1f}% | "
                f"{v.warm_up_s:.1f} |"
            )
        lines += [
            "",
            f"`train()` cross-check: the epoch seconds the loop itself logs give "
            f"{res.logged_rate:,.0f} samples/s "
            f"({100 * res.logged_rate * flops_per_sample / 1e9 / statistics.median(peaks_r):.1f}"
            "% of the rounds' median peak).",
            "",
            f"Ceiling: this step's GEMMs alone (same shapes, nothing else) run at "
            f"{res.ceiling:.1f} GFLOP/s = {100 * res.ceiling / res.ceiling_peak:.1f}% of the "
            f"peak measured just before ({res.ceiling_peak:.1f}); no training loop at this "
            "batch size can reach more.",
            "",
        ]
    return "\n".join(lines)


def _fmt_load(load: tuple[float, ...]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def main() -> None:
    """Parse arguments, measure, print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20,
                        help=f"timed chunks of {CHUNK_SAMPLES:,} samples per variant")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 6000])
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds each round may wait for other processes to go quiet")
    parser.add_argument("--quick", action="store_true",
                        help="4 rounds, fewer variants: a smoke run, not for RESULTS.md")
    args = parser.parse_args()
    rounds = 4 if args.quick else args.rounds
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    data, data_note = load_data()
    wait_for_quiet(args.quiet_wait)
    peaks = [matmul_peak()]
    flops = gemm_flops_per_sample(f1())
    results = [measure(data, bs, rounds, args.quick, args.quiet_wait) for bs in args.batch_sizes]
    wait_for_quiet(args.quiet_wait)
    peaks.append(matmul_peak())
    command = " ".join([".venv/bin/python", "benchmarks/bench_train.py", *sys.argv[1:]])
    print(markdown(results, data_note, flops, peaks, command, time.perf_counter() - t_start,
                   (load_start, os.getloadavg()), args.quiet_wait))


if __name__ == "__main__":
    main()
