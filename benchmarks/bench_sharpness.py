"""Keskar sharpness of F1 on MNIST: sharpminima vs a straightforward reference implementation.

    .venv/bin/python benchmarks/bench_sharpness.py            # 60,000 samples (~10 min)
    .venv/bin/python benchmarks/bench_sharpness.py --quick    # 10,000 samples

F1 (784 -> 5 x [Linear 512, BatchNorm1d, ReLU] -> Linear 10, 1.46M parameters) is trained
briefly (Adam, lr 1e-3, batch 256), then Keskar sharpness (eps = 1e-3, A = I, 10 L-BFGS-B
iterations, loss over all training samples in chunks of 1,000) is computed twice:

* ours: ``keskar_sharpness(ModelObjective(...), x)`` -- float32 evaluations set absolutely
  from ``x + y`` through ``functional_call``, the gradient passed through, ``f(x)`` taken
  from L-BFGS-B's first evaluation, the last point cached, and scipy's L-BFGS-B iterations
  driven with vectorised bounds;
* reference "tuned": a careful straightforward implementation, with the sign right --
  ``scipy.optimize.minimize(..., method="L-BFGS-B", jac=True, bounds=Bounds(x - w, x + w))``
  on float64 numpy vectors; at every evaluation the parameters are copied into the model
  with ``vector_to_parameters``, the loss is averaged over chunks of 1,000 sliced from the
  in-memory tensors with ``backward()`` per chunk, and the gradient is copied out with
  ``parameters_to_vector``; ``f(x)`` is a separate forward pass; the model's parameters are
  restored afterwards.
* reference "public": the same, written the way public reimplementations of the metric
  are (e.g. the ``get_sharpness`` helpers that cite Keskar et al.): the chunks come from a
  ``DataLoader(TensorDataset(x, y), batch_size=1000)`` and the search is
  ``scipy.optimize.fmin_l_bfgs_b`` with the bounds as an ``(n, 2)`` array.

Both use the same BatchNorm mode (``--bn``, default ``eval`` as public code does), the same
tolerances (``ftol = gtol = 0``: only the iteration budget stops the search) and the same
data. Then the random-subspace variant (``p = 100``, uniform columns) is timed with every
``pinv`` (torch, numpy, scipy) replaced by a function that raises, to show none is formed.
The result is a markdown section on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from sharpminima.landscape import sharpness as sharpness_module
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.objective import bn_mode
from sharpminima.landscape.sharpness import keskar_sharpness


def load_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from sharpminima.data import load

        ds = load("mnist", train_limit=n)
        return ds.x_train.flatten(1), ds.y_train, f"real MNIST, the first {n:,} training images"
    except Exception as exc:  # no data module or no data: synthetic instead
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 784, generator=g)
        y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
        return x, y, f"synthetic ({n:,}, 784) data with teacher labels (MNIST unavailable: {exc})"


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


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    steps = int(epochs * x.shape[0] / 256)
    done = 0
    while done < steps:
        for idx in torch.randperm(x.shape[0], generator=g).split(256):
            if done == steps:
                break
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            done += 1
    opt.zero_grad(set_to_none=True)
    model.eval()


def reference_sharpness(model, x_data, y_data, *, eps, maxiter, chunk, bn, style="tuned") -> dict:
    """Straightforward Keskar sharpness with the sign right (see the module docstring).

    ``style="tuned"`` slices chunks from the tensors and calls ``minimize`` with ``Bounds``;
    ``style="public"`` reads chunks from a DataLoader and calls ``fmin_l_bfgs_b``.
    """
    if style == "public":
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x_data, y_data), batch_size=chunk, shuffle=False
        )

        def batches():
            return iter(loader)
    else:

        def batches():
            return ((x_data[s : s + chunk], y_data[s : s + chunk]) for s in range(0, n, chunk))

    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    n = x_data.shape[0]
    stats = {"num_grad": 0, "num_loss": 0, "grad_seconds": 0.0}
    t_start = time.perf_counter()
    try:
        with bn_mode(model, bn):
            x0 = parameters_to_vector(params).detach().double().numpy()

            def loss_only() -> float:
                with torch.no_grad():
                    total = 0.0
                    for xb, yb in batches():
                        total += nn.functional.cross_entropy(model(xb), yb).item() * len(yb) / n
                stats["num_loss"] += 1
                return total

            def neg_f_and_grad(xv: np.ndarray) -> tuple[float, np.ndarray]:
                t0 = time.perf_counter()
                vector_to_parameters(torch.from_numpy(xv).float(), params)
                model.zero_grad()
                total = 0.0
                for xb, yb in batches():
                    loss = nn.functional.cross_entropy(model(xb), yb) * (len(yb) / n)
                    loss.backward()
                    total += loss.item()
                grad = parameters_to_vector([p.grad for p in params]).double().numpy()
                stats["num_grad"] += 1
                stats["grad_seconds"] += time.perf_counter() - t0
                return -total, -grad  # value AND gradient of -f (smoothout negates only one)

            f0 = loss_only()
            w = eps * (np.abs(x0) + 1.0)
            if style == "public":
                _, fun, info = scipy.optimize.fmin_l_bfgs_b(
                    neg_f_and_grad, x0, bounds=np.stack([x0 - w, x0 + w], axis=1),
                    maxiter=maxiter, factr=0.0, pgtol=0.0,
                )
                fmax, nit = -float(fun), int(info["nit"])
            else:
                res = scipy.optimize.minimize(
                    neg_f_and_grad, x0, jac=True, method="L-BFGS-B",
                    bounds=scipy.optimize.Bounds(x0 - w, x0 + w),
                    options={"maxiter": maxiter, "ftol": 0.0, "gtol": 0.0},
                )
                fmax, nit = -float(res.fun), int(res.nit)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t_start
    return {"value": 100.0 * (fmax - f0) / (1.0 + f0), "f0": f0, "fmax": fmax,
            "nit": nit, "seconds": seconds, **stats}


class _NoPinv:
    """Replace every pinv by a function that raises, and count attempted calls."""

    targets = [(torch.linalg, "pinv"), (torch, "pinverse"), (np.linalg, "pinv"),
               (scipy.linalg, "pinv")]

    def __enter__(self):
        self.calls = 0
        self.saved = [(mod, name, getattr(mod, name)) for mod, name in self.targets]

        def refuse(*args, **kwargs):
            self.calls += 1
            raise AssertionError("a dense pseudo-inverse was requested")

        for mod, name, _ in self.saved:
            setattr(mod, name, refuse)
        return self

    def __exit__(self, *exc):
        for mod, name, fn in self.saved:
            setattr(mod, name, fn)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--quick", action="store_true", help="10,000 samples")
    parser.add_argument("--chunk", type=int, default=1_000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--maxiter", type=int, default=10)
    parser.add_argument("--bn", choices=["eval", "batch"], default="eval")
    parser.add_argument("--p", type=int, default=100, help="subspace dimension (0: skip)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating ours/reference runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 is faster on a loaded machine")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    n = 10_000 if args.quick else args.samples

    torch.manual_seed(args.seed)
    x_data, y_data, data_desc = load_data(n, args.seed)
    model, model_desc = build_f1()
    num_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    train(model, x_data, y_data, args.epochs, args.seed)
    train_seconds = time.perf_counter() - t0
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    obj = ModelObjective(model, x_data, y_data, bn_mode=args.bn, chunk_size=args.chunk)
    x0 = obj.base_point()
    t0 = time.perf_counter()
    obj.loss_and_grad(x0)  # warm-up: allocator, thread pool
    one_pass = time.perf_counter() - t0

    ours_runs: list = []
    ref_runs: dict[str, list[dict]] = {"tuned": [], "public": []}
    for _ in range(args.repeats):
        ours_runs.append(keskar_sharpness(obj, x0, eps=args.eps, max_iters=args.maxiter))
        for style, runs in ref_runs.items():
            runs.append(reference_sharpness(model, x_data, y_data, eps=args.eps, maxiter=args.maxiter,
                                            chunk=args.chunk, bn=args.bn, style=style))
    ours = min(ours_runs, key=lambda r: r.cost.seconds)
    refs = {style: min(runs, key=lambda r: r["seconds"]) for style, runs in ref_runs.items()}

    sub = None
    if args.p > 0:
        with _NoPinv() as guard:
            t0 = time.perf_counter()
            a = sharpness_module.random_subspace(num_params, args.p, seed=args.seed)
            draw_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            sharpness_module.subspace_coordinates(a, x0)
            coords_s = time.perf_counter() - t0
            sub = keskar_sharpness(obj, x0, eps=args.eps, A=a, max_iters=args.maxiter, seed=args.seed)
        pinv_calls = guard.calls
        del a

    after = model.state_dict()
    untouched = all(torch.equal(after[k], state_before[k]) for k in state_before)
    load1, load5, _ = os.getloadavg()
    in_passes = ours.objective_seconds / ours.cost.seconds
    speedup = {style: r["seconds"] / ours.cost.seconds for style, r in refs.items()}
    rel_diff = {
        style: abs(ours.value - r["value"]) / max(abs(r["value"]), 1e-300) for style, r in refs.items()
    }

    lines = [
        f"## Keskar sharpness of F1: sharpminima vs a straightforward reference ({n:,} samples)",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), scipy {scipy.__version__}, Python "
        f"{platform.python_version()}; load average during the run {load1:.1f} (1 min), "
        f"{load5:.1f} (5 min)",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- data: {data_desc}; network: {model_desc}, {num_params:,} parameters, trained "
        f"{args.epochs:g} epoch(s) with Adam in {train_seconds:.0f} s; train loss "
        f"{ours.f0:.4f}",
        f"- metric: eps = {args.eps:g}, A = I, {args.maxiter} L-BFGS-B iterations, loss over "
        f"{n:,} samples in chunks of {args.chunk:,}, BatchNorm `{args.bn}` mode; "
        f"ftol = gtol = 0 for both; one warm-up gradient pass took {one_pass:.2f} s; "
        f"best of {args.repeats} alternating run(s) each",
        "",
        "| | sharpness | f(x) | gradient passes + loss passes | seconds | s in gradient passes |",
        "|---|---|---|---|---|---|",
        f"| sharpminima | {ours.value:.6g} | {ours.f0:.6f} | {ours.cost.num_grad} + "
        f"{ours.cost.num_loss} | {ours.cost.seconds:.1f} | "
        f"{ours.objective_seconds:.1f} ({100 * in_passes:.0f}%) |",
        *[
            f"| reference, {style} | {r['value']:.6g} | {r['f0']:.6f} | {r['num_grad']} + "
            f"{r['num_loss']} | {r['seconds']:.1f} | "
            f"{r['grad_seconds']:.1f} ({100 * r['grad_seconds'] / r['seconds']:.0f}%) |"
            for style, r in refs.items()
        ],
        "",
        *[
            f"- speed-up against the {style} reference: {speedup[style]:.2f}x (its seconds / ours); "
            f"relative difference of the values {rel_diff[style]:.2e}; L-BFGS-B iterations "
            f"{ours.num_iters} (ours) and {refs[style]['nit']} (reference)"
            for style in refs
        ],
        f"- our driver: `{ours.settings['driver']}`",
        f"- all runs (s): ours {[round(r.cost.seconds, 1) for r in ours_runs]}, "
        + ", ".join(f"{style} {[round(r['seconds'], 1) for r in runs]}" for style, runs in ref_runs.items()),
        f"- the model's parameters and buffers bit-identical after every measure: {untouched}",
    ]
    if sub is not None:
        lines += [
            f"- random subspace, p = {args.p} (uniform columns, seed {args.seed}): sharpness "
            f"{sub.value:.6g} in {sub.cost.seconds:.1f} s ({sub.cost.num_grad} gradient "
            f"passes, {sub.objective_seconds:.1f} s inside them; {sub.num_iters} L-BFGS-B "
            f"iteration(s), '{sub.message}'); drawing A took "
            f"{draw_s:.1f} s, A^+ x (p x p Cholesky on A^T A, one refinement) "
            f"{coords_s:.2f} s; pinv calls attempted: {pinv_calls} (every pinv raised if "
            f"called)",
        ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
