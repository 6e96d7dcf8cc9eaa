"""Data sources and the cost of curvature: DataLoader vs in-memory, a language model vs PyHessian.

Three measurements, each a ratio taken in one run on one machine:

1. **The DataLoader path against the in-memory path**: F1 (trained briefly) on the first
   ``--samples`` MNIST training images (default all 60,000), Keskar sharpness (eps 1e-3, 10
   L-BFGS-B iterations) and the top Hessian eigenvalue (Lanczos, tol 1e-3), once with
   ``ModelObjective(model, x, y, chunk_size=1000)`` and once with
   ``ModelObjective(model, DataLoader(TensorDataset(x, y), batch_size=1000))``. The two
   alternate, ``--repeats`` times; the median ratio is reported. A DataLoader over a
   map-style dataset that is not a ``TensorDataset`` (per-sample ``__getitem__`` and
   collate, what a user's own dataset class gives) is timed as a third row.
2. **A small language model against PyHessian 0.1**: a GPT-2-style LM built from a config
   (a few thousand parameters, nothing downloaded), the same loader of ``(input_ids,
   next tokens)`` batches for both tools (equal tokens per batch, so PyHessian's weighting
   of batches by their sequences is the per-token mean too), top eigenvalue: PyHessian's
   power iteration (its defaults) against our Lanczos (tol 1e-3), value and seconds.
   PyHessian is not a dependency: ``pip install --no-deps --target DIR pyhessian==0.1`` and
   pass ``--pyhessian-path DIR``; without it that part is skipped.
3. **One Hessian-vector product in gradients**, for F1 and the LM: the seconds of one HVP
   over those of one gradient, by double backpropagation (PyHessian's way), from the
   gradient graph kept at the point (ours) and forward-over-reverse (``torch.func.jvp`` of
   the gradient), each the median of ``--repeats`` interleaved timings.

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
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sharpminima.landscape import (
    ModelObjective,
    bn_mode,
    flatten_params,
    hessian_eigenvalues,
    keskar_sharpness,
)


class ItemDataset(Dataset):
    """A map-style dataset served one sample at a time (as a user's own class would)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def f1_setup(samples: int) -> tuple[nn.Module, Tensor, Tensor, str]:
    from sharpminima.data import load
    from sharpminima.models import build

    try:
        ds = load("mnist", train_limit=samples)
        x, y, what = ds.x_train, ds.y_train, f"real MNIST, the first {samples:,} training images"
    except Exception as exc:  # noqa: BLE001 - no MNIST here: synthetic stand-in
        g = torch.Generator().manual_seed(0)
        x = torch.rand(samples, 1, 28, 28, generator=g)
        y = (x.flatten(1) @ torch.randn(784, 10, generator=g)).argmax(1)
        what = f"synthetic MNIST-shaped data ({exc})"
    torch.manual_seed(0)
    model = build("f1")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:10_240].split(256):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model, x, y, what


class TinyLM(nn.Module):
    """A GPT-2 model whose forward takes token ids and returns logits ``(B, T, V)``."""

    def __init__(self, vocab: int, positions: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=vocab,
            n_positions=positions,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        )
        self.gpt2 = GPT2LMHeadModel(cfg)

    def forward(self, ids: Tensor) -> Tensor:
        return self.gpt2(input_ids=ids).logits


def lm_setup(sequences: int, length: int, vocab: int) -> tuple[nn.Module, DataLoader]:
    torch.manual_seed(0)
    model = TinyLM(vocab, length)
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, vocab, (sequences, length + 1), generator=g)
    text[:, 1::2] = (text[:, 0::2][:, : text[:, 1::2].shape[1]] * 3 + 1) % vocab  # learnable pattern
    loader = DataLoader(TensorDataset(text[:, :-1], text[:, 1:]), batch_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for ids, nxt in loader:
            opt.zero_grad(set_to_none=True)
            logits = model(ids)
            nn.functional.cross_entropy(logits.reshape(-1, vocab), nxt.reshape(-1)).backward()
            opt.step()
    model.eval()
    return model, loader


def hvp_costs(obj: ModelObjective, x: Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one gradient and of one HVP three ways, interleaved."""
    v = torch.randn(x.numel(), generator=torch.Generator().manual_seed(0)).to(x)
    batches = list(obj.batches())
    params_of = obj.unflatten

    def fwd_rev() -> Tensor:  # forward-over-reverse: jvp of the gradient, batch by batch
        out = torch.zeros_like(x)
        with bn_mode(obj.model, obj.bn_mode):
            for b, w in batches:

                def loss_at(z: Tensor, b: object = b) -> Tensor:
                    return obj.criterion(_Bound(obj.model, params_of(z)), b)

                out += w * jvp(grad(loss_at), (x,), (v,))[1]
        return out

    times: dict[str, list[float]] = {
        "gradient": [],
        "double backward": [],
        "kept graph": [],
        "fwd-over-rev": [],
    }
    kept = obj.hvp_at(x)
    kept(v)  # builds the graph (not timed: it is one gradient, paid once per point)
    for _ in range(repeats):
        times["gradient"].append(timed(lambda: obj.loss_and_grad(x))[1])
        times["double backward"].append(timed(lambda: obj.hvp(x, v))[1])
        times["kept graph"].append(timed(lambda: kept(v))[1])
        times["fwd-over-rev"].append(timed(fwd_rev)[1])
    return {k: statistics.median(vals) for k, vals in times.items()}


class _Bound(nn.Module):
    """``model`` evaluated at given parameters (for the functional forward-over-reverse HVP)."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)
        object.__setattr__(self, "params", params)

    def forward(self, *args: object, **kwargs: object) -> object:
        return functional_call(self.inner, self.params, args, kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pyhessian-path", default=os.environ.get("PYHESSIAN_PATH", ""))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 2_000, 1
    started = time.perf_counter()
    lines = [f"## Data sources and curvature cost ({datetime.date.today().isoformat()})", ""]
    lines.append(
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    lines.append(f"- Command: `{' '.join(['.venv/bin/python', *sys.argv])}`")

    # 1. DataLoader vs in-memory on F1
    model, x, y, what = f1_setup(args.samples)
    lines.append(f"- Data: {what}; F1 after 40 Adam steps")
    x0 = flatten_params(model)
    makers = {
        "in-memory tensors (chunks of 1,000)": lambda: ModelObjective(model, x, y, chunk_size=1000),
        "DataLoader(TensorDataset, batch_size=1000)": lambda: ModelObjective(
            model, DataLoader(TensorDataset(x, y), batch_size=1000)
        ),
        "DataLoader(per-sample Dataset, batch_size=1000)": lambda: ModelObjective(
            model, DataLoader(ItemDataset(x, y), batch_size=1000)
        ),
    }
    rows: dict[str, dict[str, list[float]]] = {k: {"sharpness": [], "eigenvalue": []} for k in makers}
    values: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeats):
        for name, make in makers.items():
            sharp, s_sec = timed(lambda make=make: keskar_sharpness(make(), x0, eps=1e-3))
            eig, e_sec = timed(lambda make=make: hessian_eigenvalues(make(), x0, k=1, tol=1e-3))
            rows[name]["sharpness"].append(s_sec)
            rows[name]["eigenvalue"].append(e_sec)
            values[name] = (sharp.value, eig.value)  # type: ignore[attr-defined]
    base = next(iter(makers))
    lines += [
        "",
        "### 1. F1, the DataLoader path against the in-memory path",
        "",
        "| source | sharpness s | ratio | top eigenvalue s | ratio | values (sharpness, eigenvalue) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in makers:
        r = rows[name]
        ratio_s = statistics.median(
            a / b for a, b in zip(r["sharpness"], rows[base]["sharpness"], strict=True)
        )
        ratio_e = statistics.median(
            a / b for a, b in zip(r["eigenvalue"], rows[base]["eigenvalue"], strict=True)
        )
        lines.append(
            f"| {name} | {statistics.median(r['sharpness']):.1f} | {ratio_s:.3f}x | "
            f"{statistics.median(r['eigenvalue']):.1f} | {ratio_e:.3f}x | "
            f"{values[name][0]:.6g}, {values[name][1]:.6g} |"
        )

    # 3. (F1) one HVP in gradients
    cost_rows = []
    f1_costs = hvp_costs(ModelObjective(model, x[:10_000], y[:10_000], bn_mode="eval"), x0, args.repeats)
    cost_rows.append(("F1, 10,000 MNIST images, eval-mode BN", f1_costs))

    # 2. LM against PyHessian
    lm, loader = lm_setup(256 if not args.quick else 64, 16, 50)
    lm_x = flatten_params(lm)
    lm_obj = ModelObjective(lm, loader, bn_mode="eval")
    ours, ours_sec = timed(lambda: hessian_eigenvalues(lm_obj, lm_x, k=1, tol=1e-3))
    tight = hessian_eigenvalues(ModelObjective(lm, loader, bn_mode="eval"), lm_x, k=1, tol=1e-7)
    lines += [
        "",
        f"### 2. GPT-2-style LM ({lm_obj.dim:,} parameters, {lm_obj.total_weight:,} tokens in "
        f"{len(loader)} batches), top Hessian eigenvalue",
        "",
    ]
    lines.append("| tool | seconds | products | eigenvalue | rel. error vs tol-1e-7 Lanczos |")
    lines.append("|---|---:|---:|---:|---:|")
    lines.append(
        f"| sharpminima Lanczos (tol 1e-3) | {ours_sec:.2f} | {ours.num_matvecs} | {ours.value:.6g} | "
        f"{abs(ours.value - tight.value) / abs(tight.value):.1e} |"
    )
    if args.pyhessian_path and args.pyhessian_path not in sys.path:
        sys.path.insert(0, args.pyhessian_path)
    try:
        from pyhessian import hessian as pyhessian
    except ImportError as exc:
        lines.append(f"| PyHessian 0.1 | skipped: not importable ({exc}) | | | |")
    else:
        vocab = 50

        def criterion(out: Tensor, target: Tensor) -> Tensor:
            return nn.functional.cross_entropy(out.reshape(-1, vocab), target.reshape(-1))

        torch.manual_seed(0)
        tool = pyhessian(lm, criterion, dataloader=loader, cuda=False)
        (theirs, _), their_sec = timed(lambda: tool.eigenvalues(top_n=1))
        their_value = theirs[0]
        lines.append(
            f"| PyHessian 0.1 power iteration (defaults) | {their_sec:.2f} | - | {their_value:.6g} | "
            f"{abs(their_value - tight.value) / abs(tight.value):.1e} |"
        )
        lines.append("")
        lines.append(
            f"sharpminima / PyHessian time: **{ours_sec / their_sec:.2f}x**; values differ by "
            f"{abs(ours.value - their_value) / abs(their_value):.2%}."
        )
    cost_rows.append(
        (f"GPT-2-style LM, {lm_obj.total_weight:,} tokens", hvp_costs(lm_obj, lm_x, args.repeats))
    )

    lines += [
        "",
        "### 3. One Hessian-vector product, in gradients (median seconds of one over one gradient)",
        "",
        "| model | gradient s | double backward | kept graph | forward-over-reverse |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in cost_rows:
        g = c["gradient"]
        lines.append(
            f"| {name} | {g:.3f} | {c['double backward'] / g:.2f} | {c['kept graph'] / g:.2f} | "
            f"{c['fwd-over-rev'] / g:.2f} |"
        )
    lines += ["", f"Total {time.perf_counter() - started:.0f} s."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
