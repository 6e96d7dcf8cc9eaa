"""Our Hessian measures against hessian-eigenthings 1.0.0a5 and curvlinops 3.0.1, in one run.

Every library gets the same trained network, the same point and the same loss: the mean
cross-entropy over the same ``--samples`` MNIST training images (synthetic data of that
shape if MNIST is missing), served as the same equal-size batches of ``--batch-size``, with
BatchNorm in eval mode (running statistics). Two networks are measured: the paper's F1
MLP (1.46M parameters, BatchNorm) and a small ResNet written here (3 residual blocks,
16-32 channels, BatchNorm, about 52k parameters), each after 40 Adam steps of 256.

Before anything is timed the script checks that the three libraries see the same function:
the loss each computes, and one Hessian-vector product (HVP) with the same vector, which
must agree to float32 round-off (about 1e-6 relative). Then, per network:

1. **One HVP in gradients**: seconds of one HVP over those of one full gradient (plain
   PyTorch autograd over the same batches), the median of ``--repeats`` interleaved
   timings: ours from the kept gradient graph (one vector, and per column of a block of 8
   pushed through one batched pass; the graph is built once per point, reported apart) and
   by plain double backpropagation, hessian-eigenthings' ``HessianOperator.matvec``
   (double backpropagation per batch), curvlinops' ``HessianLinearOperator @ v``
   (forward-over-reverse per batch; one vector and a block of 8 through ``vmap``). Beside
   the seconds, each computation's matrix FLOPs (``FlopCounterMode``: matrix products and
   convolutions) over the gradient's: the arithmetic floor its time is measured against.
2. **Top eigenvalue to relative accuracy 1e-4 and 1e-6**, against a tight reference (our
   Lanczos at tol 1e-9, float64 bookkeeping). Each library gets the loosest setting that
   reaches the target, found by a sweep: ours ``hessian_eigenvalues(tol=...)`` over tol =
   1e-1, 1e-2, ...; curvlinops' recommended ``scipy.sparse.linalg.eigsh(H.to_scipy(), k=1,
   which="LA", tol=...)`` over the same tols; hessian-eigenthings' ``lanczos`` has no
   stopping rule (it always takes ``max_iter`` steps; ``tol`` only sets the ``converged``
   flags), so its ``max_iter`` is swept: one long ``lanczos_tridiagonal`` run from the very
   start vector ``lanczos(seed=0)`` draws gives the Ritz value after every step, the
   fewest steps meeting the target are taken, and ``lanczos(k=1, max_iter=m, which="LA")``
   is then timed (its achieved error is what is reported). Seconds, products, achieved
   error and the ratio peer time / our time; the sweeps' own cost is not in the times.
3. **Trace at equal error**: each estimator (ours Hutchinson, Hutch++, XTrace;
   hessian-eigenthings Hutchinson and Hutch++ through ``trace``; curvlinops ``hutchpp_trace``
   and ``xtrace``) with ``--trace-products`` products, over ``--trace-seeds`` seeds (the
   runs interleaved): the mean value, its spread over seeds (the standard deviation of the
   values: the actual error of one run), the reported standard error where the library gives
   one, the median seconds, and the seconds each would need to reach a common error of
   ``--trace-target`` times the trace assuming error ~ 1/sqrt(products): seconds x (spread /
   target)^2; ratios against our estimator of the same method and against our fastest.
4. **Spectral density (SLQ)**: ours ``spectral_density`` against hessian-eigenthings'
   ``spectral_density`` with the same probes and Lanczos steps: seconds, products, the SLQ
   trace estimate and the largest Ritz node (against the reference top eigenvalue).

The peers are imported lazily from ``--peers-path``: ``make bench-peers`` installs them,
pinned, with ``--no-deps`` into ``.peers/`` (curvlinops' dependency backpack-for-pytorch
requires torchvision, which does not import beside the pinned torch wheel) and runs this
script; a peer that does not import is skipped with a note. The result is a markdown section
on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sharpminima.landscape import ModelObjective, flatten_params, hessian_eigenvalues, hessian_trace
from sharpminima.landscape.density import spectral_density
from sharpminima.landscape.eigen import lanczos
from sharpminima.landscape.operators import HessianOperator

#: Loosest-first tolerances swept for ours and for curvlinops' eigsh.
TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
#: ARPACK restarts allowed per eigsh call (a safety cap: scipy's default is 10 n, which a
#: tolerance below float32 round-off would run into).
ARPACK_MAXITER = 10
#: Start-vector seed of the reference Lanczos: not the seed 0 of the timed runs, so that ours is
#: not scored against its own Krylov space.
REF_SEED = 12345
Batches = list[tuple[Tensor, Tensor]]


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Return ``(fn(), seconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def rel(a: float, b: float) -> float:
    """Relative difference of ``a`` from the reference ``b``."""
    return abs(a - b) / abs(b)


# ----------------------------------------------------------------------------- setup
class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a (projected where needed) identity skip."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))``."""
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class SmallResNet(nn.Module):
    """A ResNet for 28x28 MNIST: stem (16 ch, stride 2), 3 residual blocks (to 32 ch), linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(
            ResidualBlock(16, 32, 2), ResidualBlock(32, 32, 1), ResidualBlock(32, 32, 1)
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` of images ``(B, 1, 28, 28)``."""
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def load_data(samples: int) -> tuple[Tensor, Tensor, str]:
    """The first ``samples`` MNIST training images, or synthetic data of their shape."""
    from sharpminima.data import load

    try:
        ds = load("mnist", train_limit=samples)
        x, y = ds.x_train[:samples], ds.y_train[:samples]
        return x, y, f"real MNIST, the first {samples:,} training images"
    except Exception as exc:  # noqa: BLE001 - no MNIST here: synthetic stand-in
        g = torch.Generator().manual_seed(0)
        x = torch.rand(samples, 1, 28, 28, generator=g)
        y = (x.flatten(1) @ torch.randn(784, 10, generator=g)).argmax(1)
        return x, y, f"synthetic MNIST-shaped data ({exc})"


def train_briefly(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> nn.Module:
    """``steps`` Adam steps (lr 1e-3) on batches of 256, then eval mode (as bench_sources)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    done = 0
    while done < steps:
        for idx in torch.randperm(len(y), generator=g).split(256):
            if done == steps:
                break
            if len(idx) < 2:  # BatchNorm needs two samples in training mode
                continue
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            done += 1
    model.eval()
    return model


def build_models(which: list[str]) -> dict[str, nn.Module]:
    """The networks to measure, freshly initialised (seed 0)."""
    from sharpminima.models import build

    out: dict[str, nn.Module] = {}
    for name in which:
        torch.manual_seed(0)
        out[name] = build("f1") if name == "f1" else SmallResNet()
    return out


MODEL_LABELS = {"f1": "F1 (MLP, BatchNorm)", "resnet": "small ResNet (3 blocks, BatchNorm)"}


def import_peers(path: str) -> tuple[dict[str, ModuleType], list[str]]:
    """Import the peers that are importable; return them and a note per skipped one."""
    if path and path not in sys.path:
        sys.path.insert(0, path)
    peers: dict[str, ModuleType] = {}
    notes: list[str] = []
    for key, module in (("he", "hessian_eigenthings"), ("cl", "curvlinops")):
        try:
            peers[key] = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure skips the peer
            notes.append(f"{module} skipped: not importable ({type(exc).__name__}: {exc})")
    return peers, notes


def peer_version(mod: ModuleType, dist: str) -> str:
    """Installed version of a peer (its distribution's metadata, else ``__version__``)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return str(getattr(mod, "__version__", "?"))


class Setup:
    """One network at its trained point and the three libraries' views of its Hessian.

    Attributes:
        model: The network, in eval mode.
        x0: Its flat parameter vector (our ordering = ``named_parameters`` = the peers').
        obj: Our objective (mean cross-entropy, eval-mode BatchNorm, chunks of ``batch_size``).
        batches: The same chunks as a list of ``(inputs, targets)``, for the peers.
        he_op: hessian-eigenthings' ``HessianOperator`` (None if skipped).
        cl_op: curvlinops' ``HessianLinearOperator`` (None if skipped).
        cl_setup_s: Seconds curvlinops' constructor took (its default determinism check).
    """

    def __init__(
        self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int, peers: dict[str, ModuleType]
    ) -> None:
        self.model = model.eval()
        self.x0 = flatten_params(model)
        self.n = self.x0.numel()
        self.num_samples = len(y)
        self.obj = ModelObjective(model, x, y, bn_mode="eval", chunk_size=batch_size)
        self.batches: Batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.he_op: Any = None
        self.cl_op: Any = None
        self.cl_setup_s = math.nan
        if "he" in peers:
            he = peers["he"]
            self.he_op = he.HessianOperator(model, self.batches, he.supervised_loss(F.cross_entropy))
        if "cl" in peers:
            self.cl_op, self.cl_setup_s = timed(
                lambda: peers["cl"].HessianLinearOperator(
                    model, nn.CrossEntropyLoss(), self.params, self.batches
                )
            )

    def plain_gradient(self) -> list[Tensor]:
        """One full gradient with plain PyTorch autograd over the batches (the time unit)."""
        total: list[Tensor] | None = None
        for xb, yb in self.batches:
            loss = F.cross_entropy(self.model(xb), yb) * (len(yb) / self.num_samples)
            g = torch.autograd.grad(loss, self.params)
            total = list(g) if total is None else [a + b for a, b in zip(total, g, strict=True)]
        assert total is not None
        return total


# ----------------------------------------------------------------------------- 0. check
def agreement(s: Setup, peers: dict[str, ModuleType]) -> tuple[list[str], bool]:
    """Loss and one HVP from each library at the same point; lines of a markdown table."""
    ours_name, he_name, cl_name = "sharpminima (HVP: kept graph)", "hessian-eigenthings", "curvlinops"
    with torch.no_grad():
        losses = {ours_name: float(s.obj(s.x0))}
        losses["plain PyTorch"] = sum(
            float(F.cross_entropy(s.model(xb), yb)) * len(yb) / s.num_samples for xb, yb in s.batches
        )
        if s.he_op is not None:  # what its HessianOperator differentiates: the mean of the batch losses
            fn = peers["he"].supervised_loss(F.cross_entropy)
            losses[he_name] = statistics.fmean(float(fn(s.model, b)) for b in s.batches)
    if s.cl_op is not None:
        losses[cl_name] = float(s.cl_op.gradient_and_loss()[1])
    v = torch.randn(s.n, generator=torch.Generator().manual_seed(1))
    ours = HessianOperator(s.obj, s.x0, hvp_mode="graph") @ v
    hvps = {ours_name: ours, "sharpminima (HVP: double backward)": s.obj.hvp(s.x0, v)}
    if s.he_op is not None:
        hvps[he_name] = s.he_op.matvec(v).detach()
    if s.cl_op is not None:
        hvps[cl_name] = (s.cl_op @ v).detach()
    ref_loss = losses[ours_name]
    lines = ["| library | loss | loss rel. diff | HVP rel. diff from ours |", "|---|---:|---:|---:|"]
    worst = 0.0
    names = list(dict.fromkeys([*losses, *hvps]))
    for name in names:
        loss = losses.get(name)
        hv = hvps.get(name)
        d_loss = rel(loss, ref_loss) if loss is not None else None
        d_hvp = float((hv - ours).norm() / ours.norm()) if hv is not None else None
        worst = max(worst, d_loss or 0.0, d_hvp or 0.0)
        lines.append(
            f"| {name} | {'' if loss is None else f'{loss:.8f}'} | "
            f"{'' if d_loss is None else f'{d_loss:.1e}'} | {'' if d_hvp is None else f'{d_hvp:.1e}'} |"
        )
    return lines, worst <= 1e-5


# ----------------------------------------------------------------------------- 1. HVP cost
def _fmt_ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def matrix_flops(fn: Callable[[], Any]) -> float:
    """Floating-point operations of the matrix products and convolutions ``fn()`` runs.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and their
    backward passes; elementwise work is not counted): the arithmetic floor of a computation,
    whatever the implementation's overheads.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except Exception as exc:  # noqa: BLE001 - a peer's transform the counter cannot see through
        log(f"FLOPs not counted ({type(exc).__name__}: {exc})")
        return math.nan
    return float(counter.get_total_flops())


def hvp_costs(s: Setup, repeats: int) -> tuple[list[str], float]:
    """Median seconds of a gradient and of one HVP each way, interleaved ``repeats`` times."""
    v = torch.randn(s.n, generator=torch.Generator().manual_seed(2))
    V = torch.randn(s.n, 8, generator=torch.Generator().manual_seed(3))
    op = HessianOperator(s.obj, s.x0, hvp_mode="graph")  # the path the table names, on any device
    _, build_s = timed(lambda: op @ v)  # the first product builds the kept graph
    runs: dict[str, tuple[Callable[[], Any], int]] = {
        "gradient, plain PyTorch autograd (the unit)": (s.plain_gradient, 1),
        "gradient, sharpminima `loss_and_grad`": (lambda: s.obj.loss_and_grad(s.x0), 1),
        "sharpminima, kept graph, one vector": (lambda: op @ v, 1),
        "sharpminima, kept graph, block of 8 (per column)": (lambda: op @ V, 8),
        "sharpminima, double backward (`obj.hvp`)": (lambda: s.obj.hvp(s.x0, v), 1),
    }
    if s.he_op is not None:
        runs["hessian-eigenthings `matvec` (double backward)"] = (lambda: s.he_op.matvec(v), 1)
    if s.cl_op is not None:
        runs["curvlinops `H @ v` (forward-over-reverse)"] = (lambda: s.cl_op @ v, 1)
        runs["curvlinops `H @ V`, block of 8 (per column)"] = (lambda: s.cl_op @ V, 8)
    for fn, _ in runs.values():  # warm-up: first calls pay one-off allocation and dispatch costs
        fn()
    flops = {name: matrix_flops(fn) / cols for name, (fn, cols) in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, (fn, cols) in runs.items():
            times[name].append(timed(fn)[1] / cols)
    med = {k: statistics.median(t) for k, t in times.items()}
    unit = med["gradient, plain PyTorch autograd (the unit)"]
    ours = med["sharpminima, kept graph, one vector"]
    unit_flops = flops["gradient, plain PyTorch autograd (the unit)"] or math.nan
    lines = [
        "| computation | seconds | in gradients | matrix FLOPs, in gradients' "
        "| vs ours (kept graph, one vector) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in runs:
        ratio = "" if name.startswith("gradient") else f"{med[name] / ours:.2f}x"
        lines.append(
            f"| {name} | {med[name]:.3f} | {med[name] / unit:.2f} | "
            f"{_fmt_ratio(flops[name] / unit_flops)} | {ratio} |"
        )
    lines.append(
        f"| sharpminima, building the kept graph (once per point; the first product's time less one "
        f"product) | {build_s - ours:.3f} | {(build_s - ours) / unit:.2f} | | |"
    )
    if s.cl_op is not None:
        lines.append(
            f"| curvlinops constructor (default `check_deterministic=True`, once) | "
            f"{s.cl_setup_s:.3f} | {s.cl_setup_s / unit:.2f} | | |"
        )
    return lines, unit


# ----------------------------------------------------------------------------- 2. top eigenvalue
class CountedScipy:
    """A scipy ``LinearOperator`` that counts its products (wraps curvlinops' ``to_scipy()``)."""

    def __init__(self, inner: Any) -> None:
        from scipy.sparse.linalg import LinearOperator

        self.inner = inner
        self.count = 0

        def matvec(v: np.ndarray) -> np.ndarray:
            self.count += 1
            return inner.matvec(v)

        def matmat(m: np.ndarray) -> np.ndarray:
            self.count += m.shape[1]
            return inner.matmat(m)

        self.op = LinearOperator(inner.shape, matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=inner.dtype)


def eigen_section(
    s: Setup, peers: dict[str, ModuleType], targets: tuple[float, ...], ref_iters: int, he_cap: int
) -> tuple[list[str], float, list[str]]:
    """Top eigenvalue per library at each target accuracy; returns lines, reference, notes."""
    notes: list[str] = []
    log("  reference Lanczos (tol 1e-9)")
    ref_res, ref_s = timed(
        lambda: lanczos(HessianOperator(s.obj, s.x0), k=1, tol=1e-9, max_iters=ref_iters, seed=REF_SEED)
    )
    ref = ref_res.value
    ref_rr = ref_res.residuals[0] / abs(ref)
    lines = [
        f"Reference: our `lanczos(tol=1e-9, max_iters={ref_iters}, seed={REF_SEED})`: {ref:.10g} after "
        f"{ref_res.num_matvecs} products ({ref_s:.1f} s), relative residual {ref_rr:.1e} (the eigenvalue "
        "error is about residual^2 / gap, far smaller).",
        "",
    ]
    if ref_rr > 1e-4:
        notes.append(
            f"the reference's relative residual {ref_rr:.1e} is loose: raise --ref-iters before "
            "trusting errors near the targets"
        )
    lines += [
        "| target | library | setting (loosest meeting the target) | seconds | products | eigenvalue "
        "| rel. error | time vs ours |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    # ours: sweep tol, cached (a run that meets both targets is one run)
    ours_cache: dict[float, tuple[float, int, float]] = {}

    def ours_at(tol: float) -> tuple[float, int, float]:
        if tol not in ours_cache:
            res, sec = timed(lambda: hessian_eigenvalues(s.obj, s.x0, k=1, tol=tol))
            ours_cache[tol] = (res.value, res.num_matvecs, sec)
        return ours_cache[tol]

    cl_cache: dict[float, tuple[float, int, float]] = {}

    def cl_at(tol: float) -> tuple[float, int, float]:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        if tol not in cl_cache:
            counted = CountedScipy(s.cl_op.to_scipy())
            t0 = time.perf_counter()
            try:
                vals = eigsh(
                    counted.op, k=1, which="LA", tol=tol, maxiter=ARPACK_MAXITER, return_eigenvectors=False
                )
                value = float(vals[-1])
            except ArpackNoConvergence as exc:
                value = float(exc.eigenvalues[-1]) if len(exc.eigenvalues) else math.nan
                notes.append(
                    f"curvlinops eigsh at tol {tol:g} stopped at the cap of {ARPACK_MAXITER} restarts"
                )
            cl_cache[tol] = (value, counted.count, time.perf_counter() - t0)
        return cl_cache[tol]

    def sweep(run: Callable[[float], tuple[float, int, float]], target: float) -> tuple[str, tuple, bool]:
        last: tuple = (math.nan, 0, math.nan)
        for tol in TOLS:
            last = run(tol)
            if rel(last[0], ref) <= target:
                return f"tol {tol:g}", last, True
        return f"tol {TOLS[-1]:g} (target not reached)", last, False

    # hessian-eigenthings: the Ritz value after every step of one long run from lanczos()'s start vector
    he_curve: list[float] = []
    he_sweep_s = math.nan
    if s.he_op is not None:
        he = peers["he"]
        steps_needed = [i + 1 for i, h in enumerate(ref_res.history) if rel(h, ref) <= min(targets)]
        m_cap = min(s.n - 1, he_cap, max(20, 2 * (steps_needed[0] if steps_needed else he_cap) + 10))
        gen = torch.Generator(device="cpu").manual_seed(0)
        v0 = torch.randn(s.n, dtype=s.he_op.dtype, generator=gen).to(s.he_op.device)  # as lanczos(seed=0)
        log(f"  hessian-eigenthings sweep: one {m_cap}-step Lanczos run")
        td, he_sweep_s = timed(lambda: he.lanczos_tridiagonal(s.he_op, v0, m_cap, reorthogonalize=True))
        for m in range(1, td.iterations + 1):
            t = (
                torch.diag(td.alphas[:m])
                + torch.diag(td.betas[: m - 1], 1)
                + torch.diag(td.betas[: m - 1], -1)
            )
            he_curve.append(float(torch.linalg.eigvalsh(t)[-1]))  # float32, as lanczos() does
    he_cache: dict[int, tuple[float, int, float]] = {}

    def he_at(m: int) -> tuple[float, int, float]:
        if m not in he_cache:
            res, sec = timed(lambda: peers["he"].lanczos(s.he_op, k=1, max_iter=m, which="LA", seed=0))
            he_cache[m] = (float(res.eigenvalues[0]), int(res.iterations), sec)
        return he_cache[m]

    for target in targets:
        log(f"  target {target:g}")
        setting, (val, prods, sec), ok = sweep(ours_at, target)
        ours_sec = sec
        lines.append(
            f"| {target:g} | sharpminima `hessian_eigenvalues` (Lanczos) | {setting} | {sec:.2f} | "
            f"{prods} | {val:.10g} | {rel(val, ref):.1e} | 1.00x |"
        )
        # what a user who wants this accuracy asks for, with no sweep: the eigenvalue criterion
        res, sec = timed(
            lambda: hessian_eigenvalues(s.obj, s.x0, k=1, tol=target, criterion="eigenvalue")  # noqa: B023
        )
        lines.append(
            f"| {target:g} | sharpminima `hessian_eigenvalues` (Lanczos), `criterion='eigenvalue'` | "
            f"tol {target:g} (no sweep; target {'met' if rel(res.value, ref) <= target else 'MISSED'}) | "
            f"{sec:.2f} | {res.num_matvecs} | {res.value:.10g} | "
            f"{rel(res.value, ref):.1e} | {sec / ours_sec:.2f}x |"
        )
        if s.cl_op is not None:
            setting, (val, prods, sec), ok = sweep(cl_at, target)
            lines.append(
                f"| {target:g} | curvlinops + scipy `eigsh(k=1, which='LA')` | {setting} | {sec:.2f} | "
                f"{prods} | {val:.10g} | {rel(val, ref):.1e} | {sec / ours_sec:.2f}x |"
            )
        if s.he_op is not None:
            hits = [m + 1 for m, h in enumerate(he_curve) if rel(h, ref) <= target]
            m = hits[0] if hits else len(he_curve)
            val, prods, sec = he_at(m)
            reach = "" if hits else f" (not reached within {len(he_curve)} steps)"
            reorth = "on" if m <= 50 else "off (its default above 50 steps)"
            lines.append(
                f"| {target:g} | hessian-eigenthings `lanczos(k=1, which='LA')` | max_iter {m}{reach}, "
                f"reorth {reorth} | {sec:.2f} | {prods} | {val:.10g} | {rel(val, ref):.1e} | "
                f"{sec / ours_sec:.2f}x |"
            )
    swept = [f"ours {len(ours_cache)} run(s) ({sum(c[2] for c in ours_cache.values()):.1f} s)"]
    if s.cl_op is not None:
        swept.append(f"curvlinops {len(cl_cache)} run(s) ({sum(c[2] for c in cl_cache.values()):.1f} s)")
    if s.he_op is not None:
        swept.append(
            f"hessian-eigenthings one {len(he_curve)}-step run ({he_sweep_s:.1f} s) "
            f"and {len(he_cache)} timed run(s)"
        )
    lines += ["", "Sweep cost (not in the times above): " + "; ".join(swept) + "."]
    return lines, ref, notes


# ----------------------------------------------------------------------------- 3. trace
def trace_section(
    s: Setup, peers: dict[str, ModuleType], products: int, seeds: int, target_rel: float
) -> list[str]:
    """Each trace estimator at ``products`` products over ``seeds`` seeds; time to a common error."""
    ests: dict[tuple[str, str], Callable[[int], tuple[float, float]]] = {}
    for method, label in (("hutchinson", "Hutchinson"), ("hutch++", "Hutch++"), ("xtrace", "XTrace")):

        def ours(seed: int, method: str = method) -> tuple[float, float]:
            r = hessian_trace(s.obj, s.x0, num_probes=products, seed=seed, method=method)  # type: ignore[arg-type]
            return r.value, r.stderr

        ests[("sharpminima", label)] = ours
    if s.he_op is not None:
        he = peers["he"]
        for method, label in (("hutchinson", "Hutchinson"), ("hutch++", "Hutch++")):

            def he_est(seed: int, method: str = method) -> tuple[float, float]:
                r = he.trace(s.he_op, num_matvecs=products, method=method, seed=seed)
                return float(r.estimate), float(r.stderr)

            ests[("hessian-eigenthings", label)] = he_est
    if s.cl_op is not None:
        cl = peers["cl"]
        for fn, label in ((cl.hutchpp_trace, "Hutch++"), (cl.xtrace, "XTrace")):

            def cl_est(seed: int, fn: Callable = fn) -> tuple[float, float]:
                torch.manual_seed(seed)  # curvlinops draws from the global generator
                return float(fn(s.cl_op, products)), math.nan

            ests[("curvlinops", label)] = cl_est
    values: dict[tuple[str, str], list[float]] = {k: [] for k in ests}
    errs: dict[tuple[str, str], list[float]] = {k: [] for k in ests}
    secs: dict[tuple[str, str], list[float]] = {k: [] for k in ests}
    for seed in range(seeds):
        log(f"  trace seed {seed}")
        for key, fn in ests.items():
            (val, err), sec = timed(lambda fn=fn, seed=seed: fn(seed))
            values[key].append(val)
            errs[key].append(err)
            secs[key].append(sec)
    pooled = statistics.fmean(v for vals in values.values() for v in vals)
    target = target_rel * abs(pooled)
    need: dict[tuple[str, str], float] = {}
    for key in ests:
        spread = statistics.stdev(values[key]) if seeds > 1 else math.nan
        need[key] = statistics.median(secs[key]) * (spread / target) ** 2
    ours_best = min(v for k, v in need.items() if k[0] == "sharpminima")
    lines = [
        f"{products} products per run, seeds 0..{seeds - 1}; common target error {target_rel:g} x the pooled "
        f"mean ({pooled:.6g}) = {target:.4g}.",
        "",
        "| library | estimator | mean value | spread over seeds (std) | mean reported stderr | seconds / run "
        "| seconds to target | vs ours (same method) | vs our fastest |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ests:
        lib, label = key
        spread = statistics.stdev(values[key]) if seeds > 1 else math.nan
        rep = statistics.fmean(errs[key])
        same = need.get(("sharpminima", label))
        lines.append(
            f"| {lib} | {label} | {statistics.fmean(values[key]):.6g} | {spread:.3g} | "
            f"{'-' if math.isnan(rep) else f'{rep:.3g}'} | {statistics.median(secs[key]):.2f} | "
            f"{need[key]:.1f} | {'' if same is None else f'{need[key] / same:.2f}x'} | "
            f"{need[key] / ours_best:.2f}x |"
        )
    return lines


# ----------------------------------------------------------------------------- 4. SLQ
def density_section(s: Setup, peers: dict[str, ModuleType], probes: int, steps: int, ref: float) -> list[str]:
    """Stochastic Lanczos quadrature, ours against hessian-eigenthings, same probes and steps."""
    lines = [
        "| library | seconds | products | SLQ trace estimate | largest Ritz node (rel. to top eigenvalue) "
        "| time vs ours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    log("  sharpminima spectral_density")
    ours, ours_s = timed(
        lambda: spectral_density(s.obj, s.x0, num_probes=probes, lanczos_steps=steps, seed=0)
    )
    top = max(max(t) for t in ours.nodes)
    lines.append(
        f"| sharpminima `spectral_density` | {ours_s:.2f} | {ours.num_matvecs} | {ours.value:.6g} | "
        f"{top:.6g} ({rel(top, ref):.1e}) | 1.00x |"
    )
    if s.he_op is not None:
        log("  hessian-eigenthings spectral_density")
        he = peers["he"]
        res, sec = timed(lambda: he.spectral_density(s.he_op, num_runs=probes, lanczos_steps=steps, seed=0))
        nodes = torch.nan_to_num(res.raw_eigenvalues.double(), nan=0.0)
        w = res.raw_weights.double()
        tr = float(s.n * (nodes * w).sum(1).mean())
        top_he = float(torch.nan_to_num(res.raw_eigenvalues, nan=-math.inf).max())
        lines.append(
            f"| hessian-eigenthings `spectral_density` | {sec:.2f} | {probes * steps} | {tr:.6g} | "
            f"{top_he:.6g} ({rel(top_he, ref):.1e}) | {sec / ours_s:.2f}x |"
        )
    return lines


# ----------------------------------------------------------------------------- main
def main() -> None:
    """Parse the arguments, run the four measurements per network, print the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2_000, help="MNIST training images in the loss")
    parser.add_argument("--batch-size", type=int, default=1_000, help="images per batch (all libraries)")
    parser.add_argument("--models", nargs="+", choices=("f1", "resnet"), default=["f1", "resnet"])
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings of section 1")
    parser.add_argument("--targets", type=float, nargs="+", default=[1e-4, 1e-6])
    parser.add_argument("--ref-iters", type=int, default=80, help="Lanczos steps of the reference")
    parser.add_argument("--he-max-iter", type=int, default=80, help="longest hessian-eigenthings sweep run")
    parser.add_argument("--trace-products", type=int, default=30, help="a multiple of 6 (curvlinops)")
    parser.add_argument("--trace-seeds", type=int, default=3)
    parser.add_argument(
        "--trace-target", type=float, default=0.01, help="common error, relative to the trace"
    )
    parser.add_argument("--slq-probes", type=int, default=4)
    parser.add_argument("--slq-steps", type=int, default=30)
    parser.add_argument(
        "--peers-path",
        default=os.environ.get("PEERS_PATH", ""),
        help="a --target directory holding the peers (or use PYTHONPATH)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.batch_size, args.train_steps, args.repeats = 128, 64, 5, 1
        args.ref_iters, args.he_max_iter = 15, 15
        args.trace_products, args.trace_seeds, args.slq_probes, args.slq_steps = 6, 2, 2, 5
    if args.trace_products % 6:
        parser.error(
            "--trace-products must be a multiple of 6 (curvlinops' hutchpp needs 3 | m, xtrace 2 | m)"
        )
    if args.samples % args.batch_size:
        parser.error(
            "--samples must be a multiple of --batch-size: hessian-eigenthings weights batches equally"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    peers, notes = import_peers(args.peers_path)
    x, y, what = load_data(args.samples)
    lines = [
        "## Hessian measures against hessian-eigenthings and curvlinops "
        f"({datetime.date.today().isoformat()})",
        "",
    ]
    lines.append(
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    lines.append(f"- Command: `{' '.join(['.venv/bin/python', *sys.argv])}`")
    lines.append(
        f"- Data: {what}, in {args.samples // args.batch_size} batches of {args.batch_size:,}; "
        f"mean cross-entropy, BatchNorm in eval mode, float32 products"
    )
    versions = {
        "he": ("hessian-eigenthings", "hessian-eigenthings"),
        "cl": ("curvlinops", "curvlinops-for-pytorch"),
    }
    lines.append(
        "- Peers: "
        + (
            ", ".join(f"{versions[k][0]} {peer_version(m, versions[k][1])}" for k, m in peers.items())
            or "none importable"
        )
    )
    for note in notes:
        lines.append(f"- **{note}**")
    for key, model in build_models(args.models).items():
        label = MODEL_LABELS[key]
        log(f"{label}: training {args.train_steps} steps")
        train_briefly(model, x, y, args.train_steps)
        s = Setup(model, x, y, args.batch_size, peers)
        lines += ["", f"### {label}: {s.n:,} parameters, {args.train_steps} Adam steps", ""]

        log(f"{label}: agreement check")
        table, ok = agreement(s, peers)
        lines += [
            "#### 0. Same function: the loss and one HVP (same random vector) per library",
            "",
            *table,
            "",
        ]
        lines.append(
            "All agree to float32 round-off."
            if ok
            else "**WARNING: the libraries disagree by more than 1e-5; the comparisons below are suspect.**"
        )

        log(f"{label}: 1. HVP cost")
        table, unit = hvp_costs(s, args.repeats)
        lines += [
            "",
            f"#### 1. One HVP in gradients (median of {args.repeats}; one gradient = {unit:.3f} s)",
            "",
            *table,
        ]

        log(f"{label}: 2. top eigenvalue")
        table, ref, eig_notes = eigen_section(s, peers, tuple(args.targets), args.ref_iters, args.he_max_iter)
        lines += ["", "#### 2. Top eigenvalue to a relative accuracy", "", *table]
        lines += [f"- {n}" for n in eig_notes]

        log(f"{label}: 3. trace")
        lines += [
            "",
            "#### 3. Trace at equal error",
            "",
            *trace_section(s, peers, args.trace_products, args.trace_seeds, args.trace_target),
        ]

        log(f"{label}: 4. spectral density")
        lines += [
            "",
            f"#### 4. Spectral density (SLQ, {args.slq_probes} probes x {args.slq_steps} Lanczos steps)",
            "",
            *density_section(s, peers, args.slq_probes, args.slq_steps, ref),
        ]
    lines += [
        "",
        "Notes. hessian-eigenthings' `lanczos` defaults to k=10, max_iter=2k=20 and which='LM' (largest "
        "magnitude); `tol` only sets its `converged` flags, so accuracy is bought by `max_iter` alone; it "
        "reorthogonalises only up to 50 steps by default and keeps its tridiagonal and Ritz values in the "
        "operator's float32. Its `HessianOperator` averages batch losses equally (equal batches here). "
        "curvlinops' constructor runs a determinism check by default (timed apart, not in the per-task "
        "times); its estimators draw from the global torch generator (seeded here with `torch.manual_seed`) "
        "and return no standard error; its `to_scipy()` hands ARPACK float64 vectors and computes in "
        "float32; scipy's `eigsh` default `tol=0` (machine precision) and `maxiter=10 n` would not stop "
        f"on float32 products, so every call here has a tol and maxiter={ARPACK_MAXITER}. Our times "
        "include building the kept gradient graph (a new operator per call). Hutch++ and XTrace errors "
        "fall faster than 1/sqrt(products) on a decaying spectrum, so the time-to-target column overstates "
        "what they need; a spread from few seeds is itself uncertain by about 1/sqrt(2 (seeds - 1)).",
        "",
        f"Total {time.perf_counter() - started:.0f} s.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
