"""A generated ImageNet-1K stand-in at 64 px, in both input forms of `imagenet64`.

`write_release`: the downsampled release's layout (npz batches of uint8 CHW rows, 1-based
labels, map_clsloc.txt: the real ids, not sorted); `write_tree`: the ILSVRC-2012 JPEG layout.
Pixels are a class colour plus noise, so a network can learn something from them. Tiny by
design: a few images per class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datadistill.data.imagenet import standard_classes

WNIDS = list(standard_classes().wnids)  # sorted order = class index


def _pixels(rng: np.random.Generator, label: int, count: int) -> np.ndarray:
    """(count, 3, 64, 64) uint8: class colour + noise."""
    colour = np.random.default_rng(label).integers(40, 216, size=(1, 3, 1, 1))
    noise = rng.integers(-40, 41, size=(count, 3, 64, 64))
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


def release_ids(classes: int) -> np.ndarray:
    """Release id (1-based, map_clsloc.txt's) of sorted classes 0..classes-1 (the devkit's
    order is not the sorted-wnid order)."""
    return np.array(standard_classes().release_ids[:classes])


def write_release(root: Path, classes: int = 1000, per_class: int = 2, val_per_class: int = 1,
                  batches: int = 2) -> Path:
    """The npz form under root; returns root. Class c (sorted) has release id release_ids[c]."""
    rng = np.random.default_rng(0)
    ids = release_ids(classes)
    lines = [f"{WNIDS[c]} {ids[c]} name_{c}" for c in np.argsort(ids)]
    (root / "Imagenet64_train_part1").mkdir(parents=True, exist_ok=True)
    (root / "Imagenet64_val").mkdir(parents=True, exist_ok=True)
    if classes == 1000:
        (root / "map_clsloc.txt").write_text("\n".join(lines) + "\n")
    for split, count in (("train", per_class), ("val", val_per_class)):
        labels = np.repeat(np.arange(classes), count)
        labels = labels[rng.permutation(len(labels))]
        data = np.concatenate([_pixels(rng, int(c), 1) for c in labels]).reshape(len(labels), -1)
        parts = np.array_split(np.arange(len(labels)), batches if split == "train" else 1)
        for k, part in enumerate(parts):
            name = (f"Imagenet64_train_part1/train_data_batch_{k + 1}.npz" if split == "train"
                    else "Imagenet64_val/val_data.npz")
            np.savez(root / name, data=data[part], labels=ids[labels[part]])
    return root


def write_tree(root: Path, classes: int = 1000, per_class: int = 2, val_per_class: int = 1,
               size: tuple[int, int] = (80, 64)) -> Path:
    """The JPEG form (train/<wnid>/, val/<wnid>/) under root; returns root."""
    rng = np.random.default_rng(1)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / WNIDS[c]
            folder.mkdir(parents=True, exist_ok=True)
            for j, img in enumerate(_pixels(rng, c, count)):
                pil = Image.fromarray(img.transpose(1, 2, 0)).resize(size)
                pil.save(folder / f"{WNIDS[c]}_{j}.JPEG", quality=95)
    return root
