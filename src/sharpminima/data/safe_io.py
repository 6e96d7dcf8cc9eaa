"""Safe reading and atomic writing of dataset files.

Two dataset sources ship as pickles (the deeplearning.net ``mnist.pkl.gz`` and the
CIFAR "python version" batches). Unpickling runs whatever callable the file names, so
:class:`RestrictedUnpickler` resolves only the handful of globals that rebuild numpy
arrays and builtin containers; any other global (``os.system``, ``builtins.eval``,
``subprocess.Popen`` ...) is refused with a :class:`~sharpminima.errors.DataError`
before anything is called.

Every reader treats its file as hostile (docs/data-limits.md states the limits): a size
read from a header is checked by :func:`check_alloc` against a stated maximum and against
what the file can actually hold before anything is allocated; compressed streams are
opened by content (:func:`open_payload`) and capped (:class:`CappedReader`); ``.npz``
files are read member by member without numpy's loader (:func:`read_npz`); the library
errors of a corrupt file become one-line DataErrors (:func:`reading`).

Writes go through :func:`atomic_target`: the bytes land in a temporary file in the
destination folder, are fsynced and then ``os.replace``-d over the destination, so a
reader sees either the old file or the complete new one, never a partial file, and the
temporary file is removed if anything fails (including ``KeyboardInterrupt``).
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import hashlib
import io
import lzma
import math
import operator
import os
import pickle
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from sharpminima.atomic import atomic_target as _atomic_target
from sharpminima.errors import DataError

__all__ = [
    "ARRAY_KINDS",
    "LIBRARY_ERRORS",
    "MAX_ARRAY_BYTES",
    "MAX_INFLATE_RATIO",
    "MAX_NUM_CLASSES",
    "MIN_INFLATE_BYTES",
    "CappedReader",
    "Payload",
    "RestrictedUnpickler",
    "atomic_target",
    "atomic_write_bytes",
    "check_alloc",
    "check_num_classes",
    "format_bytes",
    "max_inflated_bytes",
    "md5_file",
    "one_line",
    "open_payload",
    "open_regular",
    "read_exact",
    "read_npz",
    "reading",
    "restricted_load",
    "restricted_loads",
    "save_npz",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK_BYTES = 1 << 20

# ------------------------------------------------------------------ stated limits
#: Largest array any reader allocates, in bytes. Every size read from a header (IDX
#: dimensions, an ``.npy`` header inside an ``.npz``, an array shape in a pickle) is
#: checked against it before anything is allocated. The paper's largest input, TIMIT's
#: frames as float64, is about 3.2 GB; 8 GiB leaves room for larger feature sets while a
#: hostile header asking for petabytes fails at once with a one-line error.
MAX_ARRAY_BYTES = 8 * 2**30
#: A compressed stream (gzip, bzip2, xz, a deflated ``.npz`` member) may expand to at most
#: this many times its compressed size. Real dataset files expand 1.1x (CIFAR) to 14x
#: (``mnist.pkl.gz``); a decompression bomb expands about 1000x, so it is refused after
#: reading a bounded amount instead of filling memory.
MAX_INFLATE_RATIO = 64
#: ... but a stream may always expand to this many bytes, so small, very regular files
#: (a test set of blank images) still load.
MIN_INFLATE_BYTES = 64 * 2**20
#: Most classes a dataset may declare (also the largest integer target of a data
#: factory: a token vocabulary). The output layer holds ``width x num_classes`` weights
#: (512 x 1,000,000 float32 = 2 GB); more is almost surely a corrupt or hostile file, and
#: ``2**40`` would ask training for petabytes.
MAX_NUM_CLASSES = 1_000_000
#: dtype kinds a dataset array may have: bool, signed and unsigned integers, floats,
#: complex numbers, bytes and text. Object arrays (they need pickle), structured and
#: void dtypes, datetimes are refused.
ARRAY_KINDS = "biufcSU"
#: What the standard library and numpy raise on a corrupt, truncated or hostile file.
#: At the file-reading edges these become one-line DataErrors (see :func:`reading`).
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    MemoryError, OSError, EOFError, ValueError, OverflowError, struct.error, zlib.error,
    lzma.LZMAError, zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError,
    NotImplementedError, RuntimeError, pickle.UnpicklingError,
)  # fmt: skip


def format_bytes(num_bytes: int) -> str:
    """``num_bytes`` for messages: ``"512 bytes"``, ``"4.0 MiB"``, ``"2.9e+15 bytes"``."""
    if num_bytes < 1024:
        return f"{num_bytes} bytes"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}" if num_bytes < 2**50 else f"{num_bytes:.2g} bytes"
    return f"{num_bytes} bytes"  # pragma: no cover


def one_line(exc: BaseException) -> str:
    """A library exception's message on one line (numpy's can span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def check_alloc(
    shape: object, dtype: object, *, available_bytes: int, what: str
) -> int:
    """Check an array size read from a header before anything is allocated.

    The size is ``prod(shape) * itemsize``, computed with Python integers (no overflow).
    It must not exceed :data:`MAX_ARRAY_BYTES` (a stated limit) nor ``available_bytes``,
    the most the file can actually hold (its size, or what its compressed size can
    expand to, see :func:`max_inflated_bytes`): a tiny file cannot claim a huge array.

    Args:
        shape: The shape from the header (a tuple of integers, or one integer).
        dtype: The element type from the header.
        available_bytes: Bytes of payload the file can provide.
        what: The file (or ``file!member``) for messages.

    Returns:
        The array's size in bytes.

    Raises:
        DataError: A malformed shape or dtype, a negative dimension, or a size above
            :data:`MAX_ARRAY_BYTES` or above ``available_bytes``.

    """
    try:
        dims = (operator.index(shape),) if not isinstance(shape, tuple | list) else tuple(
            operator.index(d) for d in shape
        )
        item = np.dtype(dtype).itemsize  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise DataError(
            f"{what}: header gives shape {shape!r:.80} and dtype {dtype!r:.40}, not an array "
            "description; the file is corrupt, fetch it again"
        ) from None
    if any(d < 0 for d in dims):
        raise DataError(
            f"{what}: header gives negative dimensions {dims}; the file is corrupt, fetch it again"
        )
    count = math.prod(dims)
    nbytes = count * item
    # Elements and single dimensions are bounded too: a zero-size dtype or a zero
    # dimension must not smuggle through a row count that later code allocates for.
    if max(nbytes, count, *dims) > MAX_ARRAY_BYTES:
        raise DataError(
            f"{what}: header claims an array of shape {dims} ({format_bytes(nbytes)}), above the "
            f"{format_bytes(MAX_ARRAY_BYTES)} limit for one array; the file is corrupt or not a "
            "dataset file (see docs/data-limits.md)"
        )
    if nbytes > available_bytes:
        raise DataError(
            f"{what}: header claims an array of shape {dims} ({format_bytes(nbytes)}) but the "
            f"file can hold at most {format_bytes(max(available_bytes, 0))}; it is truncated or "
            "corrupt, fetch it again"
        )
    return nbytes


def check_num_classes(value: object, what: str) -> int:
    """Check a number of classes read from a file: an integer in [2, MAX_NUM_CLASSES].

    Args:
        value: The number (a Python or numpy integer).
        what: The file for messages.

    Returns:
        The number as an ``int``.

    Raises:
        DataError: Not an integer, below 2, or above :data:`MAX_NUM_CLASSES`.

    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise DataError(f"{what}: num_classes must be one integer >= 2, got {value!r:.80}")
    number = int(value)
    if number < 2 or number > MAX_NUM_CLASSES:
        raise DataError(
            f"{what}: num_classes must be one integer >= 2 and at most {MAX_NUM_CLASSES:,}, got "
            f"{number}; fix the file (see docs/data-limits.md)"
        )
    return number


def max_inflated_bytes(compressed_bytes: int) -> int:
    """The most bytes ``compressed_bytes`` of a compressed stream may expand to.

    ``max(MAX_INFLATE_RATIO * compressed_bytes, MIN_INFLATE_BYTES)``, never above
    :data:`MAX_ARRAY_BYTES` plus one chunk (headers and containers around the arrays).
    """
    bound = max(MAX_INFLATE_RATIO * max(compressed_bytes, 0), MIN_INFLATE_BYTES)
    return min(bound, MAX_ARRAY_BYTES + _CHUNK_BYTES)


@contextlib.contextmanager
def reading(what: str, hint: str) -> Iterator[None]:
    """Turn the library errors of reading a file into one-line DataErrors.

    Memory errors (a header that got past the checks, a machine short of memory), OS
    errors and the errors of zip, gzip, bzip2, xz, tar, pickle and numpy parsers all
    become ``DataError("{what}: ...; {hint}")``. DataErrors pass unchanged.

    Args:
        what: The file for messages.
        hint: What the user should do (e.g. ``"fetch it again"``).

    Raises:
        DataError: For any of :data:`LIBRARY_ERRORS` raised in the block.

    """
    try:
        yield
    except DataError:
        raise
    except MemoryError as exc:
        raise DataError(f"{what}: not enough memory to read it; {hint}") from exc
    except LIBRARY_ERRORS as exc:
        raise DataError(
            f"{what}: corrupt or truncated ({type(exc).__name__}: {one_line(exc)}); {hint}"
        ) from exc


def open_regular(path: str | os.PathLike[str], hint: str = "") -> IO[bytes]:
    """Open a regular file for binary reading; refuse folders, devices and pipes.

    A path to ``/dev/zero`` or ``/dev/urandom`` would read forever, and opening a named
    pipe would block; neither is opened as a dataset file (the pipe is opened without
    blocking and closed again).

    Args:
        path: The file.
        hint: What to do, appended to the messages (``"; {hint}"``).

    Returns:
        A binary file object (the caller closes it).

    Raises:
        DataError: Missing, a folder, not a regular file, or unreadable.

    """
    tail = f"; {hint}" if hint else ""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found{tail}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file{tail}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise DataError(f"{path}: cannot open ({getattr(exc, 'strerror', None) or exc}){tail}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise DataError(f"{path}: is a folder, expected a file{tail}")
        raise DataError(f"{path}: not a regular file (a device, pipe or socket); pass the file itself")
    return os.fdopen(fd, "rb")


class CappedReader(io.RawIOBase):
    """A read-only stream that refuses to yield more than ``max_bytes`` bytes of ``inner``.

    Reading past the cap raises :class:`DataError` (if ``inner`` has more), so a
    decompression bomb is stopped after ``max_bytes``, not when memory runs out.
    ``bytes_read`` counts what has been read so far.

    Args:
        inner: A binary stream (a gzip, bzip2 or xz stream, a file).
        max_bytes: The cap.
        what: The file for messages.
        reason: Why the cap, for the message (e.g. ``"64 times its compressed size"``).

    """

    def __init__(self, inner: IO[bytes], max_bytes: int, *, what: str, reason: str) -> None:
        super().__init__()
        self._inner = inner
        self.max_bytes = max_bytes
        self.bytes_read = 0
        self._what = what
        self._reason = reason

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read at most ``len(buffer)`` bytes (and at most 1 MiB) into ``buffer``."""
        view = memoryview(buffer).cast("B")
        room = self.max_bytes - self.bytes_read
        if not len(view):
            return 0
        if room <= 0:
            if self._inner.read(1):
                raise DataError(
                    f"{self._what}: holds more than {format_bytes(self.max_bytes)} "
                    f"({self._reason}); refusing a corrupt file or a decompression bomb, "
                    "fetch the file again"
                )
            return 0
        chunk = self._inner.read(min(len(view), room, _CHUNK_BYTES))
        view[: len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)


@dataclass
class Payload:
    """A file's content as a stream, decompressed if it was compressed.

    Attributes:
        stream: The (decompressed) content, capped at ``max_bytes``.
        max_bytes: The most bytes the content can have: the file size for a plain
            file, :func:`max_inflated_bytes` of it for a compressed one.
        compression: ``""``, ``"gzip"``, ``"bzip2"`` or ``"xz"``.

    """

    stream: IO[bytes]
    max_bytes: int
    compression: str


_MAGICS = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def open_payload(fh: IO[bytes], *, what: str, size: int | None = None) -> Payload:
    """Wrap an open binary file so that reading it yields its decompressed content.

    The compression is recognised by its magic bytes (gzip, bzip2, xz), not by the file
    name. A compressed stream is capped at :func:`max_inflated_bytes` of the file size.

    Args:
        fh: The file, positioned at its start (seekable).
        what: The file for messages.
        size: The file's size in bytes; default from ``fstat``/``seek``.

    Returns:
        The :class:`Payload`.

    """
    if size is None:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
    head = fh.read(6)
    fh.seek(0)
    compression = next((name for magic, name in _MAGICS if head.startswith(magic)), "")
    if not compression:
        return Payload(fh, size, "")
    inner: IO[bytes]
    if compression == "gzip":
        inner = gzip.GzipFile(fileobj=fh, mode="rb")
    elif compression == "bzip2":
        inner = bz2.BZ2File(fh, "rb")
    else:
        inner = lzma.LZMAFile(fh, "rb")
    cap = max_inflated_bytes(size)
    reason = (
        f"a {format_bytes(size)} {compression} file may expand at most {MAX_INFLATE_RATIO}-fold "
        f"or to {format_bytes(MIN_INFLATE_BYTES)}"
    )
    capped = io.BufferedReader(CappedReader(inner, cap, what=what, reason=reason), _CHUNK_BYTES)
    return Payload(capped, cap, compression)  # type: ignore[arg-type]


def read_exact(stream: IO[bytes], num_bytes: int, *, what: str) -> bytearray:
    """Read exactly ``num_bytes`` (already checked with :func:`check_alloc`) in chunks.

    Args:
        stream: A binary stream.
        num_bytes: Bytes to read.
        what: The file for messages.

    Returns:
        The bytes (a writable buffer, so ``np.frombuffer`` gives a writable array).

    Raises:
        DataError: The stream ends early (the file is truncated).

    """
    out = bytearray(num_bytes)
    view = memoryview(out)
    got = 0
    while got < num_bytes:
        chunk = stream.read(min(num_bytes - got, _CHUNK_BYTES))
        if not chunk:
            raise DataError(
                f"{what}: ends after {got} of the {num_bytes} data bytes its header announces; "
                "the file is truncated, fetch it again"
            )
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return out
_ONLY_DATA = "a dataset file may only hold numpy arrays and builtin containers"


class _RefusedCall(pickle.UnpicklingError):
    """An admitted global was called with arguments it refuses."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol <= 2.

    Only the latin-1 codec is admitted: it is the one the pickler emits, and other
    codecs (``zlib``, ``base64``...) have no business in a dataset file.
    """
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise _RefusedCall(f"refused _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """Stand-in for ``bytes`` as Python 3 pickles ``b""`` at protocol <= 2 (no arguments).

    ``bytes(n)`` would allocate ``n`` zero bytes, so arguments are refused.
    """
    if args:
        raise _RefusedCall("refused bytes(...) with arguments")
    return b""


def _bytearray(*args: object) -> bytearray:
    """``bytearray`` for pickles, refusing ``bytearray(n)`` (an ``n``-byte allocation)."""
    if any(isinstance(a, int) for a in args):
        raise _RefusedCall("refused bytearray(n)")
    return bytearray(*args)  # type: ignore[arg-type]


def _safe_globals() -> dict[tuple[str, str], Any]:
    """Return the globals a dataset pickle may name, keyed by (module, name).

    Old ``numpy.core.*`` names (numpy < 2, and every Python 2 pickle) map to the same
    entries as numpy 2's ``numpy._core`` without importing the deprecated alias. The
    numpy entries are names of :class:`RestrictedUnpickler` methods (bounded stand-ins,
    bound per unpickler); the others are the objects themselves.
    """
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): "_ndarray",
        ("numpy", "dtype"): "_dtype",
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = "_reconstruct"
        allowed[(f"{core}.multiarray", "scalar")] = "_scalar"
        allowed[(f"{core}.numeric", "_frombuffer")] = "_frombuffer"
    for builtins_module in ("builtins", "__builtin__"):
        for container in (set, frozenset, complex):
            allowed[(builtins_module, container.__name__)] = container
        allowed[(builtins_module, "bytearray")] = _bytearray
        allowed[(builtins_module, "bytes")] = _empty_bytes
    return allowed


_SAFE_GLOBALS = _safe_globals()
_DTYPE_FLAGS_ALLOWED = 0x08  # NPY_NEEDS_INIT (text dtypes); never the object-pointer flags
_MAX_TUPLE_DEPTH = 100  # dataset pickles nest tuples 3 deep (an array state's shape)


def _check_dtype(dtype: object) -> np.dtype:
    """A dtype a pickled dataset array may have: plain, of a kind in :data:`ARRAY_KINDS`.

    Its item size and alignment must be sane too: a dtype state can set a text dtype's
    item size to -1 or 2**31 (numpy accepts both).
    """
    if not isinstance(dtype, np.dtype):
        raise _RefusedCall(f"refused array dtype {type(dtype).__name__}")
    if dtype.hasobject or dtype.kind not in ARRAY_KINDS or dtype.fields or dtype.subdtype:
        raise _RefusedCall(f"refused numpy dtype {dtype}")
    if (
        not 1 <= dtype.itemsize <= MAX_ARRAY_BYTES
        or dtype.alignment not in (1, 2, 4, 8, 16)
        or (dtype.kind == "U" and dtype.itemsize % 4)
    ):
        raise _RefusedCall(f"refused numpy dtype {dtype.kind} of item size {dtype.itemsize}")
    return dtype


class _ChunkedReader:
    """The file interface the unpickler reads through: big reads arrive in 1 MiB chunks.

    ``read(n)`` with a length taken from the pickle never allocates ``n`` bytes up front
    (``BufferedReader.read(n)`` would), so a 20-byte pickle announcing a 1 TB string costs
    what the stream really holds.
    """

    def __init__(self, capped: CappedReader) -> None:
        self.capped = capped
        self._buffered = io.BufferedReader(capped, _CHUNK_BYTES)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self._buffered.read()
        if size <= _CHUNK_BYTES:
            return self._buffered.read(size)
        left_in_stream = self.capped.max_bytes - self.capped.bytes_read + _CHUNK_BYTES  # + buffered
        if size > left_in_stream:  # fail before reading what cannot be there
            raise pickle.UnpicklingError(
                f"the pickle announces {size} bytes where at most {left_in_stream} can follow"
            )
        parts: list[bytes] = []
        left = size
        while left:
            chunk = self._buffered.read(min(left, _CHUNK_BYTES))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def readline(self) -> bytes:
        line = self._buffered.readline()
        if not line.endswith(b"\n"):  # the pure-Python unpickler would cut a character
            raise pickle.UnpicklingError("pickle data was truncated")
        return line

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that only rebuilds numpy arrays and builtin values, within bounds.

    Lists, dicts, tuples, strings, bytes and numbers need no global and load as usual;
    ``set``, ``frozenset``, ``bytearray``, ``complex``, ``numpy.ndarray``,
    ``numpy.dtype``, numpy's array/scalar reconstructors, and the argument-free
    ``bytes()`` and latin-1 ``_codecs.encode`` (how Python 3 pickles ``bytes`` at
    protocol 2) are the only globals admitted.

    Bounds: the numpy globals are stand-ins that check every array size before it is
    allocated. An array built from a shape (``ndarray(shape)``, ``_reconstruct``) may use
    no more bytes, in total, than the pickle stream has delivered so far, so a 40-byte
    pickle cannot ask for a 61 MB array (real pickles build empty arrays and fill them
    with the bytes they carry). An array's state (``BUILD``) must carry exactly the
    bytes its shape needs, in a plain dtype (:data:`ARRAY_KINDS`; no object arrays, whose
    state numpy trusts blindly), and ``BUILD`` is admitted on arrays and dtypes only.
    The stream itself is read in chunks and capped at ``max_bytes``. The pure-Python
    unpickler is used because the C one allocates a string's announced length before
    reading it and cannot vet a ``BUILD``.

    Args:
        file: Binary file object to read the pickle from.
        path: Name of the file, used in error messages.
        encoding: How Python 2 ``str`` objects are decoded: ``"latin1"`` for the MNIST
            pickle (numpy array payloads survive latin-1), ``"bytes"`` for CIFAR
            (keys such as ``b"data"`` stay bytes), ``"ASCII"`` for Python 3 pickles.
        max_bytes: The most bytes the stream may deliver (default
            :data:`MAX_ARRAY_BYTES`); more is a :class:`DataError`.

    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file: IO[bytes],
        *,
        path: str | os.PathLike[str],
        encoding: str,
        max_bytes: int | None = None,
    ):
        self._path = str(path)
        cap = MAX_ARRAY_BYTES if max_bytes is None else max_bytes
        self._capped = CappedReader(
            file, cap, what=self._path, reason="the most a dataset pickle may hold here"
        )
        super().__init__(_ChunkedReader(self._capped), encoding=encoding)
        self._allocated = 0
        self._tuple_depths: dict[int, tuple[tuple, int]] = {}  # id -> (the tuple, its depth)

    def find_class(self, module: str, name: str) -> Any:
        """Return an admitted global.

        Args:
            module: Module name as written in the pickle.
            name: Attribute name as written in the pickle.

        Returns:
            The admitted object (numpy's are bounded stand-ins).

        Raises:
            DataError: The global is not on the allow-list; nothing was executed.

        """
        try:
            found = _SAFE_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise DataError(
                f"{self._path}: refused to unpickle global {module:.80}.{name:.80}; {_ONLY_DATA} "
                "(is it the right file?)"
            ) from None
        return getattr(self, found) if isinstance(found, str) else found

    # ---------------------------------------------------------- bounded numpy stand-ins
    def _charge(self, shape: object, dtype: np.dtype, call: str) -> None:
        """Count an allocation against the bytes the stream has delivered so far."""
        available = self._capped.bytes_read - self._allocated
        self._allocated += check_alloc(
            shape, dtype, available_bytes=available, what=f"{self._path} ({call})"
        )

    def _dtype(self, obj: Any, align: Any = False, *args: Any) -> np.dtype:
        # Always a copy (``copy=True``, as numpy pickles it): a later BUILD must never
        # reach numpy's shared builtin dtype objects.
        return _check_dtype(np.dtype(obj, bool(align), True))

    def _ndarray(self, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
        if args or kwargs:
            raise _RefusedCall("refused numpy.ndarray(...) with a buffer, strides or order")
        dt = _check_dtype(np.dtype(dtype))
        self._charge(shape, dt, "numpy.ndarray(shape)")
        return np.zeros(shape, dt)

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        stand_in = getattr(subtype, "__func__", None) is RestrictedUnpickler._ndarray
        if subtype is not np.ndarray and not stand_in:
            raise _RefusedCall(f"refused _reconstruct of a {getattr(subtype, '__name__', subtype)!s:.60}")
        dt = _check_dtype(np.dtype(dtype))
        self._charge(shape, dt, "_reconstruct(shape)")
        return np.zeros(shape, dt)  # real pickles ask for shape (0,) and fill it in BUILD

    def _scalar(self, dtype: Any, *args: Any) -> Any:
        self._charge((), _check_dtype(dtype), "numpy scalar")
        return np._core.multiarray.scalar(dtype, *args)

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        return np._core.numeric._frombuffer(buf, _check_dtype(dtype), shape, order)

    # ---------------------------------------------------------- vetted opcodes
    def _load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if type(inst) is np.ndarray:
            _check_array_state(state, f"{self._path} (array state)")
        elif isinstance(inst, np.dtype):
            _check_dtype_state(state)
        else:
            raise _RefusedCall(f"refused to set the state of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)
        if isinstance(inst, np.dtype):
            _check_dtype(inst)

    def _load_bytearray8(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)  # in chunks: costs what the stream holds, not what it claims
        if len(data) != size:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    def _check_tuple_depth(self) -> None:
        """Refuse tuples nested deeper than :data:`_MAX_TUPLE_DEPTH` (after each is built).

        Hashing a tuple recurses in C without a depth guard: a 2 MB pickle of a tuple
        nested a million deep, used as a dict key, crashes the interpreter.
        """
        built = self.stack[-1]
        if type(built) is not tuple:
            return
        known = self._tuple_depths
        depth = 1 + max((known[id(e)][1] for e in built if id(e) in known), default=0)
        if depth > _MAX_TUPLE_DEPTH:
            raise _RefusedCall(f"refused tuples nested more than {_MAX_TUPLE_DEPTH} deep")
        self._tuple_depths[id(built)] = (built, depth)  # the reference keeps the id unique

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    for _opcode in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
        dispatch[_opcode[0]] = (
            lambda self, _build=dispatch[_opcode[0]]: (_build(self), self._check_tuple_depth())
        )
    del _opcode


def _check_array_state(state: object, what: str) -> None:
    """An ndarray state: ``([version,] shape, dtype, is_fortran, raw)``, raw bytes that fit."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _RefusedCall("refused an array state that is not (shape, dtype, order, data)")
    shape, dtype, _, raw = state[-4:]
    _check_dtype(dtype)
    if not isinstance(raw, bytes | bytearray | str):
        raise _RefusedCall(f"refused array data of type {type(raw).__name__}, expected bytes")
    check_alloc(shape, dtype, available_bytes=len(raw), what=what)


def _check_dtype_state(state: object) -> None:
    """A dtype state without subarray, fields, metadata or object flags."""
    ok = (
        isinstance(state, tuple)
        and len(state) in (7, 8, 9)
        and state[1] in ("<", ">", "|", "=", b"<", b">", b"|", b"=")  # bytes: Python 2, encoding="bytes"
        and state[2] is None
        and state[3] is None
        and state[4] is None
        and type(state[5]) is int
        and (state[5] == -1 or 1 <= state[5] <= MAX_ARRAY_BYTES)
        and state[6] in (-1, 1, 2, 4, 8, 16)
        and (len(state) < 8 or (isinstance(state[7], int) and not state[7] & ~_DTYPE_FLAGS_ALLOWED))
        and (len(state) < 9 or state[8] is None)
    )
    if not ok:
        raise _RefusedCall(
            "refused a dtype state with fields, subarrays, metadata, object flags or a bad item size"
        )


def restricted_load(
    file: IO[bytes],
    *,
    path: str | os.PathLike[str],
    encoding: str = "ASCII",
    max_bytes: int | None = None,
) -> Any:
    """Unpickle one object from ``file`` with :class:`RestrictedUnpickler`.

    Args:
        file: Binary file object positioned at the pickle (may be a gzip stream).
        path: Name of the file, for error messages.
        encoding: Decoding of Python 2 ``str`` objects (``"latin1"``, ``"bytes"``...).
        max_bytes: The most bytes the pickle stream may have (default
            :data:`MAX_ARRAY_BYTES`).

    Returns:
        The unpickled object.

    Raises:
        DataError: The pickle names a refused global, asks for an array larger than the
            bytes it carries, or the stream is truncated, corrupt or too long (including
            a corrupt gzip stream underneath).

    """
    try:
        unpickler = RestrictedUnpickler(file, path=path, encoding=encoding, max_bytes=max_bytes)
        return unpickler.load()
    except DataError:
        raise
    except _RefusedCall as exc:
        raise DataError(f"{path}: {exc}; {_ONLY_DATA} (is it the right file?)") from exc
    except MemoryError as exc:
        raise DataError(f"{path}: not enough memory to unpickle it; is it the right file?") from exc
    except Exception as exc:  # any failure of a corrupt stream becomes one line
        raise DataError(
            f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {one_line(exc)}); "
            "download the file again"
        ) from exc


def restricted_loads(data: bytes, *, path: str | os.PathLike[str], encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; see :func:`restricted_load`.

    Args:
        data: The pickle bytes.
        path: Name of the file the bytes came from, for error messages.
        encoding: Decoding of Python 2 ``str`` objects.

    Returns:
        The unpickled object.

    Raises:
        DataError: Refused global or corrupt pickle.

    """
    return restricted_load(io.BytesIO(data), path=path, encoding=encoding, max_bytes=len(data))


def _hash_file(path: str | os.PathLike[str], algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open_regular(path) as fh, reading(str(path), "check the file and fetch it again"):
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks.

    Args:
        path: File to hash.

    Returns:
        64 lowercase hex digits.

    Raises:
        DataError: The file does not exist or is a folder.

    """
    return _hash_file(path, "sha256")


def md5_file(path: str | os.PathLike[str]) -> str:
    """Return the hex MD5 of a file (the checksum CIFAR publishes), read in chunks.

    Args:
        path: File to hash.

    Returns:
        32 lowercase hex digits.

    Raises:
        DataError: The file does not exist or is a folder.

    """
    return _hash_file(path, "md5")


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file that replaces ``path`` atomically when the block succeeds.

    The temporary file lives in ``path``'s folder (so ``os.replace`` is a rename on one
    file system), is flushed and fsynced before the rename, and is deleted if the block
    raises anything, ``KeyboardInterrupt`` included. The folder is created if missing.

    Args:
        path: Final destination.

    Yields:
        A binary file object to write the new content to.

    Raises:
        DataError: The destination folder cannot be created or written.

    """
    def error(dest: Path, exc: OSError) -> DataError:
        return DataError(
            f"{dest}: cannot write to {dest.parent} ({exc.strerror or exc}); "
            "set SHARPMINIMA_DATA to a writable folder"
        )

    with _atomic_target(Path(path), error) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_target`).

    Args:
        path: Destination file.
        data: Bytes to write.

    Raises:
        DataError: The destination folder cannot be created or written.

    """
    with atomic_target(path) as fh:
        fh.write(data)


def save_npz(path: str | os.PathLike[str], *, compress: bool = True, **arrays: np.ndarray) -> None:
    """Save arrays as an ``.npz`` file atomically (see :func:`atomic_target`).

    The name is used exactly as given (numpy would append ``.npz`` to a bare name). Only
    plain arrays are written, so the file loads with ``np.load(allow_pickle=False)``.
    Compression is deflate level 1: on MNIST's uint8 images it is 4x faster than
    ``np.savez_compressed``'s level 6 for an 11 MB instead of a 10 MB file.

    Args:
        path: Destination file.
        compress: Deflate the members; uint8 images shrink about five-fold, float
            features barely.
        **arrays: Arrays to store, by key.

    Raises:
        DataError: The destination folder cannot be created or written.
        ValueError: An array has dtype ``object`` (it would need pickle).

    """
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_target(path) as fh, zipfile.ZipFile(fh, "w", method, compresslevel=1) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def read_npz(
    path: str | os.PathLike[str],
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    hint: str,
) -> dict[str, np.ndarray]:
    """Read plain arrays from an ``.npz`` file, every size checked before it is allocated.

    numpy's own loader allocates what an ``.npy`` header claims (``(10**12, 360)`` ends in
    ``_ArrayMemoryError``) and, for object arrays, advises loading the file unsafely. Here
    each member's header is read first; its dtype must be plain (:data:`ARRAY_KINDS`), its
    size must fit :data:`MAX_ARRAY_BYTES` and exactly the bytes the zip entry holds, and
    the entry's declared size must fit what its compressed size can expand to
    (:func:`max_inflated_bytes`). Then the data is read in chunks (the zip CRC is checked).
    Only the members asked for are read.

    Args:
        path: The ``.npz`` file.
        required: Array names (without ``.npy``) that must be present.
        optional: Array names read if present.
        hint: What the user should do, ending every message.

    Returns:
        The arrays by name, in the order asked for.

    Raises:
        DataError: Missing, not a regular file, not a zip, a member missing, encrypted,
            compressed beyond the ratio, with a bad ``.npy`` header, an object, structured
            or oversized array, truncated data or a CRC mismatch.

    """
    where = str(path)
    with open_regular(path, hint) as fh, reading(where, hint):
        file_bytes = os.fstat(fh.fileno()).st_size
        if fh.read(6) == b"\x93NUMPY":
            raise DataError(f"{where}: is a single .npy array, expected an .npz; {hint}")
        fh.seek(0)
        try:
            archive = zipfile.ZipFile(fh)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{where}: not an .npz (zip) file ({one_line(exc)}); {hint}") from exc
        with archive:
            members: dict[str, zipfile.ZipInfo] = {}
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    members.setdefault(info.filename[: -len(".npy")], info)
            missing = [key for key in required if key not in members]
            if missing:
                raise DataError(f"{where}: missing {', '.join(missing)}; {hint}")
            keys = (*required, *(key for key in optional if key in members))
            return {key: _read_npy_member(archive, members[key], where, file_bytes, hint) for key in keys}


def _read_npy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, file_bytes: int, hint: str
) -> np.ndarray:
    """One ``.npy`` member of an open ``.npz``, checked as :func:`read_npz` says."""
    what = f"{where}!{info.filename}"
    if info.flag_bits & 0x1:
        raise DataError(f"{what}: is encrypted; {hint}")
    stored = info.compress_type == zipfile.ZIP_STORED
    bound = info.compress_size if stored else max_inflated_bytes(info.compress_size)
    if info.compress_size > file_bytes or info.file_size > bound:
        raise DataError(
            f"{what}: its zip entry claims {format_bytes(info.file_size)} from "
            f"{format_bytes(info.compress_size)} of data, more than it can hold (a corrupt file "
            f"or a decompression bomb); {hint}"
        )
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DataError(f"{what}: not a .npy array (header version {version}); {hint}")
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        try:
            shape, fortran, dtype = read_header(member)
        except DataError:
            raise
        except Exception as exc:  # numpy's header parser: ValueError, tokenize errors...
            raise DataError(
                f"{what}: unreadable .npy header ({type(exc).__name__}: {one_line(exc)}); {hint}"
            ) from exc
        if dtype.hasobject:
            raise DataError(
                f"{where}: not an .npz of plain arrays ({info.filename} holds pickled Python "
                f"objects, which are never loaded); {hint}"
            )
        if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise DataError(f"{what}: dtype {dtype} is not a plain number or text dtype; {hint}")
        data_bytes = info.file_size - member.tell()
        num_bytes = check_alloc(shape, dtype, available_bytes=data_bytes, what=what)
        if num_bytes != data_bytes:
            raise DataError(
                f"{what}: holds {data_bytes} data bytes but shape {shape} of {dtype} needs "
                f"{num_bytes}; the file is corrupt; {hint}"
            )
        data = read_exact(member, num_bytes, what=what)
        member.read(1)  # reaching the end of the entry checks its CRC
    count = math.prod(shape)
    if not num_bytes:
        return np.zeros(shape, dtype)
    flat = np.frombuffer(data, dtype=dtype, count=count)
    return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
