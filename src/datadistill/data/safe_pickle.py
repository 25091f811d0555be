"""A restricted unpickler for the CIFAR python batches.

The CIFAR files are pickles, and a plain `pickle.load` runs whatever callable the file names
(for instance `os.system`). `RestrictedUnpickler` resolves only the few globals a pickled
dict of numpy arrays needs and refuses everything else with a `DatasetError`.

Even numpy's own constructors are dangerous on forged input: an array of dtype object built
from raw bytes holds forged pointers (a crash, or worse, when it is touched). So every numpy
callable the format uses is wrapped: no dtype that holds Python objects is ever built, arrays
come only from `_reconstruct` + `BUILD` or `_frombuffer`, and `BUILD` (`__setstate__`) is
allowed on arrays and dtypes only, with the resulting dtype checked again.

Example:
    >>> import pickle, numpy as np
    >>> blob = pickle.dumps({"data": np.zeros((2, 3), np.uint8), "labels": [0, 1]})
    >>> safe_loads(blob, "batch")["labels"]
    [0, 1]
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from datadistill.errors import DatasetError

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class _Refused(DatasetError):
    """A construct a dataset batch never needs (raised while unpickling)."""


def _plain_dtype(dtype: Any, what: str) -> np.dtype:
    """`dtype` as a plain numpy dtype (else `_Refused`): no Python objects, no fields and no
    subarray. A structured dtype's field offsets and a subarray's shape come from the file,
    and numpy trusts them: a forged offset addresses memory outside the array's buffer (a
    crash, or a read of other memory). A dataset batch needs none of them."""
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"{what} with a dtype given as {type(dtype).__name__}")
    if dtype.hasobject:
        raise _Refused(f"{what} of dtype {dtype} (Python objects)")
    if dtype.fields is not None or dtype.names is not None:
        raise _Refused(f"{what} of a structured dtype (fields)")
    if dtype.subdtype is not None or dtype.shape != ():
        raise _Refused(f"{what} of a subarray dtype")
    if dtype.kind not in _PLAIN_KINDS or dtype.itemsize <= 0:
        raise _Refused(f"{what} of dtype {dtype.str} (kind {dtype.kind!r})")
    return dtype


# booleans, integers, floats, complex, bytes, text, raw void; never object ("O") or the
# structured/subarray forms, which are refused above whatever their kind
_PLAIN_KINDS = frozenset("biufcSUV")


def _check_array(arr: np.ndarray, what: str) -> np.ndarray:
    """An array built from the file addresses only its own buffer: C- or F-contiguous, and
    its size times the item size is the number of bytes it holds."""
    _plain_dtype(arr.dtype, what)
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise _Refused(f"{what} with strides {arr.strides} (not contiguous)")
    if arr.nbytes != arr.size * arr.dtype.itemsize:
        raise _Refused(f"{what} whose buffer does not match its shape")
    return arr


class _NdarrayType:
    """Stands for `numpy.ndarray` in a pickle: a type tag for `_reconstruct`, never called
    (`ndarray(shape, dtype('O'), buffer)` would build an object array from raw bytes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("a direct numpy.ndarray(...) call")


_NDARRAY = _NdarrayType()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """An empty array whose contents the following BUILD sets (checked in `load_build`)."""
    if subtype is not _NDARRAY:
        raise _Refused(f"_reconstruct of {type(subtype).__name__}")
    return _multiarray._reconstruct(np.ndarray, shape, typecode)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):  # the format only names dtypes by their string code
        raise _Refused(f"numpy.dtype({type(spec).__name__})")
    # always a copy: a BUILD that follows sets the state of this object, never of numpy's
    # shared descriptor for the type
    return _plain_dtype(np.dtype(spec, bool(align), True), "numpy.dtype")


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(data, (bytes, str)):
        raise _Refused("a numpy scalar without raw bytes")
    return _multiarray.scalar(_plain_dtype(dtype, "a numpy scalar"), data)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)):
        raise _Refused(f"_frombuffer of {type(buf).__name__}")
    dtype = _plain_dtype(dtype, "_frombuffer")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise _Refused(f"_frombuffer with shape {shape!r}")
    if len(buf) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise _Refused(f"_frombuffer of {len(buf)} bytes for shape {shape} of {dtype.str}")
    return _check_array(_numeric._frombuffer(buf, dtype, shape, order), "_frombuffer")


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocols 0-2 store bytes as latin-1 text re-encoded by `_codecs.encode(s, "latin1")`.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> safe stand-in. Both numpy module spellings map to the same functions:
    files written by numpy 1.x (and Python 2, like the official CIFAR batches) say
    `numpy.core`, files written by numpy 2 say `numpy._core`."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = _scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = _frombuffer
    return allowed


_ALLOWED = _allowed_globals()


def _check_build(inst: Any, state: Any) -> None:
    """BUILD (``inst.__setstate__(state)``) only on arrays and dtypes, never with objects."""
    if isinstance(inst, np.ndarray):
        # ndarray state: (version, shape, dtype, is_fortran, raw data)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Refused("an array state that is not (version, shape, dtype, order, data)")
        shape, dtype, data = state[1], _plain_dtype(state[2], "an array"), state[4]
        if not isinstance(data, (bytes, str)):
            raise _Refused(f"an array filled from {type(data).__name__}, not raw bytes")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise _Refused(f"an array of shape {shape!r}")
        if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise _Refused(f"an array of shape {shape} and dtype {dtype.str} filled from "
                           f"{len(data)} bytes")
    elif isinstance(inst, np.dtype):
        # (version, byte order, subarray, names, fields, item size, alignment, flags): only the
        # byte order may differ from the plain dtype the spec string made; fields with forged
        # offsets, a forged item size or object flags would address memory numpy does not own
        plain = inst.__reduce__()[2]
        if not (isinstance(state, tuple) and len(state) == len(plain)
                and state[1] in ("<", ">", "|", "=")
                and state[2:] == plain[2:] and state[0] == plain[0]):
            raise _Refused(f"a dtype state {state!r:.120} that changes more than the byte order")
    else:
        raise _Refused(f"setting the state of a {type(inst).__name__}")


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that only reconstructs plain numpy arrays, dtypes and scalars.

    The pure-Python unpickler is used because its BUILD opcode can be checked; the batches
    hold a few large strings, so it is not slower in practice. `source` names the file in
    error messages.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1 decodes Python-2 strings byte for byte, which is what numpy needs to
        # rebuild arrays pickled by Python 2 (the official CIFAR batches).
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def load_build(self) -> None:
        _check_build(self.stack[-2], self.stack[-1])
        inst = self.stack[-2]
        pickle._Unpickler.load_build(self)
        if isinstance(inst, np.dtype):  # a dtype state can set fields and flags
            _plain_dtype(inst, "a dtype state")
        else:
            _check_array(inst, "an array")

    dispatch[pickle.BUILD[0]] = load_build


def safe_loads(data: bytes, source: str) -> Any:
    """Unpickle `data` with `RestrictedUnpickler`; any failure is a `DatasetError`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except _Refused as err:
        raise DatasetError(
            f"{source} asks for {err}, which a dataset batch never needs; it was refused as "
            "unsafe. Delete the file and download the dataset again from the official source"
        ) from None
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        raise DatasetError(
            f"{source} is not a readable pickle ({type(err).__name__}: {err}); the file is "
            "truncated or corrupt: delete it and download it again"
        ) from err
