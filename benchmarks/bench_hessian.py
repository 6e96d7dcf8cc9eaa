"""Top Hessian eigenvalue and trace of F1 on 10,000 samples: sharpminima vs PyHessian 0.1.

PyHessian is not a dependency. Install it out of the way and point this script at it:

    pip install --no-deps --target /tmp/pyh pyhessian==0.1
    .venv/bin/python benchmarks/bench_hessian.py --pyhessian-path DIR

Without it the script prints why and exits 0. The result is a markdown section on stdout.

What is compared (both tools see the same model, the same 10,000 samples in the same 10
batches of 1,000, BatchNorm in eval mode -- PyHessian 0.1 calls ``model.eval()`` in its
constructor, so ours uses ``bn_mode="eval"``):

* Normalisation: PyHessian 0.1's ``dataloader_hv_product`` multiplies each batch's HVP of
  the batch-mean loss by the batch size and divides the sum by the sample count, which is
  the HVP of the mean loss over all samples -- the quantity our ``ModelObjective`` defines.
  (A per-batch *sum* without that weighting would scale the Hessian by the number of
  batches.) The script checks this numerically: one HVP of each tool on the same vector.
* Top eigenvalue: PyHessian's power iteration (``eigenvalues(top_n=1)``, its defaults
  ``maxIter=100, tol=1e-3`` on the relative change of the eigenvalue) against our Lanczos
  (``tol=1e-3`` on the relative residual). Both are measured against a tight Lanczos
  reference (``tol=1e-6``, same seed, so the ``tol=1e-3`` run is its prefix and its
  ``history`` tells how many products our Lanczos needs to match PyHessian's accuracy).
* Time: other jobs may share the machine, so besides the measured seconds the script
  times single HVPs of both tools interleaved (median of 3) and reports
  ``HVPs x seconds per HVP`` ratios, which load drift affects far less. Ours come from the
  gradient graph kept at the point (``Objective.hvp_at``, what ``HessianOperator`` uses:
  one gradient pass to build it, then one reverse pass per product); plain double
  backprop (a forward, a backward and that reverse pass per product, as PyHessian does)
  is timed beside it.
* Trace: PyHessian's Hutchinson (``trace()``, defaults ``maxIter=100, tol=1e-3`` on the
  relative change of the running mean) against ours with a fixed number of Rademacher
  probes and a standard error; PyHessian reports no error bar, so one is computed here
  from the per-probe values it returns.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from sharpminima.landscape.eigen import hessian_eigenvalues
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.trace import hessian_trace


def import_pyhessian(path: str):
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        from pyhessian import hessian
    except ImportError as exc:
        return None, str(exc)
    return hessian, ""


def load_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from sharpminima.data import load

        ds = load("mnist", train_limit=n)
        return ds.x_train, ds.y_train, f"real MNIST, the first {n:,} training images"
    except Exception as exc:  # any failure (no module, no network): synthetic data instead
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 784, generator=g)
        teacher = torch.randn(784, 10, generator=g)
        y = (x @ teacher).argmax(1)
        return x, y, f"synthetic (N, 784) data with teacher labels (MNIST unavailable: {exc})"


def build_f1() -> tuple[nn.Module, str]:
    try:
        from sharpminima.models import build

        return build("f1"), 'sharpminima.models.build("f1")'
    except ImportError:
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = 784
        for _ in range(5):
            layers += [nn.Linear(fan_in, 512), nn.BatchNorm1d(512), nn.ReLU()]
            fan_in = 512
        layers.append(nn.Linear(fan_in, 10))
        return nn.Sequential(*layers), "local F1 (784 -> 5 x [512, BN, ReLU] -> 10)"


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(256):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--trace-samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--pyhessian-path", default=os.environ.get("PYHESSIAN_PATH", "/tmp/pyh"),
        help="folder holding the pyhessian package (pip install --no-deps --target ...)",
    )
    args = parser.parse_args()

    pyh_hessian, why = import_pyhessian(args.pyhessian_path)
    if pyh_hessian is None:
        print(
            f"SKIPPED: pyhessian is not importable ({why}). Install it out of the way with\n"
            f"  pip install --no-deps --target /tmp/pyh pyhessian==0.1\n"
            f"and rerun with --pyhessian-path /tmp/pyh"
        )
        return

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    x_data, y_data, data_desc = load_data(args.samples, args.seed)
    model, model_desc = build_f1()
    num_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    train(model, x_data, y_data, args.epochs, args.seed)
    train_seconds = time.perf_counter() - t0

    obj = ModelObjective(model, x_data, y_data, bn_mode="eval", chunk_size=args.chunk)
    x0 = obj.base_point()
    train_loss, train_acc = obj.loss_and_accuracy(x0)

    batches = list(zip(x_data.split(args.chunk), y_data.split(args.chunk), strict=True))
    criterion = nn.CrossEntropyLoss()

    # -- normalisation check and warm-up: one HVP of each tool on the same vector ----------
    g = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(x0.numel(), generator=g)
    ours_hv = obj.hvp(x0, v)
    pyh = pyh_hessian(model, criterion, dataloader=batches, cuda=False)
    pyh_calls = [0]
    pyh_product = pyh.dataloader_hv_product

    def counted(vec):
        pyh_calls[0] += 1
        return pyh_product(vec)

    pyh.dataloader_hv_product = counted
    shapes = [p.shape for p in pyh.params]
    v_list = list(v.split([math.prod(s) for s in shapes]))
    v_list = [t.reshape(s) for t, s in zip(v_list, shapes, strict=True)]
    _, pyh_hv = pyh.dataloader_hv_product(v_list)
    hv_rel = float((flat(pyh_hv) - ours_hv).norm() / ours_hv.norm())

    # -- cost of one HVP, interleaved so that load from other jobs hits both alike ----------
    # ours: products from the gradient graph kept at x0 (what HessianOperator uses), its
    # one-off build timed apart; "plain": double backprop recomputing the graph each time
    products = obj.hvp_at(x0)
    t0 = time.perf_counter()
    products(v)
    first_product_s = time.perf_counter() - t0
    per_hvp: dict[str, list[tuple[float, float]]] = {"ours": [], "plain": [], "pyh": []}
    for _ in range(3):
        for name, fn in (("ours", lambda: products(v)), ("plain", lambda: obj.hvp(x0, v)),
                         ("pyh", lambda: pyh.dataloader_hv_product(v_list))):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            per_hvp[name].append((time.perf_counter() - t0, time.process_time() - c0))
    hvp_wall = {k: statistics.median(t for t, _ in x) for k, x in per_hvp.items()}
    hvp_cpu = {k: statistics.median(c for _, c in x) for k, x in per_hvp.items()}
    build_s = max(0.0, first_product_s - hvp_wall["ours"])  # one gradient pass, graph kept
    graph_gb = products.graph_bytes / 1e9
    products.release()  # free the graph before the measures below build their own

    # -- PyHessian: top eigenvalue, then trace ------------------------------------------
    torch.manual_seed(args.seed)
    pyh_calls[0] = 0
    t0, c0 = time.perf_counter(), time.process_time()
    pyh_values, _ = pyh.eigenvalues(top_n=1)
    pyh_eig_s, pyh_eig_cpu = time.perf_counter() - t0, time.process_time() - c0
    pyh_eig, pyh_eig_hvps = float(pyh_values[0]), pyh_calls[0]

    torch.manual_seed(args.seed)
    pyh_calls[0] = 0
    t0, c0 = time.perf_counter(), time.process_time()
    pyh_trace_samples = pyh.trace()
    pyh_trace_s, pyh_trace_cpu = time.perf_counter() - t0, time.process_time() - c0
    pyh_trace_hvps = pyh_calls[0]
    pyh_trace = statistics.fmean(pyh_trace_samples)
    pyh_trace_se = (
        statistics.stdev(pyh_trace_samples) / math.sqrt(len(pyh_trace_samples))
        if len(pyh_trace_samples) > 1 else math.nan
    )

    # -- ours: top eigenvalue, a tight reference, trace -----------------------------------
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    c0 = time.process_time()
    ours = hessian_eigenvalues(obj, x0, k=1, tol=1e-3, seed=args.seed)
    ours_eig_cpu = time.process_time() - c0
    # Same seed: our tol=1e-3 run is a prefix of this one, so its history gives our
    # estimate after every product.
    reference = hessian_eigenvalues(obj, x0, k=1, tol=1e-6, seed=args.seed)
    c0 = time.process_time()
    ours_trace = hessian_trace(obj, x0, num_probes=args.trace_samples, seed=args.seed)
    ours_trace_cpu = time.process_time() - c0

    # -- did anything touch the model? ---------------------------------------------------
    after = model.state_dict()
    untouched = all(torch.equal(after[k], state_before[k]) for k in state_before)

    ref = reference.value
    ours_err = abs(ours.value - ref) / abs(ref)
    pyh_err = abs(pyh_eig - ref) / abs(ref)
    # Products our Lanczos needs to be at least as accurate as PyHessian's answer.
    ours_equal = next(
        (j + 1 for j, t in enumerate(reference.history) if abs(t - ref) / abs(ref) <= pyh_err),
        reference.num_matvecs,
    )
    est_ratio = (pyh_eig_hvps * hvp_wall["pyh"]) / (build_s + ours.num_matvecs * hvp_wall["ours"])
    est_ratio_equal = (pyh_eig_hvps * hvp_wall["pyh"]) / (build_s + ours_equal * hvp_wall["ours"])
    load_end = os.getloadavg()[0]
    total_s = time.perf_counter() - t_start
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    cmd = "python " + " ".join(sys.argv)
    lines = [
        f"## Hessian top eigenvalue and trace: sharpminima vs PyHessian 0.1 "
        f"(F1, {args.samples:,} samples)",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {cpu}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads (CPU, float32); 1-min load average {load_start:.1f} at the start, "
        f"{load_end:.1f} at the end (other jobs share the machine: seconds are noisier than "
        f"HVP counts); whole script {total_s / 60:.1f} min.",
        f"- Command: `{cmd}`",
        f"- Data: {data_desc}. Network: {model_desc}, {num_params:,} parameters, trained "
        f"{args.epochs} epochs with Adam (lr 1e-3, batch 256) in {train_seconds:.0f} s; at "
        f"the measured point the train loss is {train_loss:.4f}, accuracy {train_acc:.2f}%.",
        f"- Loss: mean cross-entropy over the {args.samples:,} samples, {len(batches)} "
        f"batches of {args.chunk:,}; BatchNorm in eval mode (running statistics) for both "
        "tools (PyHessian calls `model.eval()` in its constructor).",
        "- Normalisation: PyHessian 0.1's `dataloader_hv_product` weights each batch HVP "
        "of the batch-mean loss by its size and divides by the sample count: the Hessian "
        "of the mean loss, as ours. One HVP of each on the same vector differs by "
        f"{hv_rel:.1e} (relative), so the values below are directly comparable.",
        f"- Reference top eigenvalue: our Lanczos at tol 1e-6: {ref:.6g} "
        f"({reference.num_matvecs} HVPs; same seed, so the tol 1e-3 run is its prefix).",
        "",
        "| quantity | sharpminima | PyHessian 0.1 | ratio (PyHessian / ours) |",
        "|---|---|---|---|",
        f"| top eigenvalue | {ours.value:.6g} (Lanczos, residual tol 1e-3) | "
        f"{pyh_eig:.6g} (power iteration, defaults) | "
        f"rel. difference {abs(pyh_eig - ours.value) / abs(ours.value):.1e} |",
        f"| relative error vs reference | {ours_err:.1e} | {pyh_err:.1e} | |",
        f"| HVPs | {ours.num_matvecs} | {pyh_eig_hvps} | "
        f"{pyh_eig_hvps / ours.num_matvecs:.2f}x |",
        f"| HVPs to PyHessian's accuracy ({pyh_err:.1e}) | {ours_equal} (Lanczos history) | "
        f"{pyh_eig_hvps} | {pyh_eig_hvps / ours_equal:.2f}x |",
        f"| seconds per HVP (median of 3, interleaved), wall / CPU | "
        f"{hvp_wall['ours']:.2f} / {hvp_cpu['ours']:.2f} | "
        f"{hvp_wall['pyh']:.2f} / {hvp_cpu['pyh']:.2f} | "
        f"{hvp_wall['pyh'] / hvp_wall['ours']:.2f}x |",
        f"| our HVP from the kept graph vs plain double backprop (s per HVP) | "
        f"{hvp_wall['ours']:.2f} vs {hvp_wall['plain']:.2f} | | "
        f"{hvp_wall['plain'] / hvp_wall['ours']:.2f}x faster; building the graph once took "
        f"{build_s:.2f} s, and it holds {graph_gb:.2f} GB |",
        f"| estimated time ratio (build + HVPs x s/HVP), at tol / at equal accuracy | | | "
        f"{est_ratio:.2f}x / {est_ratio_equal:.2f}x |",
        f"| measured wall seconds | {ours.cost.seconds:.1f} | {pyh_eig_s:.1f} | "
        f"{pyh_eig_s / ours.cost.seconds:.2f}x |",
        f"| measured CPU seconds (process) | {ours_eig_cpu:.1f} | {pyh_eig_cpu:.1f} | "
        f"{pyh_eig_cpu / ours_eig_cpu:.2f}x |",
        f"| trace | {ours_trace.value:.5g} +- {ours_trace.stderr:.2g} "
        f"({ours_trace.num_samples} Rademacher probes) | {pyh_trace:.5g} "
        f"(+- {pyh_trace_se:.2g} computed here; {len(pyh_trace_samples)} probes) | "
        f"difference = {(pyh_trace - ours_trace.value) / ours_trace.stderr:+.1f} of our "
        "stderr |",
        f"| trace HVPs / wall s / CPU s | {ours_trace.num_matvecs} / "
        f"{ours_trace.cost.seconds:.1f} / {ours_trace_cpu:.1f} | {pyh_trace_hvps} / "
        f"{pyh_trace_s:.1f} / {pyh_trace_cpu:.1f} | CPU seconds per HVP "
        f"{(pyh_trace_cpu / pyh_trace_hvps) / (ours_trace_cpu / ours_trace.num_matvecs):.2f}x |",
        "",
        f"Our measures left every parameter and BatchNorm buffer bit-identical: {untouched} "
        "(PyHessian leaves the model in eval mode with `.grad` filled).",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
