"""ImageNet layout, the uint8 disk cache and MTT's subsets, on small JPEG trees made here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datadistill.data import cache as cache_mod
from datadistill.data import create_dataset, prepare
from datadistill.data.cache import BuildOptions, ImageCache, build_cache
from datadistill.data.imagenet import (
    MEAN,
    STD,
    SUBSETS,
    info_for,
    list_split,
    standard_classes,
)
from datadistill.errors import ConfigError, DatasetError

WNIDS = list(standard_classes().wnids)  # sorted order = class id
SIZES = [(40, 24), (24, 40), (31, 31)]  # (W, H) of the files, cycled
SERIAL = BuildOptions(workers=1, progress=False)  # decoded in the test's process
CHUNKS_OF_4 = BuildOptions(chunk_size=4, workers=1, progress=False)


def _write_jpeg(path: Path, seed: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _make_tree(root: Path, classes: list[int], per_class: int, val_per_class: int,
               val_layout: str) -> dict[str, list[int]]:
    """train/<wnid>/ with files for `classes` (the other 999 folders empty), val in `val_layout`."""
    val_truth: dict[str, list[int]] = {}
    for c in range(1000):
        (root / "train" / WNIDS[c]).mkdir(parents=True, exist_ok=True)
        for j in range(per_class if c in classes else 0):
            _write_jpeg(root / "train" / WNIDS[c] / f"{WNIDS[c]}_{j}.JPEG", c * 100 + j,
                        SIZES[j % 3])
    order = [c for c in classes for _ in range(val_per_class)]
    order = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
    for k, c in enumerate(order):
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        folder = root / "val" / WNIDS[c] if val_layout == "folders" else root / "val"
        _write_jpeg(folder / name, 10**6 + k, SIZES[k % 3])
        val_truth.setdefault(WNIDS[c], []).append(k)
    if val_layout == "devkit":
        _write_devkit(root, order)
    elif val_layout == "kaggle":
        rows = [f"ILSVRC2012_val_{k + 1:08d},{WNIDS[c]} 1 2 3 4" for k, c in enumerate(order)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                                   + "\n".join(rows) + "\n")
    return val_truth


def _write_devkit(root: Path, order: list[int]) -> None:
    """The devkit's ids are NOT the sorted-wnid order: id = 1000 - class here (reversed)."""
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "\n".join(str(1000 - c) for c in order) + "\n")
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    leaves = [(1000 - c, WNIDS[c], f"class {c}", 0) for c in range(1000)]
    inner = [(1001, "n99999999", "entity", 3)]  # a non-leaf synset, to be skipped
    synsets = np.array(leaves + inner, dtype=dtype)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """ImageNet-1K-shaped trees (1000 train folders) in the three val layouts."""
    classes = list(SUBSETS["imagewoof"]) + [0]  # every class of a subset must have images
    out = {}
    for layout in ("folders", "devkit", "kaggle"):
        root = tmp_path_factory.mktemp(f"imagenet_{layout}")
        _make_tree(root, classes, per_class=4, val_per_class=2, val_layout=layout)
        out[layout] = root
    return out


def _direct(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.array(rgb).transpose(2, 0, 1)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("layout", ["folders", "devkit", "kaggle"])
def test_val_labels_are_the_same_in_every_layout(trees, layout):
    paths, labels, wnids = list_split(trees[layout], "val", "imagewoof")
    assert wnids[:3] == tuple(WNIDS[i] for i in SUBSETS["imagewoof"][:3])
    names = [p.name for p in paths]
    ref_paths, ref_labels, _ = list_split(trees["folders"], "val", "imagewoof")
    assert names == [p.name for p in ref_paths]
    assert labels.tolist() == ref_labels.tolist() == [c for c in range(10) for _ in range(2)]


def test_flat_val_without_ground_truth_says_where_to_put_it(tmp_path):
    _make_tree(tmp_path, [0], per_class=1, val_per_class=1, val_layout="flat")
    with pytest.raises(DatasetError, match="no labels were found.*ILSVRC2012_devkit_t12"):
        list_split(tmp_path, "val")


def test_devkit_without_meta_mat_is_an_error(tmp_path):
    _make_tree(tmp_path, [0], per_class=1, val_per_class=1, val_layout="devkit")
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    with pytest.raises(DatasetError, match="needs .*meta.mat"):
        list_split(tmp_path, "val")


def test_a_subset_class_missing_from_train_is_named_by_wnid_and_name(tmp_path):
    """Only the subset's folders are needed; one that is absent is named, with its class."""
    _write_jpeg(tmp_path / "train" / WNIDS[0] / "a.JPEG", 0, (8, 8))
    with pytest.raises(DatasetError, match=r"imagenette class 1 \(n02102040, 'English springer"
                                           r", English springer spaniel'\) has no train images"):
        list_split(tmp_path, "train", "imagenette")


def test_train_folders_outside_the_standard_thousand_are_named(tmp_path):
    for wnid in (WNIDS[0], "n01440765", "n99999999"):
        _write_jpeg(tmp_path / "train" / wnid / "a.JPEG", 0, (8, 8))
    with pytest.raises(DatasetError, match=r"\['n01440765', 'n99999999'\] that are not among "
                                           "the 1000 ImageNet-1K wnids"):
        list_split(tmp_path, "train")


def test_the_shipped_class_index_is_imagenet_1k():
    classes = standard_classes()
    assert len(set(classes.wnids)) == 1000 and list(classes.wnids) == sorted(classes.wnids)
    assert (classes.wnids[0], classes.names[0]) == ("n01440764", "tench, Tinca tinca")
    assert classes.wnids[999] == "n15075141" and classes.names[999].startswith("toilet tissue")
    assert sorted(classes.release_ids) == list(range(1, 1001))
    # map_clsloc.txt's first and last lines: n02119789 1 kit_fox, n03255030 1000 dumbbell
    assert classes.release_ids[classes.wnids.index("n02119789")] == 1
    assert classes.release_ids[classes.wnids.index("n03255030")] == 1000
    # MTT's subsets (comments in imagenet.py): imagenette 217 = English springer, imagewoof
    # 193 = Australian terrier, imagemeow 281 = tabby
    assert classes.names[217].startswith("English springer")
    assert classes.names[193] == "Australian terrier" and classes.names[281].startswith("tabby")
    # names are known before any data is read (the registry's specs)
    assert info_for("imagenette", 128).class_names[1] == classes.names[217]
    assert info_for("imagenet", 224).class_names == classes.names


# ----------------------------------------------------------------------------- subsets


def test_subset_class_lists_count_and_order():
    assert sorted(SUBSETS) == ["imagefruit", "imagemeow", "imagenette", "imagesquawk",
                               "imagewoof", "imageyellow"]
    for name, ids in SUBSETS.items():
        assert len(ids) == len(set(ids)) == 10, name
        assert all(0 <= i < 1000 for i in ids)
    # MTT's lists keep their own order (not sorted): label c is the c-th id.
    assert SUBSETS["imagenette"][0] == 0 and SUBSETS["imagewoof"][:2] == (193, 182)
    assert SUBSETS["imageyellow"][-1] == 11


def test_subset_labels_follow_the_list_order(trees):
    ds = create_dataset("imagewoof", trees["folders"], "train", image_size=8, normalize=False,
                        workers=1)
    assert ds.info.num_classes == 10 and ds.info.image_size == (8, 8)
    assert ds.info.class_names[:2] == ("Australian terrier", "Border terrier")
    assert ds.info.class_names == tuple(standard_classes().names[i] for i in SUBSETS["imagewoof"])
    # Every class of imagewoof has 4 train files, in the list's order of ImageNet ids.
    counts = torch.bincount(ds.labels, minlength=10).tolist()
    assert counts == [4] * 10
    first_of_class1 = int((ds.labels == 1).nonzero()[0])
    path = trees["folders"] / "train" / WNIDS[182] / f"{WNIDS[182]}_0.JPEG"
    expected = torch.from_numpy(_direct(path, 8)).float() / 255
    assert torch.equal(ds.images[first_of_class1], expected)


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("layout", ["folders", "devkit"])
def test_cache_round_trip_equals_a_direct_decode_and_resize(trees, layout, tmp_path):
    root = trees[layout]
    for split in ("train", "val"):
        ds = create_dataset("imagewoof", root, split, image_size=12, normalize=False,
                            cache_dir=tmp_path, workers=1)
        paths, labels, _ = list_split(root, split, "imagewoof")
        expected = np.stack([_direct(p, 12) for p in paths])  # (N, 3, 12, 12) uint8
        got = ds.images[torch.arange(len(ds))]
        assert torch.equal(got, torch.from_numpy(expected).float() / 255)
        assert ds.labels.tolist() == labels.tolist()
    meta = ImageCache.open(tmp_path / "imagewoof_val_12px_squash").meta
    assert (meta["resolution"], meta["resize"], meta["complete"]) == (12, "squash", True)


@pytest.mark.parametrize("rule, resized, box", [
    # 40 x 24 (W x H) at S = 16: shorter side 24 -> 16, longer 40 -> 26; crop x in [5, 21)
    ("shorter_center", (26, 16), (5, 0, 21, 16)),
    # eval_crop: shorter side -> round(16 * 256 / 224) = 18, longer -> 30; crop at (7, 1)
    ("eval_crop", (30, 18), (7, 1, 23, 17)),
])
def test_shorter_side_and_centre_crop_rules(trees, tmp_path, rule, resized, box):
    path = trees["folders"] / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"  # 40 x 24 (W x H)
    cache = build_cache([path], np.array([0]), tmp_path, resolution=16, resize=rule, options=SERIAL)
    with Image.open(path) as img:
        ref = img.convert("RGB").resize(resized, Image.Resampling.BILINEAR).crop(box)
    expected = np.asarray(ref).transpose(2, 0, 1)[None]
    assert np.array_equal(cache.images().read_uint8(np.array([0])), expected)
    assert cache.meta["resize"] == rule


def test_default_rules_imagenet_val_is_evaluated_as_sre2l_does(trees, tmp_path):
    for split, rule in (("train", "squash"), ("test", "eval_crop")):
        create_dataset("imagenet", trees["folders"], split, image_size=8, cache_dir=tmp_path,
                       workers=1)
        assert ImageCache.open(tmp_path / f"imagenet_{split.replace('test', 'val')}_8px_"
                               f"{rule}").meta["resize"] == rule
    create_dataset("imagewoof", trees["folders"], "test", image_size=8, cache_dir=tmp_path,
                   workers=1, resize={"val": "shorter_center"})
    assert (tmp_path / "imagewoof_val_8px_shorter_center" / "meta.json").is_file()


def test_normalised_reads_and_index_forms(trees, tmp_path):
    raw = create_dataset("imagewoof", trees["folders"], "train", image_size=8, normalize=False,
                         cache_dir=tmp_path, workers=1)
    norm = create_dataset("imagewoof", trees["folders"], "train", image_size=8,
                          cache_dir=tmp_path, workers=1)
    assert norm.space == "normalized" and raw.space == "raw"
    idx = torch.tensor([3, 0, 3, 1])  # unsorted, repeated
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm.images[idx], (raw.images[idx] - mean) / std)
    everything = raw.images[:]
    assert torch.equal(raw.images[idx], everything[idx])
    assert torch.equal(raw.images[2], everything[2])
    assert torch.equal(raw.images[1:3], everything[1:3])
    assert torch.equal(raw.images[np.array([2, 1])], everything[[2, 1]])
    grid = torch.tensor([[0, 3], [2, 1]])  # (K, C) class groups, as INFER indexes
    assert torch.equal(raw.images[grid], everything[grid])
    assert raw.images.to("cpu") is raw.images and raw.images.shape == everything.shape
    with pytest.raises(IndexError, match="out of range"):
        raw.images[torch.tensor([len(raw)])]


def test_parallel_build_equals_the_serial_one(trees, tmp_path):
    paths, labels, _ = list_split(trees["folders"], "train", "imagewoof")
    one = build_cache(paths, labels, tmp_path / "one", resolution=10, options=CHUNKS_OF_4)
    two = build_cache(paths, labels, tmp_path / "two", resolution=10,
                      options=replace(CHUNKS_OF_4, workers=2))
    assert one.meta["chunk_sha256"] == two.meta["chunk_sha256"]
    assert (tmp_path / "one/images.u8").read_bytes() == (tmp_path / "two/images.u8").read_bytes()


def test_interrupted_build_resumes_where_it_stopped(trees, tmp_path, monkeypatch):
    paths, labels, _ = list_split(trees["folders"], "train", "imagewoof")
    paths, labels = paths[:12], labels[:12]  # 3 chunks of 4
    reference = build_cache(paths, labels, tmp_path / "ref", resolution=10, options=CHUNKS_OF_4)
    real, calls = cache_mod._decode_chunk, []

    def failing(chunk_paths, resolution, rule):
        calls.append(chunk_paths[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the build during the third chunk
        return real(chunk_paths, resolution, rule)

    monkeypatch.setattr(cache_mod, "_decode_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, labels, tmp_path / "c", resolution=10, options=CHUNKS_OF_4)
    with pytest.raises(DatasetError, match="unfinished cache"):
        ImageCache.open(tmp_path / "c")
    calls.clear()
    monkeypatch.setattr(cache_mod, "_decode_chunk", lambda *a: (calls.append(a[0][0]),
                                                                 real(*a))[1])
    resumed = build_cache(paths, labels, tmp_path / "c", resolution=10, options=CHUNKS_OF_4)
    assert calls == [str(paths[8])]  # chunk 2 only: 0 and 1 were recorded
    assert resumed.meta["chunk_sha256"] == reference.meta["chunk_sha256"]
    assert (tmp_path / "c/images.u8").read_bytes() == (tmp_path / "ref/images.u8").read_bytes()
    resumed.verify()


def test_verify_finds_a_corrupted_chunk(trees, tmp_path):
    paths, labels, _ = list_split(trees["folders"], "train", "imagewoof")
    cache = build_cache(paths, labels, tmp_path, resolution=8, options=CHUNKS_OF_4)
    with open(tmp_path / "images.u8", "r+b") as f:
        f.seek(5 * 3 * 8 * 8 + 7)  # inside image 5: chunk 1
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DatasetError, match="chunk 1 .*does not match its checksum"):
        cache.verify()


def test_a_changed_tree_is_not_served_from_an_old_cache(trees, tmp_path):
    paths, labels, _ = list_split(trees["folders"], "train", "imagewoof")
    build_cache(paths, labels, tmp_path, resolution=8, options=SERIAL)
    with pytest.raises(DatasetError, match="other images or settings.*sources_sha256"):
        build_cache(paths[:-1], labels[:-1], tmp_path, resolution=8, options=SERIAL)
    with pytest.raises(DatasetError, match="resolution"):
        build_cache(paths, labels, tmp_path, resolution=9, options=SERIAL)


def test_not_enough_disk_is_a_clear_error_before_anything_is_written(trees, tmp_path,
                                                                      monkeypatch):
    paths, labels, _ = list_split(trees["folders"], "train", "imagewoof")

    class Usage:
        free = 1000  # bytes

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda _: Usage)
    with pytest.raises(DatasetError, match=r"needs 0\.00 GiB more .*40 images of 3x64x64.*"
                                           r"cache_dir="):
        build_cache(paths, labels, tmp_path / "c", resolution=64, options=SERIAL)
    assert not (tmp_path / "c" / "images.u8").exists()


def test_an_unwritable_cache_folder_names_the_fix(trees, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    paths, labels, _ = list_split(trees["folders"], "train", "imagewoof")
    with pytest.raises(DatasetError, match="cannot create the image cache folder.*cache_dir="):
        build_cache(paths, labels, blocker / "cache", resolution=8, options=SERIAL)


def test_zca_on_a_cached_dataset_is_refused(trees, tmp_path):
    with pytest.raises(ConfigError, match="cannot be ZCA-whitened.*zca: false"):
        prepare("imagewoof", trees["folders"], zca=True, image_size=8, cache_dir=tmp_path,
                workers=1)


def test_imagenet_without_download_and_unknown_options(trees):
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        create_dataset("imagenet", trees["folders"], download=True)
    with pytest.raises(ConfigError, match="does not take \\['resize'\\]"):
        create_dataset("digits", resize="squash")


def test_experts_trained_from_the_cache_equal_those_from_memory(trees, tmp_path):
    from dataclasses import replace

    from datadistill.experts.train import ExpertConfig, train_one_expert

    cached = prepare("imagewoof", trees["folders"], image_size=8, cache_dir=tmp_path,
                     workers=1)
    assert not isinstance(cached.train.images, torch.Tensor)  # read per batch from disk
    memory = replace(cached, train=replace(cached.train, images=cached.train.images[:]),
                     test=replace(cached.test, images=cached.test.images[:]))
    cfg = ExpertConfig(dataset="imagewoof", num_experts=1, epochs=2, batch_size=5,
                       model_kwargs={"width": 8})
    params_disk, acc_disk = train_one_expert(cfg, cached, 0)
    params_mem, acc_mem = train_one_expert(cfg, memory, 0)
    assert torch.equal(params_disk, params_mem) and torch.equal(acc_disk, acc_mem)
