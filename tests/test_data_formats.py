"""File formats: MNIST IDX, CIFAR pickle batches (folder and .tar.gz), SVHN .mat, plus the
restricted unpickler and the archive member checks. All files are written small in tmp_path."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from datadistill.data import create_dataset
from datadistill.data.safe_archive import extract_tar, read_tar_members
from datadistill.data.safe_pickle import safe_loads
from datadistill.errors import DatasetError

REAL_DATA = Path("/work/shared/data")


# ---------------------------------------------------------------- MNIST (IDX) -------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, prefix: str, n: int, *, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gz_and_raw(tmp_path, gz):
    images, labels = write_mnist(tmp_path, "t10k", 5, gz=gz)
    ds = create_dataset("mnist", tmp_path, "test", normalize=False)
    assert ds.images.shape == (5, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(ds.images[:, 0] * 255, torch.from_numpy(images).float(), atol=1e-4)
    normed = create_dataset("mnist", tmp_path, "test")
    assert torch.allclose(normed.images, (ds.images - 0.1307) / 0.3081, atol=1e-6)


def test_fashion_mnist_in_subfolder_has_class_names(tmp_path):
    write_mnist(tmp_path / "fashion-mnist", "train", 4, gz=True)
    ds = create_dataset("fashion_mnist", tmp_path, "train")
    assert len(ds) == 4 and ds.info.class_names[9] == "Ankle boot"
    assert ds.space == "normalized"


def test_mnist_truncated_pixels_names_file(tmp_path):
    write_mnist(tmp_path, "train", 3, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[: 16 + 1000])
    with pytest.raises(DatasetError) as err:
        create_dataset("mnist", tmp_path, "train")
    message = str(err.value)
    assert str(path) in message
    assert "expected 2352 bytes of pixels, found 1000" in message and "truncated" in message


def test_mnist_truncated_gzip_and_bad_magic(tmp_path):
    write_mnist(tmp_path, "t10k", 3, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetError, match="gzip stream ends early"):
        create_dataset("mnist", tmp_path, "test")
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 40))
    with pytest.raises(DatasetError, match="magic number 0x00000801, expected 0x00000803"):
        create_dataset("mnist", tmp_path, "test")


def test_mnist_label_count_mismatch_and_missing_file(tmp_path):
    write_mnist(tmp_path, "t10k", 3, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(2, np.uint8)))
    )
    with pytest.raises(DatasetError, match="2 labels but .* 3 images"):
        create_dataset("mnist", tmp_path, "test")
    with pytest.raises(DatasetError, match="download=True"):
        create_dataset("mnist", tmp_path, "train")


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "mnist").is_dir(), reason="no shared MNIST copy")
def test_real_mnist_statistics():
    train = create_dataset("mnist", REAL_DATA, "train", normalize=False)
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.images.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert train.images.std().item() == pytest.approx(0.3081, abs=1e-4)
    assert len(create_dataset("fashion_mnist", REAL_DATA, "test")) == 10000


# ---------------------------------------------------------------- CIFAR (pickles) ---------


def cifar_batch(n: int, seed: int, label_key: str = "labels", num_classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"batch {seed}",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
    }


def write_cifar10(folder: Path) -> dict[str, dict]:
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(3, 9)
    for name, batch in batches.items():
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": 4}, fh)
    return batches


def check_cifar_split(ds, batches: list[dict], label_key: str = "labels"):
    data = np.concatenate([b["data"] for b in batches])  # (N, 3072): R, G, B planes
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255
    assert ds.images.shape == (len(data), 3, 32, 32)
    assert torch.allclose(ds.images, expected)
    assert ds.labels.tolist() == sum((b[label_key] for b in batches), [])


def test_cifar10_from_folder(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    train = create_dataset("cifar10", tmp_path, "train", normalize=False)
    check_cifar_split(train, [batches[f"data_batch_{i}"] for i in range(1, 6)])
    assert train.info.class_names[0] == "plane"  # read from batches.meta
    test = create_dataset("cifar10", tmp_path, "test", normalize=False)
    check_cifar_split(test, [batches["test_batch"]])
    # Pixel (c=1, h=0, w=5) of image 0 is byte 1024 + 5 of its row.
    assert test.images[0, 1, 0, 5].item() * 255 == pytest.approx(
        batches["test_batch"]["data"][0, 1029], abs=1e-3
    )


def test_cifar10_from_tar_gz(tmp_path):
    batches = write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    test = create_dataset("cifar10", tmp_path, "test", normalize=False)
    check_cifar_split(test, [batches["test_batch"]])
    assert test.info.class_names[1] == "car"


def test_cifar100_fine_labels_and_own_statistics(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = cifar_batch(6, 1, "fine_labels", 100), cifar_batch(2, 2, "fine_labels", 100)
    for name, batch in (("train", train), ("test", test)):
        (folder / name).write_bytes(pickle.dumps(batch))
    ds = create_dataset("cifar100", tmp_path, "train", normalize=False)
    check_cifar_split(ds, [train], "fine_labels")
    assert ds.info.num_classes == 100 and ds.info.class_names[0] == "apple"  # no meta file
    normed = create_dataset("cifar100", tmp_path, "test")
    raw = create_dataset("cifar100", tmp_path, "test", normalize=False)
    assert torch.allclose(normed.images[:, 2], (raw.images[:, 2] - 0.4409) / 0.2762, atol=1e-6)


def test_cifar_truncated_batch_names_file(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="test_batch.*truncated or corrupt"):
        create_dataset("cifar10", tmp_path, "test")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Evil(), "labels": []}))
    with pytest.raises(DatasetError, match=r"system.*refused as unsafe"):
        create_dataset("cifar10", tmp_path, "test")
    with pytest.raises(DatasetError, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.", "evil.pkl")


def test_restricted_unpickler_reads_python2_numpy_pickle():
    # What Python 2 cPickle wrote for {'data': uint8 array, 'labels': [0, 1]}: numpy.core
    # module path, str (not bytes) payloads, like the official CIFAR batches.
    blob = (
        b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\n"
        b"ndarray\nq\x03K\x00\x85U\x01b\x87Rq\x04(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x05U\x02"
        b"u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U"
        b"\x06\x00\x01\x02\x80\xfe\xfftbU\x06labelsq\x07]q\x08(K\x00K\x01eu."
    )
    batch = safe_loads(blob, "py2")
    assert batch["labels"] == [0, 1]
    assert batch["data"].dtype == np.uint8
    assert batch["data"].tolist() == [[0, 1, 2], [128, 254, 255]]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays(protocol):
    data = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "n": np.int64(7)}
    loaded = safe_loads(pickle.dumps(data, protocol=protocol), "x")
    assert np.array_equal(loaded["data"], data["data"]) and loaded["n"] == 7


def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes = b"x"):
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        good.size = 1
        tar.addfile(good, io.BytesIO(b"x"))
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)


def test_tar_with_escaping_member_is_refused(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    escape = tarfile.TarInfo("../escape")
    escape.size = 1
    _tar_with(archive, escape)
    with pytest.raises(DatasetError, match=r"unsafe member '\.\./escape'"):
        create_dataset("cifar10", tmp_path, "test")
    assert not (tmp_path.parent / "escape").exists()


def test_tar_with_symlink_or_absolute_member_is_refused(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _tar_with(tmp_path / "a.tar.gz", link)
    with pytest.raises(DatasetError, match="link"):
        read_tar_members(tmp_path / "a.tar.gz", {"cifar-10-batches-py/test_batch"})
    absolute = tarfile.TarInfo("/tmp/absolute")
    absolute.size = 1
    _tar_with(tmp_path / "b.tar.gz", absolute)
    with pytest.raises(DatasetError, match="unsafe member"):
        read_tar_members(tmp_path / "b.tar.gz", {"cifar-10-batches-py/test_batch"})


def test_extract_tar_checks_members_first(tmp_path):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        info = tarfile.TarInfo("pkg/file.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    extract_tar(good, tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "file.txt").read_bytes() == b"hello"
    escape = tarfile.TarInfo("pkg/../../escape")
    escape.size = 1
    _tar_with(tmp_path / "bad.tar.gz", escape)
    with pytest.raises(DatasetError, match="unsafe member"):
        extract_tar(tmp_path / "bad.tar.gz", tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "escape").exists()


def test_truncated_tar_gz_is_reported(tmp_path):
    write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        create_dataset("cifar10", tmp_path, "train")


# ---------------------------------------------------------------- SVHN (.mat) -------------


def test_svhn_mat_layout_and_label_ten(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)  # (H, W, C, N)
    y = np.array([[10], [1], [5], [10], [9]], dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": y})
    ds = create_dataset("svhn", tmp_path, "test", normalize=False)
    assert ds.images.shape == (5, 3, 32, 32)
    assert ds.labels.tolist() == [0, 1, 5, 0, 9]
    expected = torch.from_numpy(x.transpose(3, 2, 0, 1).astype(np.float32)) / 255
    assert torch.allclose(ds.images, expected)
    assert ds.images[2, 1, 3, 4].item() * 255 == pytest.approx(x[3, 4, 1, 2], abs=1e-3)


def test_svhn_truncated_mat_names_file(tmp_path):
    path = tmp_path / "train_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((4, 1))})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match="train_32x32.mat"):
        create_dataset("svhn", tmp_path, "train")
