"""imagenet64: the downsampled release's npz batches and the JPEG tree, into one cache format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datadistill.data import create_dataset
from datadistill.data import downsampled as ds
from datadistill.data.cache import CachedImages, ImageCache
from datadistill.errors import DatasetError
from imagenet64_standin import WNIDS, release_ids, write_release, write_tree


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"), classes=1000, per_class=2,
                         val_per_class=1, batches=3)


def _npz_rows(root):
    files = ds.find_batches(root / "Imagenet64_train_part1", "train")
    data = np.concatenate([np.load(f, allow_pickle=False)["data"] for f in files])
    labels = np.concatenate([np.load(f, allow_pickle=False)["labels"] for f in files])
    return data, labels


def test_release_converts_row_for_row_with_labels_in_sorted_wnid_order(release, tmp_path):
    split = create_dataset("imagenet64", release, "train", normalize=False, cache_dir=tmp_path)
    assert isinstance(split.images, CachedImages) and split.info.num_classes == 1000
    assert split.info.class_names[0] == "tench, Tinca tinca" and split.info.image_size == (64, 64)
    data, ids = _npz_rows(release)
    got = split.images.read_uint8(np.arange(len(data)))  # (N, 3, 64, 64) uint8
    assert np.array_equal(got.reshape(len(data), -1), data)  # CHW rows, same order
    # release id -> sorted class: class c has id release_ids()[c]
    sorted_of_id = {int(i): c for c, i in enumerate(release_ids(1000))}
    assert split.labels.tolist() == [sorted_of_id[int(i)] for i in ids]
    # map_clsloc.txt's id 1 is n02119789 (kit fox), sorted class 278
    assert set(split.labels[torch.from_numpy(ids == 1)].tolist()) == {WNIDS.index("n02119789")}
    x = split.images[torch.arange(2)]
    assert torch.equal(x, torch.from_numpy(got[:2]).float() / 255)
    test = create_dataset("imagenet64", release, "test", cache_dir=tmp_path)
    assert len(test) == 1000 and sorted(test.labels.tolist()) == list(range(1000))


def test_a_second_open_reuses_the_cache_and_an_interrupted_one_resumes(release, tmp_path):
    create_dataset("imagenet64", release, "train", cache_dir=tmp_path)
    folder = next(tmp_path.iterdir())
    meta = (folder / "meta.json").read_text()
    # interrupted after the first chunk: the record says chunk 0 only, the rest is zeros
    cache = ImageCache.open(folder)
    first = cache.meta["chunk_sha256"][0]
    import json
    m = json.loads(meta)
    m.update(complete=False, chunk_sha256=[None] * len(m["chunk_sha256"]))
    (folder / "meta.json").write_text(json.dumps(m))
    (folder / "chunks.json").write_text(json.dumps({"chunk_sha256": [first]}))
    again = create_dataset("imagenet64", release, "train", cache_dir=tmp_path)
    ImageCache.open(folder).verify()
    assert len(again) == 2000


def test_npz_with_pickled_labels_is_refused(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    np.savez(root / "train_data_batch_1.npz", data=np.zeros((2, 3 * 64 * 64), np.uint8),
             labels=np.array([[1], "x"], dtype=object))
    np.savez(root / "val_data.npz", data=np.zeros((1, 3 * 64 * 64), np.uint8),
             labels=np.array([1]))
    with pytest.raises(DatasetError, match="without unpickling"):
        create_dataset("imagenet64", root, "train", cache_dir=tmp_path / "c")


def test_wrong_row_size_is_refused(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    np.savez(root / "train_data_batch_1.npz", data=np.zeros((2, 3 * 32 * 32), np.uint8),
             labels=np.array([1, 2]))
    np.savez(root / "val_data.npz", data=np.zeros((1, 3 * 32 * 32), np.uint8),
             labels=np.array([1]))
    with pytest.raises(DatasetError, match="64 x 64 release"):
        create_dataset("imagenet64", root, "train", cache_dir=tmp_path / "c")


def test_tree_and_release_agree_on_classes(release, tmp_path):
    tree = write_tree(tmp_path / "tree", classes=1000, per_class=1, val_per_class=1)
    a = create_dataset("imagenet64", tree, "test", normalize=False)
    b = create_dataset("imagenet64", release, "test", normalize=False, cache_dir=tmp_path / "c")
    assert a.info.name == b.info.name == "imagenet64" and a.info.num_classes == 1000
    # each class's image has the class colour in both forms (noise +-40, JPEG): same order
    mean_a = a.images[torch.arange(1000)].mean(dim=(2, 3))[torch.argsort(a.labels)]
    mean_b = b.images[torch.arange(1000)].mean(dim=(2, 3))[torch.argsort(b.labels)]
    assert (mean_a - mean_b).abs().max() < 0.05


def test_a_root_with_neither_form_names_both(tmp_path):
    with pytest.raises(DatasetError, match="neither the downsampled ImageNet release.*nor an "
                                           "ILSVRC-2012 train/ folder"):
        create_dataset("imagenet64", tmp_path, "train")


def test_release_needs_no_map_clsloc_and_a_disagreeing_one_is_named(release, tmp_path):
    """The shipped index maps the release's ids; a user's map_clsloc.txt must agree with it."""
    import shutil
    root = tmp_path / "release"
    shutil.copytree(release, root)
    (root / "map_clsloc.txt").unlink()
    split = create_dataset("imagenet64", root, "test", normalize=False, cache_dir=tmp_path / "a")
    withmap = create_dataset("imagenet64", release, "test", normalize=False,
                             cache_dir=tmp_path / "b")
    assert torch.equal(split.labels, withmap.labels)
    assert split.info.class_names == withmap.info.class_names
    lines = (release / "map_clsloc.txt").read_text().splitlines()
    lines[0], lines[1] = lines[0].replace(" 1 ", " 2 "), lines[1].replace(" 2 ", " 1 ")
    (root / "map_clsloc.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"gives n02119789 id 2, but the standard map gives "
                                           r"n02119789 id 1"):
        create_dataset("imagenet64", root, "test", cache_dir=tmp_path / "c")
