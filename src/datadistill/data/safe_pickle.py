"""A restricted unpickler for the CIFAR python batches.

The CIFAR files are pickles, and a plain `pickle.load` runs whatever callable the file names
(for instance `os.system`). `RestrictedUnpickler` resolves only the few globals a pickled
dict of numpy arrays needs and refuses everything else with a `DatasetError`.

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


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object. Both numpy module spellings map to the same functions:
    files written by numpy 1.x (and Python 2, like the official CIFAR batches) say
    `numpy.core`, files written by numpy 2 say `numpy._core`."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocols 0-2 store bytes as latin-1 text re-encoded by this function.
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = _multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = _numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays, dtypes and scalars.

    `source` names the file in error messages.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1 decodes Python-2 strings byte for byte, which is what numpy needs to
        # rebuild arrays pickled by Python 2 (the official CIFAR batches).
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self.source} references {module}.{name}, which a dataset batch never "
                "needs; it was refused as unsafe. Delete the file and download the dataset "
                "again from the official source"
            ) from None


def safe_loads(data: bytes, source: str) -> Any:
    """Unpickle `data` with `RestrictedUnpickler`; any failure is a `DatasetError`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        raise DatasetError(
            f"{source} is not a readable pickle ({type(err).__name__}: {err}); the file is "
            "truncated or corrupt: delete it and download it again"
        ) from err
