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
