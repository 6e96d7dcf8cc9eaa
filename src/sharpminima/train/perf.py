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

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from sharpminima.data.base import Dataset

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


def set_cuda_flags() -> None:
    """Allow TF32 tensor-core matmuls and convolutions and cuDNN autotuning (process-wide).

    See :func:`prepare` for what they change; vectorised trials call this alone (their
    parameters are stacked, so channels_last does not apply to them).
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def cuda_flags_restored() -> Iterator[None]:
    """Restore the process-wide matmul precision and cuDNN flags on leaving the block.

    Training may switch TF32 on (:func:`set_cuda_flags`); landscape measures computed later
    in the same process must not inherit it, or a stored measurement would depend on
    whether something was trained first.
    """
    precision = torch.get_float32_matmul_precision()
    tf32, bench = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = tf32, bench


def prepare(model: nn.Module, data: Dataset, device: torch.device) -> tuple[nn.Module, Dataset]:
    """Apply the CUDA fast path to a freshly built model and its on-device data; no-op elsewhere.

    Call it once, after the model and data are on ``device`` and before the optimizer is
    built (so the optimizer holds the converted parameters). On CUDA:

    * **TF32 matmuls and convolutions** (``torch.set_float32_matmul_precision("high")``,
      ``cudnn.allow_tf32``): tensor-core products with a 10-bit mantissa in the inputs and
      fp32 accumulation. Process-wide. It changes results at about 1e-3 relative per
      product, like any GPU run differs from a CPU one; it was *not* checked against the
      fp32 path on a GPU here (no GPU was available), so reproduction numbers from a GPU
      should state it. bf16 autocast is not switched on for the same reason; it is
      opt-in per run (``method_args=(("autocast", "bf16"),)``, see
      :func:`sharpminima.train.methods.plain`).
    * **cuDNN autotuning** (``cudnn.benchmark``): an epoch has at most two batch shapes,
      so the per-shape search pays for itself within the first epoch.
    * **channels_last** for networks with 2-D convolutions: parameters and the image data
      are converted to NHWC, which tensor-core convolution kernels read without a
      transpose. Batches indexed from channels_last data stay channels_last.

    The step loop itself needs nothing here: its loss sum stays on the device and only
    the end of an epoch synchronises (``float(loss_sum)``).

    Args:
        model: The network, already on ``device``.
        data: The data, already on ``device``.
        device: The training device.

    Returns:
        ``(model, data)``: the same objects on CPU; converted ones on CUDA.
    """
    if device.type != "cuda":
        return model, data
    set_cuda_flags()
    if any(isinstance(m, nn.Conv2d) for m in model.modules()) and data.x_train.ndim == 4:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        data = dataclasses.replace(
            data,
            x_train=data.x_train.contiguous(memory_format=torch.channels_last),
            x_test=data.x_test.contiguous(memory_format=torch.channels_last),
        )
    return model, data
