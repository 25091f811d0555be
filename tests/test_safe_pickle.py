"""Forged CIFAR batches: the restricted unpickler refuses object arrays and checks arrays."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from datadistill.data import create_dataset
from datadistill.data.safe_pickle import safe_loads
from datadistill.errors import DatasetError

# numpy.ndarray((2,), numpy.dtype("O"), 16 raw bytes): an object array of forged pointers.
OBJECT_ARRAY = (b"\x80\x02cnumpy\nndarray\nK\x02\x85cnumpy\ndtype\nX\x01\x00\x00\x00O\x85R"
                b"C\x10" + b"A" * 16 + b"\x87R.")
# _reconstruct + BUILD of a 'V8' array whose dtype state sets the "holds objects" flags.
FLAGGED_DTYPE = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b"
                 b"\x87R(K\x01K\x01\x85cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R"
                 b"(K\x03X\x01\x00\x00\x00|NNNK\x08K\x01K\x3ftb\x89C\x08AAAAAAAAtb.")
# BUILD (__setstate__) on something that is neither an array nor a dtype.
DICT_BUILD = b"\x80\x02}}b."


def test_object_array_pickle_is_refused_not_a_crash():
    # In a child process: before the fix, touching the loaded array crashed the interpreter.
    code = ("import sys; from datadistill.data.safe_pickle import safe_loads\n"
            "from datadistill.errors import DatasetError\n"
            "try:\n    print(repr(safe_loads(sys.stdin.buffer.read(), 'b')))\n"
            "except DatasetError as e:\n    print('refused:', e)\n")
    done = subprocess.run([sys.executable, "-c", code], input=OBJECT_ARRAY,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert b"refused:" in done.stdout and b"Python objects" in done.stdout


@pytest.mark.parametrize("blob", [FLAGGED_DTYPE, DICT_BUILD])
def test_forged_array_states_are_refused(blob):
    with pytest.raises(DatasetError, match="refused as unsafe"):
        safe_loads(blob, "forged")


def test_direct_ndarray_call_is_refused():
    blob = b"\x80\x02cnumpy\nndarray\nK\x02\x85\x85R."  # ndarray((2,))
    with pytest.raises(DatasetError, match=r"numpy.ndarray\(...\).*refused"):
        safe_loads(blob, "forged")


def test_codecs_encode_only_latin1():
    blob = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(DatasetError, match="zlib"):
        safe_loads(blob, "forged")


def _cifar_folder(tmp_path, test_batch: dict):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(good, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(test_batch, protocol=2))


@pytest.mark.parametrize("batch, match", [
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0.5, 1.0]}, "not a list of integers"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": np.zeros(2, np.float32)},
     "not a list of integers"),
    ({"data": [[0] * 3072] * 2, "labels": [0, 1]}, "not an array"),
    ({"data": np.zeros((2, 3072), np.float64), "labels": [0, 1]}, "expected uint8"),
    ({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, "expected uint8"),
])
def test_loaded_batch_arrays_are_checked(tmp_path, batch, match):
    _cifar_folder(tmp_path, batch)
    with pytest.raises(DatasetError, match=match):
        create_dataset("cifar10", tmp_path, "test")


# ---------------------------------------------------------------- fuzz: forged dtypes and arrays
class _Forger(pickle.Pickler):
    """Pickles (protocol 2, as the official batches) with chosen reduce tuples in place of
    some objects: the way a forged file is written."""

    def __init__(self, f, replace):
        super().__init__(f, protocol=2)
        self.replace = replace

    def reducer_override(self, obj):
        return self.replace(obj)


def _forge(obj, replace) -> bytes:
    import io

    buf = io.BytesIO()
    _Forger(buf, replace).dump({"label_names": obj, "num_cases_per_batch": 10})
    return buf.getvalue()


def _state(kind, forge):
    """Replace the state of every ``kind`` object (np.dtype or np.ndarray) by
    ``forge(state)``."""
    def replace(obj):
        if isinstance(obj, kind):
            cls, args, state = obj.__reduce__()
            return cls, args, forge(state)
        return NotImplemented
    return replace


def _dtype_state(forge):
    return _state(np.dtype, forge)


def _array_state(forge):
    return _state(np.ndarray, forge)


def _with_fields_offset(state):  # a field pointing a gigabyte past the buffer
    if state[4] is None:  # the fields' own dtypes
        return state
    fields = {k: (v[0], 10**9) for k, v in state[4].items()}
    return (*state[:4], fields, *state[5:])


def _plain_reduce(call, args):
    return lambda obj: (call, args) if isinstance(obj, np.ndarray) else NotImplemented


_STRUCT = np.zeros(3, dtype=[("a", "<i8"), ("b", "<f8")])
_FROMBUFFER = getattr(np, "_core", np.core).numeric._frombuffer
FUZZ = {
    "structured dtype, forged field offset": _forge(_STRUCT, _dtype_state(_with_fields_offset)),
    "structured dtype, honest": _forge(_STRUCT, lambda o: NotImplemented),
    "subarray dtype": _forge(np.zeros(8), _array_state(
        lambda s: (s[0], (2,), np.dtype(("<f8", (4,))), *s[3:]))),
    "object dtype": OBJECT_ARRAY,
    "object flags on a void dtype": FLAGGED_DTYPE,
    "forged item size of a void dtype": _forge(np.zeros(2, "V4"), _dtype_state(
        lambda s: (*s[:5], 10**9, *s[6:]) if s[5] == 4 else s)),
    "forged item size of float64 (shared descriptor)": _forge(np.zeros(2), _dtype_state(
        lambda s: (*s[:5], 4096, *s[6:]))),
    "array state with a short buffer": _forge(np.zeros(4), _array_state(
        lambda s: (s[0], (10**6,), *s[2:]))),
    "array state with a negative shape": _forge(np.zeros(4), _array_state(
        lambda s: (s[0], (-1,), *s[2:]))),
    "_frombuffer with forged shape": _forge(np.zeros(1), _plain_reduce(
        _FROMBUFFER, (b"\0" * 8, np.dtype("<f8"), (10**6,), "C"))),
    "strides via as_strided": _forge(np.zeros(1), _plain_reduce(
        np.lib.stride_tricks.as_strided, ([0.0], (10**6,), (8,)))),
}


@pytest.mark.parametrize("name", sorted(FUZZ))
def test_forged_arrays_raise_a_clean_error_never_crash(name, tmp_path):
    # In a child process, so a crash (exit 139 before the fix for forged field offsets) is a
    # failed test, not a dead test runner; the child also touches everything it loaded.
    code = ("import sys; import numpy as np\n"
            "from datadistill.data.safe_pickle import safe_loads\n"
            "from datadistill.errors import DatasetError\n"
            "try:\n    d = safe_loads(sys.stdin.buffer.read(), 'batches.meta')\n"
            "except DatasetError as e:\n    print('refused:', e)\n"
            "else:\n    a = d['label_names']; print('loaded', repr(a), a.tobytes()[-8:])\n")
    done = subprocess.run([sys.executable, "-c", code], input=FUZZ[name], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr.decode()[-500:])
    assert done.stdout.startswith(b"refused:") and b"refused as unsafe" in done.stdout, \
        done.stdout


def test_plain_arrays_still_load():
    blob = _forge(np.arange(6, dtype="<i4").reshape(2, 3), lambda o: NotImplemented)
    loaded = safe_loads(blob, "b")["label_names"]
    assert loaded.dtype == np.dtype("<i4") and loaded.tolist() == [[0, 1, 2], [3, 4, 5]]
    names = safe_loads(_forge(np.array(["cat", "dog"]), lambda o: NotImplemented), "b")
    assert names["label_names"].tolist() == ["cat", "dog"]
