"""Speed switches of the training step, with what each costs in exactness.

Measured for F1 on the project's 2-core CPU by ``benchmarks/bench_train.py`` (results in
``benchmarks/RESULTS.md``):

* **Fused Adam/AdamW** (default, :mod:`sharpminima.train.optim`): torch's single-kernel
  CPU/CUDA update instead of its per-parameter loop of seven elementwise kernels; about
  10% more samples/s at batch 256. Deterministic; per step it differs from the unfused
  update by about one ulp in ~3% of the weights (``tests/train/test_perf_equivalence.py``
  states the tolerance). ``foreach=True`` is bit-identical to the unfused update but was
  no faster on CPU, so it is not used.
* **torch.compile of forward + loss + backward** (opt-in, ``method_args=(("compile",
  True),)``): Inductor fuses each BatchNorm with its ReLU and the loss into generated C++
  kernels. A few percent faster at batch 256, slower at batch 6000, and the first step of
  each batch shape compiles (about 30 s cold on 2 cores for an epoch's two shapes, a few
  seconds from Inductor's on-disk cache), so it pays only for long runs at small batch.
  Deterministic on CPU for a fixed thread count (a killed and resumed compiled run ends
  bit-identical), but its reductions sum in another order than eager BatchNorm, so its
  results drift from the eager path like any float reordering.
* Left as torch sets them: 2 threads on 2 cores (1 thread is 25-35% slower),
  ``zero_grad(set_to_none=True)`` (already the step's choice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

#: Devices whose fused Adam kernels we test and use.
FUSED_DEVICE_TYPES = ("cpu", "cuda")


def _tensors(params: Iterable[Any]) -> list[Tensor]:
    """Flatten an optimizer's ``params`` argument (tensors or param-group dicts)."""
    out: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            out.extend([group] if isinstance(group, Tensor) else group)
        else:
            out.append(item)
    return out


def can_fuse(params: Iterable[Any]) -> bool:
    """Whether torch's fused optimizer kernels accept every tensor in ``params``.

    They need floating-point tensors on one device type of :data:`FUSED_DEVICE_TYPES`.
    """
    tensors = _tensors(params)
    if not tensors:
        return False
    device_types = {t.device.type for t in tensors}
    return (
        len(device_types) == 1
        and device_types <= set(FUSED_DEVICE_TYPES)
        and all(t.is_floating_point() for t in tensors)
    )


def compiled(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Return ``fn`` compiled by Inductor for static shapes.

    ``dynamic=False``: an epoch has at most two batch shapes (full and last), and each
    gets its own specialised kernels rather than slower shape-generic ones.
    """
    return torch.compile(fn, dynamic=False)
