"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar, both atomic.

A checkpoint is two files: ``NAME.safetensors`` (the tensors, never pickle) and
``NAME.json`` (the sidecar: the caller's ``meta`` plus the SHA-256 and size of the
safetensors file). Each is written to a temporary file in the same folder, flushed,
fsynced and ``os.replace``-d into place, and the folder is fsynced after each rename.
The sidecar is renamed last and is the commit marker: :func:`load_checkpoint` refuses a
tensor file without a sidecar or one whose bytes do not match the sidecar's hash, so a
reader never gets torn or mismatched weights.

Overwriting an existing checkpoint replaces the two files one after the other; a crash
in the instant between the two renames leaves a pair that :func:`load_checkpoint`
refuses (hash mismatch) rather than a silently wrong one. Callers that must always keep
one loadable checkpoint alternate between two names or keep epoch-numbered files.

Training state (model and optimizer ``state_dict``, RNG state, epoch counters) is a
nested structure; :func:`flatten_state` splits it into named tensors plus a JSON
description of everything else, and :func:`unflatten_state` rebuilds it exactly::

    tensors, meta = flatten_state({"model": model.state_dict(),
                                   "optimizer": opt.state_dict(),
                                   "epoch": 3, "rng": torch.get_rng_state()})
    save_checkpoint(run_dir / "last.safetensors", tensors, {**meta, "epoch": 3})
    tensors, meta = load_checkpoint(run_dir / "last.safetensors")
    state = unflatten_state(tensors, meta)
"""

# ruff: noqa: D413  (Google style: no blank line closes a docstring; pyproject lacks convention)

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import stat
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from sharpminima.atomic import atomic_target
from sharpminima.errors import StoreError
from sharpminima.store import _json

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "flatten_state",
    "is_committed",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten_state",
]

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "sharpminima.checkpoint"
SIDECAR_VERSION = 1
STATE_KEY = "state_structure"
"""Key of :func:`flatten_state`'s description in ``meta``; kept verbatim in sidecars."""

_STATE_FORMAT = "sharpminima.state/1"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------------- atomic IO


def _atomic_target(path: Path) -> contextlib.AbstractContextManager[IO[bytes]]:
    """Atomic replacement of ``path`` (see :func:`sharpminima.atomic.atomic_target`)."""

    def error(p: Path, exc: OSError) -> StoreError:
        return StoreError(
            f"{p}: cannot write to {p.parent} ({exc.strerror or exc}); "
            "point the store at a writable folder (SHARPMINIMA_STORE)"
        )

    return atomic_target(path, error)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one.

    Args:
        path: Destination file; its folder is created if missing.
        data: Bytes to write.

    Raises:
        StoreError: The folder cannot be created or written.
    """
    with _atomic_target(Path(path)) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`.

    Args:
        path: Destination file; its folder is created if missing.
        text: Text to write.

    Raises:
        StoreError: The folder cannot be created or written.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- checkpoints


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def is_committed(path: str | os.PathLike[str]) -> bool:
    """Whether the checkpoint ``path`` was committed: its sidecar, written last, exists.

    A tensor file without a sidecar is a save that was killed before it finished; a
    committed one may still fail :func:`load_checkpoint`'s checks (a damaged file).
    """
    return _sidecar(Path(path)).is_file()


def _prepare_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detach, move to CPU and make contiguous; clone tensors that share storage.

    safetensors refuses tensors that share memory (tied weights, views) and
    non-contiguous ones; a tensor that is the only user of its whole storage is kept
    without a copy.
    """
    out: dict[str, Tensor] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, Tensor):
            raise StoreError(
                f"checkpoint tensors must map str to torch.Tensor, got {name!r}: "
                f"{type(tensor).__name__}; use flatten_state for nested state"
            )
        t = tensor.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        key = (str(storage.device), storage.data_ptr())
        whole = t.storage_offset() == 0 and t.numel() * t.element_size() == storage.nbytes()
        if t.numel() > 0 and (key in seen_storage or not whole):
            t = t.clone()
        elif t.numel() > 0:
            seen_storage.add(key)
        out[name] = t
    return out


def save_checkpoint(path: str | os.PathLike[str], tensors: dict[str, Tensor], meta: dict) -> None:
    """Write a checkpoint: ``path`` (safetensors) then its sidecar ``path.with_suffix(".json")``.

    Tensors are detached, moved to CPU and made contiguous; tensors sharing storage are
    cloned so each is stored once under its own name. Both files are written atomically
    (temporary file, fsync, ``os.replace``, folder fsync) and the sidecar, written last,
    commits the checkpoint. If anything raises, no temporary file is left behind and a
    previous checkpoint at ``path`` is untouched unless the tensor file was already
    replaced (see the module docstring).

    Args:
        path: Destination, ending in ``.safetensors``; its folder is created if missing.
        tensors: Named tensors (for nested state use :func:`flatten_state`).
        meta: JSON-serialisable metadata, returned by :func:`load_checkpoint`.
            Non-finite floats come back as floats; the :data:`STATE_KEY` entry written
            by :func:`flatten_state` is kept verbatim.

    Raises:
        StoreError: ``path`` does not end in ``.safetensors``, ``tensors`` is not a
            ``str -> Tensor`` dict, ``meta`` is not JSON-serialisable, safetensors
            cannot encode a tensor, or the folder cannot be written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise StoreError(f"{path}: a checkpoint file must end in .safetensors")
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: checkpoint meta must be a dict, got {type(meta).__name__}")
    prepared = _prepare_tensors(tensors)
    meta_json = _json.dumps(meta, what=f"{path.name} meta")  # fail before writing anything
    try:
        data = st_save(prepared)
    except Exception as exc:  # safetensors raises several types; one line for the user
        raise StoreError(f"{path}: safetensors cannot encode the tensors ({exc})") from exc
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "meta": json.loads(meta_json),
    }
    sidecar_text = _json.dumps(sidecar, what=f"{path.name} sidecar") + "\n"
    atomic_write_bytes(path, data)
    atomic_write_text(_sidecar(path), sidecar_text)
    logger.debug("saved checkpoint %s (%d tensors, %d bytes)", path, len(prepared), len(data))


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its sidecar.

    The file is read once; its size and SHA-256 are checked against the sidecar before
    safetensors parses it.

    Args:
        path: The ``.safetensors`` file.
        device: Where to put the tensors. Keep ``"cpu"`` for training state:
            ``torch.set_rng_state`` wants a CPU tensor, and ``load_state_dict`` moves
            parameters and optimizer state to the model's device itself.

    Returns:
        ``(tensors, meta)``: the named tensors and the ``meta`` dict given to
        :func:`save_checkpoint`.

    Raises:
        StoreError: The file or its sidecar is missing, the sidecar is unreadable, or
            the file's size or SHA-256 differs from the sidecar's, or the file is not
            valid safetensors.
    """
    path = Path(path)
    sidecar_path = _sidecar(path)
    if not path.exists() and not path.is_symlink():
        raise StoreError(f"{path}: checkpoint not found; check the run folder")
    if not path.is_file():
        raise StoreError(
            f"{path}: cannot read checkpoint (not a regular file: a folder, device or broken link); "
            "delete it and resume from an earlier checkpoint"
        )
    try:
        text = _read_regular(sidecar_path, _json.MAX_CHARS)
        sidecar = _json.parse(text, what=f"sidecar {sidecar_path.name}")
    except FileNotFoundError:
        raise StoreError(
            f"{path}: no sidecar {sidecar_path.name}, so the checkpoint was never committed "
            "(interrupted save?); delete it and resume from an earlier checkpoint"
        ) from None
    except (OSError, StoreError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise StoreError(
            f"{path}: sidecar {sidecar_path.name} is unreadable ({text}); "
            "delete both files and resume from an earlier checkpoint"
        ) from None
    if (
        not isinstance(sidecar, dict)
        or sidecar.get("format") != SIDECAR_FORMAT
        or not {"sha256", "size", "meta"} <= sidecar.keys()
        or not isinstance(sidecar["meta"], dict)
        or isinstance(sidecar["size"], bool)
        or not isinstance(sidecar["size"], int)
        or sidecar["size"] < 0
    ):
        raise StoreError(
            f"{path}: {sidecar_path.name} is not a sharpminima checkpoint sidecar; "
            "was the file written by save_checkpoint?"
        )
    try:
        # Read at most one byte more than the sidecar promises: a device, a FIFO or a
        # growing file is never read to the end.
        data = _read_regular(path, sidecar["size"])
    except FileNotFoundError:
        raise StoreError(f"{path}: checkpoint not found; check the run folder") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    if len(data) != sidecar["size"]:
        raise StoreError(
            f"{path}: size {len(data)} bytes differs from {sidecar['size']} in its sidecar "
            "(truncated, or a save was interrupted); resume from an earlier checkpoint"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar["sha256"]:
        raise StoreError(
            f"{path}: sha256 {digest[:12]}... differs from {str(sidecar['sha256'])[:12]}... "
            "in its sidecar (corrupt, or a save was interrupted); "
            "resume from an earlier checkpoint"
        )
    try:
        tensors = st_load(data)
    except Exception as exc:  # SafetensorError and friends
        raise StoreError(f"{path}: not a valid safetensors file ({exc})") from exc
    if torch.device(device).type != "cpu":
        tensors = {name: t.to(device) for name, t in tensors.items()}
    raw_meta = sidecar["meta"]
    meta = {
        key: value if key == STATE_KEY else _json.decode_nonfinite(value)
        for key, value in raw_meta.items()
    }
    return tensors, meta


def _read_regular(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of ``path``, which must be a regular file.

    A larger file shows as too long without being read whole; a symlink to ``/dev/zero``,
    a FIFO or a folder is refused before anything is read.

    Raises:
        OSError: The file cannot be opened (``FileNotFoundError`` if missing) or is not a
            regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a device, FIFO, folder or socket?)", str(path))
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- flatten


def _encode_scalar(value: Any, where: str) -> Any:
    """Encode a non-tensor leaf (or dict key) as JSON that survives :func:`_json.loads`."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, str):
        # The store turns these three strings into floats when it reads JSON; tag them.
        return {"str": value} if value in ("NaN", "Infinity", "-Infinity") else value
    raise StoreError(
        f"cannot checkpoint {type(value).__name__} at {where or '<root>'}; state may hold "
        "dicts, lists, tuples, tensors, numpy arrays, int, float, bool, str and None"
    )


def _decode_scalar(value: Any) -> Any:
    if isinstance(value, dict):
        if "float" in value:
            return _NONFINITE[value["float"]]
        return value["str"]
    return value


def flatten_state(state: Any) -> tuple[dict[str, Tensor], dict]:
    """Split nested training state into named tensors and a JSON description.

    Tensors are named by their path, ``/``-joined (``model/0.weight``,
    ``optimizer/state/0/exp_avg``); a clash (``{0: ..., "0": ...}``) gets a ``~N``
    suffix. The description, stored under ``meta[STATE_KEY]``, records the containers
    (dict key order and key types, so the integer keys of an optimizer's ``state``
    survive; lists versus tuples), every non-tensor leaf (exact float repr, NaN and
    infinities included), which leaves were numpy arrays, and the ``_metadata`` of
    ``OrderedDict`` state dicts (module versions ``load_state_dict`` consults). Tensors
    are returned as they are (same objects, same device); :func:`save_checkpoint` moves
    them to CPU.

    Args:
        state: Dicts (keys str, int, float, bool or None), lists and tuples whose leaves
            are tensors, numpy arrays, int, float, bool, str or None.

    Returns:
        ``(tensors, meta)`` for :func:`save_checkpoint`; add your own keys to ``meta``.

    Raises:
        StoreError: A leaf or dict key of another type.
    """
    tensors: dict[str, Tensor] = {}

    def name_for(where: str) -> str:
        base = where or "_"
        name, n = base, 1
        while name in tensors:
            name, n = f"{base}~{n}", n + 1
        return name

    def encode(value: Any, where: str) -> Any:
        if isinstance(value, Tensor):
            name = name_for(where)
            tensors[name] = value
            return {"tensor": name}
        if isinstance(value, np.ndarray):
            name = name_for(where)
            try:
                tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
            except TypeError as exc:
                raise StoreError(
                    f"cannot checkpoint numpy array of dtype {value.dtype} at {where}; "
                    "convert it to a numeric dtype"
                ) from exc
            return {"ndarray": name}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                sub = f"{where}/{key}" if where else str(key)
                items.append([_encode_scalar(key, sub), encode(item, sub)])
            if not isinstance(value, OrderedDict):
                return {"dict": items}
            node: dict[str, Any] = {"odict": items}
            # Module.state_dict() keeps per-module versions in ._metadata, which
            # load_state_dict passes to _load_from_state_dict (BatchNorm reads it).
            metadata = getattr(value, "_metadata", None)
            if metadata is not None:
                node["metadata"] = encode(metadata, f"{where}/_metadata")
            return node
        if isinstance(value, list | tuple):
            items = [
                encode(item, f"{where}/{i}" if where else str(i)) for i, item in enumerate(value)
            ]
            return {"tuple" if isinstance(value, tuple) else "list": items}
        return _encode_scalar(value, where)

    structure = encode(state, "")
    return tensors, {STATE_KEY: {"format": _STATE_FORMAT, "root": structure}}


def unflatten_state(tensors: dict[str, Tensor], meta: dict) -> Any:
    """Rebuild the state given to :func:`flatten_state` from its tensors and meta.

    Args:
        tensors: Named tensors (e.g. from :func:`load_checkpoint`).
        meta: The meta dict holding :data:`STATE_KEY` (other keys are ignored).

    Returns:
        The nested structure: same containers, key types and order, leaves and tensors
        (bit-identical, same dtypes; numpy arrays come back as numpy arrays).

    Raises:
        StoreError: ``meta`` has no state description, or a tensor it names is missing.
    """
    description = meta.get(STATE_KEY) if isinstance(meta, dict) else None
    if not isinstance(description, dict) or description.get("format") != _STATE_FORMAT:
        raise StoreError(
            f"checkpoint meta has no {STATE_KEY!r} entry of format {_STATE_FORMAT}; "
            "was it saved from flatten_state?"
        )

    def tensor(name: str) -> Tensor:
        try:
            return tensors[name]
        except KeyError:
            raise StoreError(
                f"checkpoint has no tensor {name!r} named in its state description; "
                "the checkpoint is incomplete, resume from an earlier one"
            ) from None

    def decode(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "tensor" in node:
            return tensor(node["tensor"])
        if "ndarray" in node:
            return tensor(node["ndarray"]).cpu().numpy()
        if "dict" in node:
            return {_decode_scalar(key): decode(item) for key, item in node["dict"]}
        if "odict" in node:
            odict = OrderedDict((_decode_scalar(key), decode(item)) for key, item in node["odict"])
            if "metadata" in node:
                odict._metadata = decode(node["metadata"])  # type: ignore[attr-defined]
            return odict
        if "list" in node:
            return [decode(item) for item in node["list"]]
        if "tuple" in node:
            return tuple(decode(item) for item in node["tuple"])
        return _decode_scalar(node)

    return decode(description["root"])
