"""The speed issue's GPU benchmarks in one run: C2 training, trials, landscape, precision.

Usage (from the repository root)::

    PYTHONPATH=src python3 benchmarks/bench_gpu.py --out DIR     # on a GPU machine (a few minutes on an H200)
    .venv/bin/python benchmarks/bench_gpu.py --quick --device cpu  # a smoke run (tests run it)

``benchmarks/gpu_check.sh`` runs this and the ``gpu``-marked tests in one call of a lent
GPU machine. Everything is measured in one process, so all paths meet the same device, on
synthetic data of the paper's shapes (CIFAR-10: 50,000 x 3 x 32 x 32, 10 classes; MNIST:
60,000 x 1 x 28 x 28); the timings do not depend on the pixel values (uniform noise and
labels, except the precision check's learnable problem). Every time is wall
time after ``torch.cuda.synchronize``; the first epoch of every run is a warm-up (cuDNN
autotuning, allocator growth) and is not timed.

1. **C2 training** (VGG-like, Adam, batch 256 and 5000): seconds per epoch of

   * ``plain``: the loop a user writes: ``DataLoader(TensorDataset(x, y), shuffle=True,
     pin_memory=True)`` on host tensors, each batch copied to the GPU, PyTorch's default
     precision (fp32 matmuls; cuDNN's default allows TF32 convolutions) and memory format
     (the reference of the ratios);
   * ``plain, data on GPU``: the same loop indexing GPU-resident tensors (what the data
     placement alone buys);
   * ``sharpminima``: :func:`sharpminima.train.train` (data resident on the GPU, TF32,
     channels_last, cuDNN autotuning, no host synchronisation inside the epoch);
   * ``sharpminima bf16``: the same with the opt-in bf16 autocast of the forward pass
     (``method_args=(("autocast", "bf16"),)``).

2. **Vectorised trials**: K trials (seeds 0..K-1) of F1 (MNIST shape) and C1 (CIFAR shape)
   at batch 256, trained by :func:`sharpminima.train.vectorized.train_vectorized` as one
   batched computation and by K sequential :func:`sharpminima.train.train` calls. The
   issue's target: K = 5 vectorised trials cost at most 1.5x one trial.

3. **C2 landscape**: Keskar sharpness (eps 1e-3, full space, 10 L-BFGS-B iterations, BN in
   batch mode over chunks of 1000, all 50,000 training samples) and the Hessian's top
   eigenvalue (Lanczos, tol 1e-3, 10,000 samples, kept gradient graph) of a C2 network
   trained one epoch at batch 256, in seconds. The sharpness is measured twice, with
   cuDNN's TF32 convolutions as PyTorch left them (on by default) and switched over, to
   show what TF32 does to the measured value.

4. **Precision**: C2 on a learnable synthetic problem of CIFAR's shape
   (:func:`sharpminima.data.synthetic.synthetic`), trained ``--precision-epochs`` epochs
   with the same seed and data order in full float32 (TF32 off), with TF32 (the default
   fast path) and with bf16 autocast: final training loss, test accuracy, seconds per epoch
   and the relative distance of the weights from the float32 run's; a second float32 run
   gives the noise floor (cuDNN's autotuned algorithms need not be deterministic). This is
   the accuracy check of the fast path's TF32 and of the bf16 option. It runs before 3,
   the longest section.

A section that fails is recorded with its error (traceback on stderr) and the others still run.

Results go to stdout as a markdown section for ``RESULTS.md`` and, with ``--out``, to
``bench_gpu.md`` and ``bench_gpu.json`` there, rewritten (atomically) after every
section, so a run stopped by a time limit still returns what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from sharpminima.config import TrainConfig
from sharpminima.data.base import Dataset
from sharpminima.data.synthetic import synthetic as synthetic_problem
from sharpminima.landscape import ModelObjective, flatten_params
from sharpminima.landscape.eigen import hessian_eigenvalues
from sharpminima.landscape.sharpness import keskar_sharpness
from sharpminima.models import build
from sharpminima.store.checkpoints import atomic_write_text
from sharpminima.store.provenance import cpu_model
from sharpminima.train import perf, train
from sharpminima.train.vectorized import train_vectorized

BF16 = (("autocast", "bf16"),)
CIFAR_SHAPE = (3, 32, 32)
MNIST_SHAPE = (1, 28, 28)


def synthetic(num_train: int, num_test: int, shape: tuple[int, ...], seed: int = 0) -> Dataset:
    """Uniform pixels and uniform labels of the given shape (timings only)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(num_train + num_test, *shape, generator=g)
    y = torch.randint(0, 10, (num_train + num_test,), generator=g)
    return Dataset("synthetic", x[:num_train], y[:num_train], x[num_train:], y[num_train:], 10)


def learnable(num_train: int, num_test: int, shape: tuple[int, ...]) -> Dataset:
    """A learnable problem of the given shape (:func:`sharpminima.data.synthetic.synthetic`)."""
    return synthetic_problem(num_train, num_test, input_shape=shape, num_classes=10, seed=0)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def plain_epochs(
    net: str, data: Dataset, batch_size: int, epochs: int, dev: torch.device, on_device: bool
) -> list[float]:
    """Seconds of each epoch of the plain loop (fresh C2, Adam, PyTorch's default flags and layout)."""
    torch.manual_seed(0)
    model = build(net, data.input_shape, 10).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if on_device:
        x, y = data.x_train.to(dev), data.y_train.to(dev)
        g = torch.Generator(device=dev).manual_seed(0)

        def batches():
            for idx in torch.randperm(len(y), device=dev, generator=g).split(batch_size):
                yield x[idx], y[idx]
    else:
        loader = DataLoader(
            TensorDataset(data.x_train, data.y_train),
            batch_size=batch_size,
            shuffle=True,
            pin_memory=dev.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )

        def batches():
            for xb, yb in loader:
                yield xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)

    seconds = []
    for _ in range(epochs):
        model.train()
        sync(dev)
        t0 = time.perf_counter()
        for xb, yb in batches():
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        sync(dev)
        seconds.append(time.perf_counter() - t0)
    return seconds


def timed_epochs(runs: list) -> float:
    """Training seconds of all runs together per timed epoch (epoch 1 is the warm-up)."""
    per_run = [statistics.median(h["seconds"] for h in r.history[1:] or r.history) for r in runs]
    return sum(per_run)


def bench_c2_training(args: argparse.Namespace, dev: torch.device) -> list[dict[str, Any]]:
    data = synthetic(args.cifar_train, args.test, args.cifar_shape)
    rows = []
    for batch_size in args.batch_sizes:
        epochs = 1 + args.epochs
        say(f"{args.net.upper()} batch {batch_size}: plain loop")
        plain = statistics.median(plain_epochs(args.net, data, batch_size, epochs, dev, False)[1:])
        say(f"{args.net.upper()} batch {batch_size}: plain loop, data on the device")
        resident = statistics.median(plain_epochs(args.net, data, batch_size, epochs, dev, True)[1:])
        say(f"{args.net.upper()} batch {batch_size}: sharpminima")
        cfg = TrainConfig(
            net=args.net, dataset="synthetic", batch_size=batch_size, epochs=epochs, optimizer="adam"
        )
        ours = timed_epochs([train(cfg, dataset=data, device=dev)])
        bf16 = None
        if args.bf16:
            say(f"{args.net.upper()} batch {batch_size}: sharpminima, bf16 autocast")
            bf16 = timed_epochs([train(cfg.replace(method_args=BF16), dataset=data, device=dev)])
        rows.append(
            {
                "batch_size": batch_size,
                "plain_s": plain,
                "resident_s": resident,
                "ours_s": ours,
                "bf16_s": bf16,
                "speedup": plain / ours,
                "resident_speedup": plain / resident,
                "bf16_speedup": None if bf16 is None else plain / bf16,
            }
        )
    return rows


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Train with TF32 off (matmuls and cuDNN) but the rest of the fast path on."""

    def flags() -> None:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    saved = perf.set_cuda_flags
    perf.set_cuda_flags = flags
    try:
        yield
    finally:
        perf.set_cuda_flags = saved


def bench_precision(args: argparse.Namespace, dev: torch.device) -> list[dict[str, Any]]:
    """C2 trained with the same seed and data order in fp32, TF32 (default) and bf16 autocast."""
    data = learnable(args.cifar_train, args.test, args.cifar_shape)
    cfg = TrainConfig(net=args.net, dataset="synthetic", batch_size=args.trial_batch,
                      epochs=args.precision_epochs, optimizer="adam")
    say(f"precision: {args.net.upper()} in full float32, twice (the second run is the noise floor)")
    with full_float32():
        ref = train(cfg, dataset=data, device=dev)
        again = train(cfg, dataset=data, device=dev)
    say(f"precision: {args.net.upper()} with TF32 (the default fast path)")
    tf32 = train(cfg, dataset=data, device=dev)
    runs = [("fp32", ref), ("fp32 again", again), ("tf32", tf32)]
    if args.bf16:
        say(f"precision: {args.net.upper()} with bf16 autocast")
        runs.append(("bf16", train(cfg.replace(method_args=BF16), dataset=data, device=dev)))
    x_ref = flatten_params(ref.model).detach()
    rows = []
    for name, run in runs:
        x = flatten_params(run.model).detach()
        rows.append({
            "precision": name,
            "epochs": len(run.history),
            "train_loss": run.final["train_loss"],
            "test_acc": run.final["test_acc"],
            "epoch_s": statistics.median(h["seconds"] for h in run.history[1:] or run.history),
            "weights_rel_diff": float((x - x_ref).norm() / x_ref.norm()),
        })
    return rows


def bench_trials(args: argparse.Namespace, dev: torch.device) -> list[dict[str, Any]]:
    rows = []
    seeds = list(range(args.trials))
    for net, shape, num_train in (
        ("f1", args.mnist_shape, args.mnist_train),
        ("c1", args.cifar_shape, args.cifar_train),
    ):
        data = synthetic(num_train, args.test, shape)
        cfg = TrainConfig(
            net=net,
            dataset="synthetic",
            batch_size=args.trial_batch,
            epochs=1 + args.epochs,
            optimizer="adam",
        )
        say(f"{args.trials} {net.upper()} trials: vectorised")
        vec = timed_epochs(train_vectorized(cfg, seeds, dataset=data, device=dev))
        say(f"{args.trials} {net.upper()} trials: sequential")
        seq_runs = [train(cfg.replace(seed=s), dataset=data, device=dev) for s in seeds]
        seq = timed_epochs(seq_runs)
        one = seq / len(seq_runs)
        rows.append(
            {
                "net": net,
                "batch_size": args.trial_batch,
                "trials": args.trials,
                "vec_s": vec,
                "seq_s": seq,
                "one_s": one,
                "vec_over_seq": vec / seq,
                "vec_over_one": vec / one,
            }
        )
    return rows


def timed(fn: Callable[[], Any], dev: torch.device) -> tuple[Any, float]:
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t0


def bench_c2_landscape(args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    data = synthetic(args.cifar_train, args.test, args.cifar_shape)
    say(f"{args.net.upper()} landscape: training the point (1 epoch, batch 256)")
    cfg = TrainConfig(
        net=args.net, dataset="synthetic", batch_size=min(256, args.cifar_train), epochs=1, optimizer="adam"
    )
    model = train(cfg, dataset=data, device=dev).model
    x = flatten_params(model).detach()
    xs, ys = data.x_train.to(dev), data.y_train.to(dev)
    say(f"{args.net.upper()} landscape: Keskar sharpness over {len(ys)} samples")
    obj = ModelObjective(model, xs, ys, bn_mode="batch", chunk_size=args.chunk)
    obj.loss_and_grad(x)  # untimed: kernel loading and cuDNN's choices for this layout happen here
    sharp, sharp_s = timed(lambda: keskar_sharpness(obj, x, eps=1e-3, max_iters=args.maxiter), dev)
    say(f"{args.net.upper()} landscape: the same sharpness with cuDNN's TF32 off")
    tf32 = torch.backends.cudnn.allow_tf32  # PyTorch's default is on, for convolutions
    torch.backends.cudnn.allow_tf32 = not tf32
    try:
        other, other_s = timed(lambda: keskar_sharpness(obj, x, eps=1e-3, max_iters=args.maxiter), dev)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    n_h = min(args.hessian_samples, len(ys))
    say(f"{args.net.upper()} landscape: Hessian top eigenvalue over {n_h} samples")
    obj_h = ModelObjective(model, xs[:n_h], ys[:n_h], bn_mode="batch", chunk_size=args.chunk)
    eig, eig_s = timed(lambda: hessian_eigenvalues(obj_h, x, k=1, tol=1e-3), dev)
    return {
        "params": x.numel(),
        "samples": len(ys),
        "chunk": args.chunk,
        "sharpness": sharp.value,
        "sharpness_s": sharp_s,
        "sharpness_evals": sharp.num_evals,
        "cudnn_tf32": tf32,
        "sharpness_other_tf32": other.value,
        "sharpness_other_tf32_s": other_s,
        "hessian_samples": n_h,
        "top_eigenvalue": eig.value,
        "hessian_s": eig_s,
        "hvps": eig.num_matvecs,
    }


def say(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(meta: dict[str, Any], res: dict[str, Any]) -> str:
    """The results as a markdown section for RESULTS.md."""
    quick = " (quick smoke run)" if meta["quick"] else ""
    lines = [
        f"## GPU: {meta['net'].upper()} training, vectorised trials, {meta['net'].upper()} landscape, "
        f"precision{quick}",
        "",
        f"- Machine: {meta['device_name']}, torch {meta['torch']} (CUDA {meta['cuda']}), "
        f"device `{meta['device']}`",
        f"- Date: {meta['date']} UTC",
        f"- Command: `{meta['command']}`",
        "- Data: synthetic, the paper's shapes; the first epoch of every timed run is not timed",
        "",
    ]
    if isinstance(res.get("c2_training"), dict) and "error" in res["c2_training"]:
        lines += [f"**c2_training** failed: {res['c2_training']['error']}", ""]
    elif "c2_training" in res:
        lines += [
            f"**{meta['net'].upper()} training** (Adam, {meta['cifar_train']} samples), seconds per epoch; "
            "speed-up = plain DataLoader loop / the variant:",
            "",
            "| batch | plain DataLoader loop s | plain, data on device s | sharpminima s | "
            "sharpminima bf16 s | speed-up: data on device | sharpminima | sharpminima bf16 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['batch_size']} | {r['plain_s']:.3f} | {r['resident_s']:.3f} | {r['ours_s']:.3f} | "
            f"{_num(r['bf16_s'], '.3f')} | {r['resident_speedup']:.2f}x | {r['speedup']:.2f}x | "
            f"{_num(r['bf16_speedup'], '.2f')}{'' if r['bf16_speedup'] is None else 'x'} |"
            for r in res["c2_training"]
        ]
        lines.append("")
    if isinstance(res.get("trials"), dict) and "error" in res["trials"]:
        lines += [f"**trials** failed: {res['trials']['error']}", ""]
    elif "trials" in res:
        lines += [
            "**Vectorised trials** (Adam), training seconds per epoch of all trials together:",
            "",
            "| net | batch | trials | vectorised s | sequential s | one trial s | "
            "vectorised / sequential | vectorised / one trial |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['net'].upper()} | {r['batch_size']} | {r['trials']} | {r['vec_s']:.3f} | "
            f"{r['seq_s']:.3f} | {r['one_s']:.3f} | {r['vec_over_seq']:.2f} | {r['vec_over_one']:.2f} |"
            for r in res["trials"]
        ]
        lines.append("")
    if isinstance(res.get("c2_landscape"), dict) and "error" in res["c2_landscape"]:
        lines += [f"**c2_landscape** failed: {res['c2_landscape']['error']}", ""]
    elif "c2_landscape" in res:
        r = res["c2_landscape"]
        other = "off" if r["cudnn_tf32"] else "on"
        lines += [
            f"**{meta['net'].upper()} landscape** ({r['params']:,} parameters, BN batch mode, "
            f"chunks of {r['chunk']}, "
            f"cuDNN TF32 {'on' if r['cudnn_tf32'] else 'off'} as PyTorch left it):",
            "",
            "| measure | samples | value | seconds | work |",
            "|---|---:|---:|---:|---|",
            f"| Keskar sharpness, eps 1e-3, full space | {r['samples']} | {r['sharpness']:.4g} | "
            f"{r['sharpness_s']:.2f} | {r['sharpness_evals']} evaluations |",
            f"| the same, cuDNN TF32 {other} | {r['samples']} | {r['sharpness_other_tf32']:.4g} | "
            f"{r['sharpness_other_tf32_s']:.2f} | |",
            f"| Hessian top eigenvalue (Lanczos) | {r['hessian_samples']} | {r['top_eigenvalue']:.4g} | "
            f"{r['hessian_s']:.2f} | {r['hvps']} HVPs |",
            "",
        ]
    if isinstance(res.get("precision"), dict) and "error" in res["precision"]:
        lines += [f"**precision** failed: {res['precision']['error']}", ""]
    elif "precision" in res:
        lines += [
            f"**Precision**: {meta['net'].upper()} on a learnable synthetic problem, same seed and "
            "data order; "
            "weights compared with the fp32 run:",
            "",
            "| precision | epochs | final train loss | test acc % | s/epoch | ‖w - w_fp32‖ / ‖w_fp32‖ |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['precision']} | {r['epochs']} | {r['train_loss']:.4f} | {r['test_acc']:.2f} | "
            f"{r['epoch_s']:.3f} | {r['weights_rel_diff']:.1e} |"
            for r in res["precision"]
        ]
        lines.append("")
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[argparse.Namespace, torch.device], Any]] = {
    "c2_training": bench_c2_training,
    "trials": bench_trials,
    "precision": bench_precision,
    "c2_landscape": bench_c2_landscape,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not for RESULTS.md")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_gpu.md and bench_gpu.json")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument(
        "--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 5000], help="C2 training batches")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--trial-batch", type=int, default=256)
    parser.add_argument("--cifar-train", type=int, default=50_000)
    parser.add_argument("--mnist-train", type=int, default=60_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1000, help="samples per forward pass of the landscape")
    parser.add_argument("--maxiter", type=int, default=10, help="L-BFGS-B iterations of the sharpness")
    parser.add_argument("--hessian-samples", type=int, default=10_000)
    parser.add_argument("--net", default="c2", help="the conv net of sections 1, 3 and 4 (the issue's: c2)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 autocast runs")
    parser.add_argument("--precision-epochs", type=int, default=3, help="epochs of each precision run")
    args = parser.parse_args(argv)
    args.cifar_shape, args.mnist_shape = CIFAR_SHAPE, MNIST_SHAPE
    if args.quick:
        args.epochs, args.batch_sizes, args.trials, args.trial_batch = 1, [16, 64], 2, 16
        args.cifar_train, args.mnist_train, args.test = 64, 128, 32
        args.cifar_shape, args.mnist_shape = (3, 8, 8), (1, 8, 8)
        args.net = "c1"  # C2's 15M parameters take minutes on a CPU even on tiny data
        args.bf16 = args.bf16 and args.device != "cpu"  # bf16 convolutions crawl on CPUs
        args.chunk, args.maxiter, args.hessian_samples, args.precision_epochs = 32, 2, 32, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections; print (and write) the markdown; return the results."""
    args = parse(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but torch sees no GPU; use --device cpu for a smoke run")
    meta = {
        "quick": args.quick,
        "device": str(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}",
        "command": " ".join(
            [os.path.basename(sys.executable), *(sys.argv if argv is None else ["bench_gpu.py", *argv])]
        ),
        "cifar_train": args.cifar_train,
        "net": args.net,
    }
    results: dict[str, Any] = {}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            results[name] = SECTIONS[name](args, dev)
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        say(f"{name}: {time.perf_counter() - t0:.1f} s")
        if args.out is not None:
            atomic_write_text(
                args.out / "bench_gpu.json", json.dumps({"meta": meta, "results": results}, indent=2)
            )
            atomic_write_text(args.out / "bench_gpu.md", markdown(meta, results))
    print(markdown(meta, results))
    return results


if __name__ == "__main__":
    main()
