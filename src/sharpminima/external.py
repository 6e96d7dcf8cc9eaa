"""Models, weights and data that ``sharpminima train`` did not make: factories and checkpoints.

``sharpminima measure --model pkg.mod:factory --weights FILE --data pkg.mod:loader_factory``
measures any network:

* ``--model`` names a function that takes no arguments and returns the ``nn.Module``
  (built, not trained: the weights come from ``--weights``);
* ``--weights`` is a ``.safetensors`` file or a PyTorch state dict (``.pt``, ``.pth``,
  ``.bin``), read with ``torch.load(weights_only=True)``, which unpickles tensors and
  plain containers only, never code. A dict holding the state dict under ``state_dict``
  or ``model`` (a training checkpoint) is read too;
* ``--data`` names a function that takes no arguments and returns the data: a DataLoader
  or another re-iterable of batches, a tuple ``(inputs, targets)`` of tensors, or a
  :class:`~sharpminima.data.base.Dataset` (its training split).

Every failure (a factory that does not import, raises, returns the wrong thing; weights
that do not fit the model) is one :class:`~sharpminima.errors.ConfigError` line. The
measurement's owner in the store is an ``external`` run keyed by a sha256 of the
weights themselves, the model and data factories and the loss, so the same measurement is not
redone and ``runs list`` / ``runs show`` show it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError, DataError
from sharpminima.factories import call_factory

#: Kind of the store's runs for external checkpoints.
EXTERNAL_KIND = "external"

#: Largest weights file read (a state dict bigger than this is refused, not read).
MAX_WEIGHTS_BYTES = 64 << 30


def load_model(spec: str) -> nn.Module:
    """Build the network of ``--model module:function``.

    Raises:
        ConfigError: As :func:`call_factory`.
    """
    return call_factory(spec, "model factory", lambda m: isinstance(m, nn.Module), "a torch.nn.Module")


def load_data(spec: str) -> Any:
    """The data of ``--data module:function``: a loader, ``(inputs, targets)`` or a Dataset.

    Raises:
        ConfigError: As :func:`call_factory`.
    """
    from sharpminima.data.base import Dataset

    def usable(out: Any) -> bool:
        if isinstance(out, Dataset):
            return True
        if isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out):
            return True
        return hasattr(out, "__iter__") and not isinstance(out, str | bytes | Tensor)

    data = call_factory(
        spec,
        "data factory",
        usable,
        "a DataLoader, an iterable of batches, (inputs, targets) tensors or a Dataset",
    )
    if isinstance(data, Dataset):
        return data.x_train, data.y_train
    return data


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read weights from a ``.safetensors`` file or a PyTorch state dict (never a full pickle).

    Raises:
        DataError: If the file is missing, not a regular file, too large, unreadable, or
            holds no dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"weights file {p} does not exist or is not a regular file")
    size = p.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise DataError(f"weights file {p} has {size} bytes, over the {MAX_WEIGHTS_BYTES} limit")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"cannot read safetensors file {p}: {exc}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot read {p} as a PyTorch state dict with weights_only=True ({first}); save it with "
            "torch.save(model.state_dict(), path) or as .safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(f"{p} holds no state dict (a dict of tensors)")
    return obj


def weights_sha256(state: dict[str, Tensor]) -> str:
    """A digest of weights themselves (names, dtypes, shapes, values), whatever the file format."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> str:
    """Load a weights file into ``model`` (every key must fit, shapes included).

    Returns:
        The weights' :func:`weights_sha256`.

    Raises:
        ConfigError: If the weights do not fit the model (names or shapes).
        DataError: As :func:`read_state_dict`.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(
                f"shape of {k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
            )
        raise ConfigError(f"the weights in {path} do not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return weights_sha256(state)


def external_identity(
    model: str, weights: str | os.PathLike[str], digest: str, data: str, loss: str
) -> tuple[dict, str]:
    """The store config and hash of an external checkpoint's run.

    The hash covers the weights themselves (:func:`weights_sha256`: the same weights in a
    ``.safetensors`` file, a state dict or a training checkpoint are one run; changed
    weights are a new one), the model and data factories and the loss.
    """
    config = {"model": model, "weights": str(weights), "weights_sha256": digest, "data": data, "loss": loss}
    key = json.dumps({k: v for k, v in config.items() if k != "weights"}, sort_keys=True)
    return config, hashlib.sha256(key.encode()).hexdigest()
