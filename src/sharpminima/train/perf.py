"""Speed switches of the training step, with what each costs in exactness.

Measured on the 2-core CPU the project's benchmarks run on (``benchmarks/bench_train.py``,
results in ``benchmarks/RESULTS.md``):

* **Fused Adam/AdamW** (default): torch's single-kernel CPU/CUDA update instead of its
  per-parameter loop of seven elementwise kernels. Deterministic; per step it differs from
  the loop implementation by at most an ulp or so in a few percent of the weights
  (``tests/train/test_perf_equivalence.py`` states the tolerance).
* **torch.compile of forward + loss + backward** (opt-in, ``method_args=(("compile",
  True),)``): Inductor fuses each BatchNorm with its ReLU and the loss into generated
  C++ kernels. Deterministic on CPU for a fixed thread count, but its reductions sum in a
  different order than eager BatchNorm, so results drift from the eager path like any
  float reordering; and the first step of each new batch shape pays a compile (tens of
  seconds on 2 cores, less when Inductor's on-disk cache is warm).

What did not pay here is recorded in the benchmark's output, not switched on.
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
