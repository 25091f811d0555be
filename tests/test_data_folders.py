"""Folder datasets: a miniature Tiny ImageNet (stock layout and zip) and ImageFolder trees,
with real JPEG/PNG files written by Pillow in tmp_path."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datadistill.data import create_dataset, dataset_info, prepare
from datadistill.errors import DatasetError

# Three classes, given out of sorted order in wnids.txt on purpose: indices follow the
# sorted wnids, as ImageFolder on train/ does.
WNIDS = ["n03", "n01", "n02"]
COLOURS = {"n01": (200, 10, 10), "n02": (10, 200, 10), "n03": (10, 10, 200)}


def solid(colour, size=(64, 64), mode="RGB"):
    return Image.new(mode, (size[1], size[0]), colour)


def make_tiny(base: Path) -> Path:
    """A miniature tiny-imagenet-200: 2 train images per class, 4 val images."""
    tiny = base / "tiny-imagenet-200"
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (tiny / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\n")
    for wnid in WNIDS:
        folder = tiny / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(2):
            solid(COLOURS[wnid]).save(folder / f"{wnid}_{i}.JPEG", quality=95)
        (tiny / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    # A grayscale JPEG, as the real set has: it must come back as 3 equal channels.
    solid(128, mode="L").save(tiny / "train" / "n02" / "images" / "n02_9.JPEG", quality=95)
    annotations = [
        ("val_0.JPEG", "n03"),
        ("val_1.JPEG", "n01"),
        ("val_2.JPEG", "n02"),
        ("val_3.JPEG", "n01"),
    ]
    for name, wnid in annotations:
        solid(COLOURS[wnid]).save(tiny / "val" / "images" / name, quality=95)
    (tiny / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in annotations)
    )
    return tiny


def test_tiny_imagenet_stock_layout(tmp_path):
    tiny = make_tiny(tmp_path)
    train = create_dataset("tiny_imagenet", tmp_path, "train", normalize=False)
    assert train.images.shape == (7, 3, 64, 64) and train.images.dtype == torch.float32
    assert train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert train.info.class_names == ("goldfish", "salamander", "n03")  # words.txt, else wnid
    assert train.info.num_classes == 3
    # JPEG is lossy: solid colours come back within a few grey levels.
    assert torch.allclose(
        train.images[0, :, 10, 10] * 255, torch.tensor([200.0, 10.0, 10.0]), atol=4
    )
    gray = train.images[4]  # n02_9.JPEG sorts after n02_0, n02_1
    assert torch.allclose(gray[0], gray[1]) and abs(gray.mean().item() * 255 - 128) < 3
    val = create_dataset("tiny_imagenet", tmp_path, "val", normalize=False)
    assert val.labels.tolist() == [0, 0, 1, 2]  # sorted by (class, file)
    assert val.images[3, 2, 5, 5].item() * 255 == pytest.approx(200, abs=4)
    test = create_dataset("tiny_imagenet", tmp_path, "test", normalize=False)
    assert torch.equal(test.images, val.images)  # "test" is an alias of the labelled val
    assert (tiny / "datadistill-cache" / "train_images_uint8.npy").is_file()


def test_tiny_imagenet_cache_is_used_and_revalidated(tmp_path):
    tiny = make_tiny(tmp_path)
    first = create_dataset("tiny_imagenet", tmp_path, "val", normalize=False)
    cache = tiny / "datadistill-cache" / "val_images_uint8.npy"
    pixels = np.load(cache, allow_pickle=False)
    pixels[0] = 0  # a marker: only a load from the cache can return it
    np.save(cache, pixels)
    cached = create_dataset("tiny_imagenet", tmp_path, "val", normalize=False)
    assert cached.images[0].max().item() == 0 and first.images[0].max().item() > 0
    # A new val image makes the cache stale: the JPEGs are decoded again.
    solid(COLOURS["n02"]).save(tiny / "val" / "images" / "val_4.JPEG", quality=95)
    with open(tiny / "val" / "val_annotations.txt", "a") as fh:
        fh.write("val_4.JPEG\tn02\t0\t0\t63\t63\n")
    fresh = create_dataset("tiny_imagenet", tmp_path, "val", normalize=False)
    assert len(fresh) == 5 and fresh.images[0].max().item() > 0


def test_tiny_imagenet_from_zip_and_unsafe_zip(tmp_path):
    make_tiny(tmp_path / "src")
    archive = tmp_path / "data" / "tiny-imagenet-200.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "src").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "src").as_posix())
    ds = create_dataset("tiny_imagenet", tmp_path / "data", "val")
    assert len(ds) == 4 and ds.space == "normalized"
    assert (tmp_path / "data" / "tiny-imagenet-200" / "wnids.txt").is_file()

    bad = tmp_path / "bad" / "tiny-imagenet-200.zip"
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
        zf.writestr("../escape.txt", "outside")
    with pytest.raises(DatasetError, match="unsafe member"):
        create_dataset("tiny_imagenet", tmp_path / "bad", "train")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "bad" / "tiny-imagenet-200").exists()

    link = zipfile.ZipInfo("tiny-imagenet-200/words.txt")
    link.create_system = 3  # Unix, so the high bits of external_attr are a st_mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bad.unlink()
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match="link or special file"):
        create_dataset("tiny_imagenet", tmp_path / "bad", "train")


def test_tiny_imagenet_corrupt_jpeg_names_file(tmp_path):
    tiny = make_tiny(tmp_path)
    broken = tiny / "val" / "images" / "val_2.JPEG"
    broken.write_bytes(broken.read_bytes()[:20])
    with pytest.raises(DatasetError, match="val_2.JPEG"):
        create_dataset("tiny_imagenet", tmp_path, "val")


def make_folder(root: Path, splits=("train", "test"), size=(6, 5)) -> None:
    """root/<split>/<class>/<i>.png with solid colours: cat dark, dog bright."""
    for split in splits:
        for cls, value in (("dog", 200), ("cat", 40)):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True)
            for i in range(2 if split != "test" else 1):
                solid((value, value + i, 0), size=size).save(folder / f"{i}.png")


def test_imagefolder_splits_labels_and_train_statistics(tmp_path):
    make_folder(tmp_path)
    train = create_dataset("imagefolder", tmp_path, "train", normalize=False)
    assert train.info.class_names == ("cat", "dog") and train.info.image_size == (6, 5)
    assert train.images.shape == (4, 3, 6, 5) and train.labels.tolist() == [0, 0, 1, 1]
    assert train.images[3, 1, 0, 0].item() * 255 == pytest.approx(201, abs=1e-3)  # PNG exact
    mean = train.images.mean(dim=(0, 2, 3))
    assert train.info.mean == pytest.approx(mean.tolist(), abs=1e-5)
    assert train.info.std[2] == pytest.approx(1e-6)  # a constant channel: floored, not 0
    test = create_dataset("imagefolder", tmp_path, "test")
    assert test.info.mean == train.info.mean  # the test split uses train statistics
    assert test.labels.tolist() == [0, 1] and test.space == "normalized"
    assert dataset_info("imagefolder", root=tmp_path).class_names == ("cat", "dog")
    assert create_dataset("imagefolder", tmp_path, "val").labels.tolist() == [0, 1]


def test_imagefolder_flat_tree_grayscale_and_resize(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        solid(90, size=(4, 4), mode="L").save(tmp_path / cls / "x.png")
    solid(90, size=(8, 8), mode="L").save(tmp_path / "b" / "y.png")
    with pytest.raises(DatasetError, match=r"y\.png is 8x8 .* image_size"):
        create_dataset("imagefolder", tmp_path)
    ds = create_dataset("imagefolder", tmp_path, image_size=4, normalize=False)
    assert ds.images.shape == (3, 1, 4, 4) and ds.info.channels == 1
    assert torch.allclose(ds.images * 255, torch.full_like(ds.images, 90), atol=1e-3)
    with pytest.raises(DatasetError, match="no train/ sub-folder"):
        create_dataset("imagefolder", tmp_path, "test")


def test_imagefolder_errors(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(DatasetError, match="bird"):
        create_dataset("imagefolder", tmp_path, "test")
    with pytest.raises(DatasetError, match="does not exist"):
        create_dataset("imagefolder", tmp_path / "missing")


def test_prepare_imagefolder_with_zca(tmp_path):
    make_folder(tmp_path, size=(4, 4))
    real = prepare("imagefolder", tmp_path, zca=True)
    assert real.train.space == "zca" and real.zca.dim == 3 * 4 * 4
    raw = create_dataset("imagefolder", tmp_path, "test", normalize=False).images
    assert torch.allclose(real.zca.invert(real.test.images), raw, atol=1e-4)
